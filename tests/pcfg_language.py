"""Brute-force references for grammar tests: a small acyclic grammar's whole language, and conditioning on it."""

import numpy as np

from progdistill.tasks.pcfg.grammar import Terminal


def whole_language(grammar):
    """Every sentence of an acyclic grammar with its probability, by expanding all derivations: {tokens: p}."""

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


def conditional(language, tokens, hidden, position, num_terminals):
    """P(token at position | the tokens outside ``hidden``, the length), by summing over the whole language."""
    visible = [i for i in range(len(tokens)) if i != position and i not in hidden]
    out = np.zeros(num_terminals)
    for other, p in language.items():
        if len(other) == len(tokens) and all(other[i] == tokens[i] for i in visible):
            out[other[position]] += p
    return out / out.sum()
