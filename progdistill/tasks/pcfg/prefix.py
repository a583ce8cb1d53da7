"""Which prefixes a grammar can still complete, and its exact next-token distribution after a prefix (Earley).

A model's sampled sentence that the grammar rejects may still be right for a long stretch; the length of the
longest prefix that some sentence of the grammar starts with (a *viable* prefix), as a fraction of the sample,
says how far it went before its first unrecoverable token. Earley's chart after reading w_1..w_i is empty
exactly when no sentence starts with w_1..w_i (every nonterminal of a :class:`~progdistill.tasks.pcfg.grammar.Grammar`
derives some finite string, so every predicted item can be completed). Grammars here have no empty productions.
:func:`next_token_distributions` is Stolcke's (1995) probabilistic Earley parser: the grammar's exact
P(next token | prefix), over the terminals and the end of the sentence, against which a model's next-token
distribution can be compared (how far it is from the truth, not only from its teacher).
Cost: O(n^3) in the sentence length n in the worst case; sentences of the CPU presets take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from progdistill.tasks.pcfg.grammar import Grammar, Terminal

_Item = tuple[int, int, int]  # (rule index, dot position, origin)


@lru_cache(maxsize=16)
def _indexed(grammar: Grammar):
    rules = [
        (
            r.lhs,
            tuple(s.name if isinstance(s, Terminal) else s for s in r.rhs),
            tuple(isinstance(s, Terminal) for s in r.rhs),
        )
        for r in grammar.rules
    ]
    by_lhs: dict[str, list[int]] = {}
    for i, (lhs, _, _) in enumerate(rules):
        by_lhs.setdefault(lhs, []).append(i)
    return rules, by_lhs


def _closure(items: set[_Item], position: int, chart: list[set[_Item]], rules, by_lhs) -> None:
    """Add to ``items`` (the chart at ``position``) every item that prediction and completion give."""
    work = list(items)
    while work:
        rule, dot, origin = work.pop()
        lhs, rhs, terminal = rules[rule]
        if dot == len(rhs):  # complete: advance the items at the origin that waited for lhs
            waiting = chart[origin] if origin < position else items
            for r2, d2, o2 in list(waiting):
                _, rhs2, term2 = rules[r2]
                if d2 < len(rhs2) and not term2[d2] and rhs2[d2] == lhs and (r2, d2 + 1, o2) not in items:
                    items.add((r2, d2 + 1, o2))
                    work.append((r2, d2 + 1, o2))
        elif not terminal[dot]:  # predict
            for r2 in by_lhs[rhs[dot]]:
                if (r2, 0, position) not in items:
                    items.add((r2, 0, position))
                    work.append((r2, 0, position))


def viable_prefix_length(grammar: Grammar, tokens: Sequence[int], eos: int | None = None) -> int:
    """The length of the longest prefix of ``tokens`` (terminal ids, indices into ``grammar.terminals``) that
    some sentence of ``grammar`` starts with. ``eos`` (an id outside the terminals): a token that continues a
    prefix only when that prefix is a whole sentence, so a sentence with EOS is viable to its end exactly when
    the grammar accepts it. Any other id outside the terminals ends the viable prefix."""
    rules, by_lhs = _indexed(grammar)
    chart: list[set[_Item]] = [set((r, 0, 0) for r in by_lhs[grammar.start])]
    _closure(chart[0], 0, chart, rules, by_lhs)
    names = grammar.terminals
    for i, token in enumerate(tokens):
        if eos is not None and token == eos:
            complete = any(rules[r][0] == grammar.start and d == len(rules[r][1]) and o == 0 for r, d, o in chart[i])
            return i + 1 if complete and i > 0 else i
        if not 0 <= token < len(names):
            return i
        name = names[token]
        scanned = {
            (r, d + 1, o) for r, d, o in chart[i] if d < len(rules[r][1]) and rules[r][2][d] and rules[r][1][d] == name
        }
        if not scanned:
            return i
        chart.append(scanned)
        _closure(scanned, i + 1, chart, rules, by_lhs)
    return len(tokens)


def grammatical_prefix_fraction(grammar: Grammar, tokens: Sequence[int], eos: int | None = None) -> float:
    """:func:`viable_prefix_length` as a fraction of ``len(tokens)`` (1.0 for an empty sample)."""
    return viable_prefix_length(grammar, tokens, eos) / len(tokens) if len(tokens) else 1.0


def _left_corner_order(grammar: Grammar, rules) -> list[str]:
    """Nonterminals ordered so that X comes before every nonterminal Y of a rule X -> Y ... (the left-corner
    relation; acyclic for the grammars here). Raises ``ValueError`` for left recursion."""
    edges: dict[str, set[str]] = {nt: set() for nt in grammar.nonterminals}
    for lhs, rhs, terminal in rules:
        if not terminal[0]:
            edges[lhs].add(rhs[0])
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(node: str) -> None:
        if state.get(node) == 1:
            raise ValueError(
                f"nonterminal {node!r} is left-recursive: exact prefix probabilities need the "
                "Jelinek-Lafferty closure, not implemented"
            )
        if state.get(node) == 2:
            return
        state[node] = 1
        for child in edges[node]:
            visit(child)
        state[node] = 2
        order.append(node)

    for nt in grammar.nonterminals:
        visit(nt)
    return order[::-1]


def next_token_distributions(grammar: Grammar, tokens: Sequence[int]):
    """The grammar's exact next-token distribution after every prefix of a sentence (Stolcke's probabilistic
    Earley parser: forward probabilities give prefix probabilities, inner probabilities complete items).

    ``tokens``: terminal ids of a sentence the grammar accepts. Returns a float64 array (n + 1, T + 1): row i is
    P(next | tokens[:i]) over the T terminals and, last, the end of the sentence (EOS), i.e. P(prefix + next) /
    P(prefix) with P(prefix) the total probability of the sentences starting with it. Raises ``ValueError`` for a
    prefix of probability 0 and for a left-recursive grammar."""
    rules, by_lhs = _indexed(grammar)
    prob = [r.probability for r in grammar.rules]
    order = _left_corner_order(grammar, rules)
    terminals = {name: i for i, name in enumerate(grammar.terminals)}
    T = len(grammar.terminals)
    out = np.zeros((len(tokens) + 1, T + 1))
    # chart[i]: (rule, dot, origin) -> [forward alpha, inner gamma]; the start is predicted with alpha 1.
    chart: list[dict[_Item, list[float]]] = []
    current: dict[_Item, list[float]] = {}
    for i in range(len(tokens) + 1):
        if i > 0:  # scan token i - 1
            name = grammar.terminals[tokens[i - 1]]
            current = {
                (r, d + 1, o): list(v)
                for (r, d, o), v in chart[i - 1].items()
                if d < len(rules[r][1]) and rules[r][2][d] and rules[r][1][d] == name
            }
            # complete, origins from the latest down: an item of origin k only gains from spans starting after k
            for origin in range(i - 1, -1, -1):
                done = [
                    (item, v) for item, v in current.items() if item[2] == origin and item[1] == len(rules[item[0]][1])
                ]
                for (r, _, _), (_, inner) in done:
                    lhs = rules[r][0]
                    for (r2, d2, o2), (a2, g2) in chart[origin].items():
                        if d2 < len(rules[r2][1]) and not rules[r2][2][d2] and rules[r2][1][d2] == lhs:
                            entry = current.setdefault((r2, d2 + 1, o2), [0.0, 0.0])
                            entry[0] += a2 * inner
                            entry[1] += g2 * inner
        # predict, in left-corner order so that a nonterminal's incoming forward mass is complete when used
        waiting: dict[str, float] = {}
        for (r, d, _o), (a, _) in current.items():
            if d < len(rules[r][1]) and not rules[r][2][d]:
                waiting[rules[r][1][d]] = waiting.get(rules[r][1][d], 0.0) + a
        if i == 0:
            waiting[grammar.start] = 1.0
        for nt in order:
            mass = waiting.get(nt, 0.0)
            if mass == 0.0:
                continue
            for r in by_lhs[nt]:
                current[(r, 0, i)] = [mass * prob[r], prob[r]]
                if not rules[r][2][0]:
                    first = rules[r][1][0]
                    waiting[first] = waiting.get(first, 0.0) + mass * prob[r]
        chart.append(current)
        for (r, d, _o), (a, _) in current.items():
            if d < len(rules[r][1]) and rules[r][2][d]:
                out[i, terminals[rules[r][1][d]]] += a
        out[i, T] = sum(
            g
            for (r, d, o), (_, g) in current.items()
            if o == 0 and rules[r][0] == grammar.start and d == len(rules[r][1])
        )
        total = out[i].sum()
        if total <= 0:
            raise ValueError(f"the prefix of {i} tokens has probability 0 under the grammar")
        out[i] /= total
    return out
