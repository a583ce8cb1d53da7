"""Which prefixes a grammar can still complete: an Earley recognizer run left to right (exact, no sampling).

A model's sampled sentence that the grammar rejects may still be right for a long stretch; the length of the
longest prefix that some sentence of the grammar starts with (a *viable* prefix), as a fraction of the sample,
says how far it went before its first unrecoverable token. Earley's chart after reading w_1..w_i is empty
exactly when no sentence starts with w_1..w_i (every nonterminal of a :class:`~progdistill.tasks.grammar.Grammar`
derives some finite string, so every predicted item can be completed). Grammars here have no empty productions.
Cost: O(n^3) in the sentence length n in the worst case; sentences of the CPU presets take milliseconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .grammar import Grammar, Terminal

_Item = tuple[int, int, int]  # (rule index, dot position, origin)


@lru_cache(maxsize=16)
def _indexed(grammar: Grammar):
    rules = [(r.lhs, tuple(s.name if isinstance(s, Terminal) else s for s in r.rhs),
              tuple(isinstance(s, Terminal) for s in r.rhs)) for r in grammar.rules]
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
            complete = any(rules[r][0] == grammar.start and d == len(rules[r][1]) and o == 0
                           for r, d, o in chart[i])
            return i + 1 if complete and i > 0 else i
        if not 0 <= token < len(names):
            return i
        name = names[token]
        scanned = {(r, d + 1, o) for r, d, o in chart[i]
                   if d < len(rules[r][1]) and rules[r][2][d] and rules[r][1][d] == name}
        if not scanned:
            return i
        chart.append(scanned)
        _closure(scanned, i + 1, chart, rules, by_lhs)
    return len(tokens)


def grammatical_prefix_fraction(grammar: Grammar, tokens: Sequence[int], eos: int | None = None) -> float:
    """:func:`viable_prefix_length` as a fraction of ``len(tokens)`` (1.0 for an empty sample)."""
    return viable_prefix_length(grammar, tokens, eos) / len(tokens) if len(tokens) else 1.0
