import numpy as np
import pytest
from pcfg_language import AMBIGUOUS, conditional, whole_language

from progdistill.tasks.pcfg.grammar import GrammarError, load_grammar, parse_grammar, random_grammar
from progdistill.tasks.pcfg.parser import (
    inside_log_probability,
    masked_posterior,
    most_likely_parse,
    tree_log_probability,
)
from progdistill.tasks.pcfg.sampler import sample_sentences

# "a b a" has two trees: s(x(a b) a) with 0.6 * 0.8 * 0.5^3 = 0.06 and s(a x(b a)) with 0.4 * 0.8 * 0.5^3 = 0.04.
TOY = """
s -> x a [0.6]
s -> a x [0.4]
x -> a a [0.8]
x -> a a a [0.2]
a -> 'a' [0.5]
a -> 'b' [0.5]
"""


@pytest.fixture(scope="module")
def small():
    return random_grammar(levels=5, nonterminals_per_level=3, rules_per_nonterminal=2, seed=0)  # ~47 tokens


def test_hand_computed_probabilities():
    g = parse_grammar(TOY)
    s, x, a = (g.nonterminal_id(n) for n in "sxa")
    assert inside_log_probability(g, [0, 1, 0]) == pytest.approx(np.log(0.1), abs=1e-12)
    best = most_likely_parse(g, [0, 1, 0])
    assert best.log_probability == pytest.approx(np.log(0.06), abs=1e-12)
    assert best.spans == ((s, 0, 3), (x, 0, 2), (a, 0, 1), (a, 1, 2), (a, 2, 3))
    # Four tokens need the ternary rule: (0.6 + 0.4) * 0.2 * 0.5^4; the Viterbi tree is s(x(a a a) a).
    assert inside_log_probability(g, [1, 1, 1, 1]) == pytest.approx(np.log(0.0125), abs=1e-12)
    assert most_likely_parse(g, [1, 1, 1, 1]).spans == (
        (s, 0, 4),
        (x, 0, 3),
        (a, 0, 1),
        (a, 1, 2),
        (a, 2, 3),
        (a, 3, 4),
    )
    for tokens in ([], [0, 0], [0] * 5):  # no tree: too short, too long
        assert inside_log_probability(g, tokens) == -np.inf
        assert most_likely_parse(g, tokens) is None
    assert tree_log_probability(g, [0, 1, 0], best.spans) == pytest.approx(np.log(0.06))


def test_every_sampled_sentence_parses_and_its_tree_is_no_likelier_than_the_best(small):
    batch = sample_sentences(small, 60, np.random.default_rng(3))
    for s in batch:
        inside = inside_log_probability(small, s.tokens)
        best = most_likely_parse(small, s.tokens)
        assert tree_log_probability(small, s.tokens, s.spans()) == pytest.approx(s.log_probability, abs=1e-9)
        assert tree_log_probability(small, s.tokens, best.spans) == pytest.approx(best.log_probability, abs=1e-9)
        assert s.log_probability <= best.log_probability + 1e-9 <= inside + 2e-9
        if best.log_probability == pytest.approx(inside, abs=1e-12):  # a single tree: it must be the sampled one
            assert set(best.spans) == set(s.spans())


def test_inside_equals_the_sum_over_trees_on_an_ambiguous_sentence():
    # a^n has many trees here (every way to cut it into x x, each x into 2 or 3 y's, each y into 2 or 3 a's).
    g = parse_grammar(
        "s -> x x [1]\nx -> y y [0.5]\nx -> y y y [0.5]\ny -> a a [0.3]\ny -> a a a [0.7]\na -> 'a' [1]\n"
    )

    def x_prob(n):  # probability that x derives a^n
        y = {2: 0.3, 3: 0.7}
        two = sum(y[i] * y.get(n - i, 0) for i in y)
        three = sum(y[i] * y[j] * y.get(n - i - j, 0) for i in y for j in y)
        return 0.5 * two + 0.5 * three

    for n in (8, 9, 10, 13):
        expected = sum(x_prob(i) * x_prob(n - i) for i in range(1, n))
        assert inside_log_probability(g, [0] * n) == pytest.approx(np.log(expected), abs=1e-12)


