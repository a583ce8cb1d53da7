"""Viable prefixes (Earley) against brute-force enumeration of a small grammar's language."""

import itertools

import numpy as np
import pytest

from progdistill.tasks.pcfg.grammar import parse_grammar, random_grammar
from progdistill.tasks.pcfg.prefix import grammatical_prefix_fraction, next_token_distributions, viable_prefix_length
from progdistill.tasks.pcfg.sampler import sample_sentences

# A small finite language (no recursion): sentences such as a b, c a a, b b b, a.
GRAMMAR = parse_grammar("""
s -> x y [0.4]
s -> y x [0.3]
s -> x [0.3]
x -> 'a' [0.5]
x -> y y [0.5]
y -> 'b' [0.6]
y -> z w [0.4]
z -> 'c' [1]
w -> 'a' [1]
""")


def language(grammar, symbol, depth=6):
    """Every string ``symbol`` derives (the grammar is not recursive, so this is finite)."""
    out = set()
    for rule in grammar.rules_for(symbol):
        parts = [
            [(grammar.terminals.index(s.name),)]
            if hasattr(s, "name") and not isinstance(s, str)
            else sorted(language(grammar, s, depth - 1))
            for s in rule.rhs
        ]
        for combo in itertools.product(*parts):
            out.add(sum(combo, ()))
    return out


def test_viable_prefixes_match_brute_force_enumeration():
    sentences = language(GRAMMAR, GRAMMAR.start)
    assert (GRAMMAR.terminals.index("a"),) in sentences and len(sentences) > 10
    prefixes = {s[:i] for s in sentences for i in range(len(s) + 1)}
    eos = len(GRAMMAR.terminals)
    for length in range(0, 7):
        for tokens in itertools.product(range(len(GRAMMAR.terminals)), repeat=length):
            expected = max(i for i in range(length + 1) if tokens[:i] in prefixes)
            assert viable_prefix_length(GRAMMAR, tokens) == expected, tokens
            # with EOS: viable to the end exactly for a whole sentence
            with_eos = viable_prefix_length(GRAMMAR, tokens + (eos,), eos)
            assert (with_eos == length + 1) == (tokens in sentences), tokens
            assert with_eos == (length + 1 if tokens in sentences else expected)


def test_fraction_on_generated_grammar_sentences():
    grammar = random_grammar(4, 3, 2, (2, 3), seed=0)
    batch = sample_sentences(grammar, 5, np.random.default_rng(0), max_length=200)
    eos = len(grammar.terminals)
    for i in range(5):
        tokens = list(batch[i].tokens) + [eos]
        assert grammatical_prefix_fraction(grammar, tokens, eos) == 1.0
        broken = tokens[:3] + [eos]  # EOS after three tokens: the grammar's sentences are longer
        assert viable_prefix_length(grammar, broken, eos) == 3
    assert grammatical_prefix_fraction(grammar, [], eos) == 1.0


def derivations(grammar, symbol):
    """{sentence: probability} of ``symbol``, summed over derivations (brute force; the grammar is finite)."""
    out = {}
    for rule in grammar.rules_for(symbol):
        parts = [
            {(grammar.terminals.index(s.name),): 1.0}
            if hasattr(s, "name") and not isinstance(s, str)
            else derivations(grammar, s)
            for s in rule.rhs
        ]
        for combo in itertools.product(*[list(p.items()) for p in parts]):
            sentence = sum((c[0] for c in combo), ())
            out[sentence] = out.get(sentence, 0.0) + rule.probability * float(np.prod([c[1] for c in combo]))
    return out


def test_next_token_distributions_match_brute_force_enumeration():
    language_p = derivations(GRAMMAR, GRAMMAR.start)
    assert sum(language_p.values()) == pytest.approx(1.0)
    # "b b b" has two derivations (s -> x y and s -> y x, each with x -> y y): probabilities sum over them
    assert language_p[(1, 1, 1)] == pytest.approx(0.4 * 0.5 * 0.6**3 + 0.3 * 0.6 * 0.5 * 0.6**2)
    T = len(GRAMMAR.terminals)

    def prefix_p(w):
        return sum(p for s, p in language_p.items() if s[: len(w)] == w)

    for sentence in language_p:
        table = next_token_distributions(GRAMMAR, sentence)
        for i in range(len(sentence) + 1):
            w = sentence[:i]
            expected = [prefix_p(w + (a,)) / prefix_p(w) for a in range(T)] + [language_p.get(w, 0.0) / prefix_p(w)]
            np.testing.assert_allclose(table[i], expected, atol=1e-12)


def test_next_token_distributions_of_a_generated_grammar_sum_to_one_and_end_with_eos():
    grammar = random_grammar(4, 3, 2, (2, 3), seed=0)
    sentence = sample_sentences(grammar, 1, np.random.default_rng(1), max_length=200)[0].tokens.tolist()
    table = next_token_distributions(grammar, sentence)
    np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-9)
    assert all(table[i, tok] > 0 for i, tok in enumerate(sentence))  # every observed next token is possible
    assert table[-1, -1] > 0 and (table[:-1, -1] < 1).all()
