import numpy as np
import pytest

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


def _language(grammar):
    """Every sentence of an acyclic grammar with its probability, by expanding all derivations: {tokens: p}."""
    from progdistill.tasks.pcfg.grammar import Terminal

    def expand(symbol):
        if isinstance(symbol, Terminal):
            return {(grammar.terminals.index(symbol.name),): 1.0}
        out = {}
        for rule in (r for r in grammar.rules if r.lhs == symbol):
            parts = {(): rule.probability}
            for s in rule.rhs:
                longer = {}
                for a, pa in parts.items():
                    for b, pb in expand(s).items():
                        longer[a + b] = longer.get(a + b, 0.0) + pa * pb
                parts = longer
            for k, v in parts.items():
                out[k] = out.get(k, 0.0) + v
        return out

    return expand(grammar.start)


# Ambiguous trees (b and a both emit 'a') and lengths 4-6 with several tree shapes each: what a hidden token
# could be depends on the tree, so the posterior at one position depends on the others.
AMBIGUOUS = (
    "s -> x y [0.7]\ns -> y x [0.3]\nx -> a b [0.6]\nx -> b a b [0.4]\ny -> b b [0.5]\n"
    "y -> a a a [0.5]\na -> 'a' [0.9]\na -> 'c' [0.1]\nb -> 'b' [0.5]\nb -> 'a' [0.5]\n"
)


def _conditional(language, tokens, hidden, position, num_terminals):
    """P(token at position | the tokens outside ``hidden``, the length), by summing over the whole language."""
    visible = [i for i in range(len(tokens)) if i != position and i not in hidden]
    out = np.zeros(num_terminals)
    for other, p in language.items():
        if len(other) == len(tokens) and all(other[i] == tokens[i] for i in visible):
            out[other[position]] += p
    return out / out.sum()


def test_masked_posterior_equals_brute_force_conditioning_over_the_whole_language():
    g = parse_grammar(AMBIGUOUS)
    language = _language(g)
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
            np.testing.assert_allclose(got, _conditional(language, tokens, hidden, position, 3), atol=1e-12)
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


def test_oracle_ngram_probe_equals_brute_force_on_every_position():
    """The oracle probe's M_robust / M_close / cross-entropy, from padded ids and probe positions (BOS at 0), equal
    direct conditioning over the language at the same sentence positions."""
    from progdistill.probes.ngram import probe_positions
    from progdistill.probes.oracle import oracle_ngram_dependence_at
    from progdistill.tasks.pcfg.task import Vocabulary, pad_sentences

    g = parse_grammar(AMBIGUOUS)
    language = _language(g)
    sentences = sorted(language)[::7]
    ids, _ = pad_sentences(sentences, Vocabulary(g.terminals))
    maskable = ids < 3
    where = probe_positions(maskable, per_sentence=3)
    got = oracle_ngram_dependence_at(g, ids, maskable, where, windows=(3,))
    robust, close, nll = [], [], []
    for s, q in zip(where.sentence, where.position):
        tokens, p = sentences[s], int(q) - 1
        n = len(tokens)
        window = {i for i in (p - 1, p, p + 1) if 0 <= i < n}
        base = _conditional(language, tokens, [], p, 3)
        robust.append(0.5 * np.abs(base - _conditional(language, tokens, window, p, 3)).sum())
        close.append(0.5 * np.abs(base - _conditional(language, tokens, set(range(n)) - window, p, 3)).sum())
        nll.append(-np.log(base[tokens[p]]))
    for key, values in (("M_robust/3", robust), ("M_close/3", close), ("cross_entropy", nll)):
        assert got[key]["median"] == pytest.approx(float(np.median(values)), abs=1e-9)
        assert got[key]["mean"] == pytest.approx(float(np.mean(values)), abs=1e-9)
    assert max(robust) > 0.05 and max(close) > 0.05  # the check has something to compare


def test_oracle_masked_lm_loss_equals_brute_force_for_the_same_hidden_sets():
    from progdistill.probes.oracle import oracle_masked_lm_loss

    g = parse_grammar(AMBIGUOUS)
    language = _language(g)
    sentences = sorted(language)[::5]
    got = oracle_masked_lm_loss(g, sentences, 0.4, np.random.default_rng(3), per_sentence=2)
    rng, nll = np.random.default_rng(3), []  # the same draws, scored by conditioning over the language
    for tokens in sentences:
        hidden = np.flatnonzero(rng.random(len(tokens)) < 0.4)
        if len(hidden):
            for p in rng.choice(hidden, size=min(2, len(hidden)), replace=False):
                nll.append(-np.log(_conditional(language, tokens, set(hidden.tolist()), int(p), 3)[tokens[p]]))
    assert got["positions"] == len(nll) > 20
    assert got["mean"] == pytest.approx(np.mean(nll), abs=1e-9) and got["mean"] > 0.1
    nothing = oracle_masked_lm_loss(g, sentences[:3], 1e-6, np.random.default_rng(0))  # no token hidden
    assert nothing["positions"] == 0 and nothing["mean"] is None and nothing["std_error"] is None
    with pytest.raises(ValueError, match="mask_rate=1"):
        oracle_masked_lm_loss(g, sentences, 1, np.random.default_rng(0))