def test_cfg3b_sentences_parse_with_their_sampled_tree():
    g = load_grammar("cfg3b")
    for s in sample_sentences(g, 2, np.random.default_rng(0)):
        best = most_likely_parse(g, s.tokens)
        assert best.log_probability == pytest.approx(s.log_probability, abs=1e-9)
        assert set(best.spans) == set(s.spans())
        assert inside_log_probability(g, s.tokens) >= s.log_probability - 1e-9


def test_random_strings_of_sampled_lengths_mostly_do_not_parse(small):
    lengths = sample_sentences(small, 40, np.random.default_rng(0)).lengths
    rng = np.random.default_rng(1)
    parsed = [np.isfinite(inside_log_probability(small, rng.integers(0, 3, size=n))) for n in lengths]
    assert sum(parsed) <= 2


def test_a_one_token_edit_usually_breaks_the_parse(small):
    rng = np.random.default_rng(2)
    broken = 0
    for s in sample_sentences(small, 20, np.random.default_rng(4)):
        tokens = s.tokens.copy()
        i = rng.integers(len(tokens))
        tokens[i] = (tokens[i] + 1) % 3
        broken += inside_log_probability(small, tokens) == -np.inf
    assert broken >= 10


def test_errors():
    g = parse_grammar(TOY)
    with pytest.raises(ValueError, match=r"token ids must lie in 0..1"):
        inside_log_probability(g, [0, 2, 0])
    with pytest.raises(ValueError, match="1-D"):
        most_likely_parse(g, [[0, 1, 0]])
    unary = parse_grammar("s -> x [1]\nx -> 'a' [1]\n")
    with pytest.raises(GrammarError, match=r"cannot handle production 's -> x \[1\]'"):
        inside_log_probability(unary, [0])
    with pytest.raises(ValueError, match="not a production"):
        tree_log_probability(g, [0, 1, 0], [(0, 0, 3), (2, 0, 1), (2, 1, 2), (2, 2, 3)])  # s -> a a a
    with pytest.raises(ValueError, match=r"\(1, 1, 3\) crosses span \(1, 0, 2\)"):
        tree_log_probability(g, [0, 1, 0], [(0, 0, 3), (1, 0, 2), (1, 1, 3), (2, 0, 1), (2, 1, 2), (2, 2, 3)])
    with pytest.raises(ValueError, match=r"span \(-1, 0, 3\) is invalid"):
        tree_log_probability(g, [0, 1, 0], [(-1, 0, 3)])
    with pytest.raises(ValueError, match="do not tile"):
        tree_log_probability(g, [0, 1, 0], [(0, 0, 3), (1, 0, 2), (2, 0, 1), (2, 1, 2)])


def test_masked_posterior_equals_brute_force_conditioning_over_the_whole_language():
    g = parse_grammar(AMBIGUOUS)
    language = whole_language(g)
    assert sum(language.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    sentences = sorted(language)
    checked = 0
    for idx in rng.choice(len(sentences), size=25, replace=False):
        tokens = sentences[idx]
        n = len(tokens)
        for _ in range(3):
            position = int(rng.integers(n))
            hidden = sorted(set(rng.choice(n, size=int(rng.integers(0, n)), replace=False).tolist()) - {position})
            got = masked_posterior(g, list(tokens), hidden, position)
            np.testing.assert_allclose(got, conditional(language, tokens, hidden, position, 3), atol=1e-12)
            checked += 1
    assert checked == 75


def test_masked_posterior_rejects_positions_outside_the_sentence_and_impossible_contexts():
    g = parse_grammar(TOY)
    with pytest.raises(ValueError, match="outside the sentence: allowed 0..2"):
        masked_posterior(g, [0, 1, 0], [], 3)
    with pytest.raises(ValueError, match="outside the sentence"):
        masked_posterior(g, [0, 1, 0], [-1], 0)
    with pytest.raises(ValueError, match="probability 0"):
        masked_posterior(g, [0, 1], [], 0)  # TOY has no 2-token sentence
