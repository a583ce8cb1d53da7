"""CYK parsing of cfg3-family sentences: the inside probability and the most likely (Viterbi) tree.

paper §2 evaluates models on sentences of the cfg3 grammars; a parser tells whether a string (for
example a model's completion) is in the language, and gives the gold tree for nonterminal probes.

The parser handles productions ``X -> 't'`` (one terminal) and ``X -> Y1 ... Yk`` (k >= 2 nonterminals), which
covers the cfg3 family and :func:`~progdistill.tasks.pcfg.grammar.random_grammar`. Rules longer than 2 are binarised
internally (``X -> A B C`` becomes ``X -> A @(B C)`` and ``@(B C) -> B C`` with probability 1; intermediate
symbols are shared and never appear in the output), which preserves every tree's probability.

The chart is filled by span length; for each length, all start positions, split points and productions are one
numpy computation. Productions are pruned per length by the lengths their symbols can derive (in cfg3b a
level-3 symbol derives 14..27 tokens, a level-4 one 7..9), which for layered grammars leaves one or two levels
active per length. Cost: O(n^3 R) time in the worst case (n tokens, R binarised productions), O(n^2 S) memory
(S symbols; ~30 MB per chart for n = 300). Measured on one shared CPU core, per cfg3b sentence of ~300 tokens:
about 0.1 s for each function (0.2-0.3 s for cfg3f/cfg3g, which have more productions).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from progdistill.tasks.pcfg.grammar import Grammar, GrammarError, Terminal

Span = tuple[int, int, int]  # (nonterminal id, start, end), end exclusive; ids index Grammar.nonterminals


@dataclass(frozen=True)
class Parse:
    """A most likely tree: its natural-log probability and its nonterminal nodes in preorder."""

    log_probability: float
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class _Binarised:
    num_nonterminals: int  # original nonterminals are symbols 0..N-1, intermediates N..S-1
    num_symbols: int
    start: int
    lexical: np.ndarray  # (T, S) probability of X -> 't'
    left: np.ndarray  # (R,) binary productions A -> B C, grouped by A
    right: np.ndarray
    parent: np.ndarray
    log_p: np.ndarray  # (R,)
    min_length: np.ndarray  # (S,) shortest / longest string each symbol derives (inf: unbounded)
    max_length: np.ndarray


@lru_cache(maxsize=32)
def _binarise(grammar: Grammar) -> _Binarised:
    nts = {s: i for i, s in enumerate(grammar.nonterminals)}
    n_nt = len(nts)
    lexical: dict[tuple[int, int], float] = {}
    binary: list[tuple[int, int, int, float]] = []  # (A, B, C, p)
    intermediate: dict[tuple[int, ...], int] = {}

    def symbol_for(seq: tuple[int, ...]) -> int:
        if len(seq) == 1:
            return seq[0]
        if seq not in intermediate:
            intermediate[seq] = n_nt + len(intermediate)
            binary.append((intermediate[seq], seq[0], symbol_for(seq[1:]), 1.0))
        return intermediate[seq]

    for rule in grammar.rules:
        a = nts[rule.lhs]
        if len(rule.rhs) == 1 and isinstance(rule.rhs[0], Terminal):
            lexical[grammar.terminals.index(rule.rhs[0].name), a] = rule.probability
        elif len(rule.rhs) >= 2 and all(isinstance(s, str) for s in rule.rhs):
            seq = tuple(nts[s] for s in rule.rhs if isinstance(s, str))
            binary.append((a, seq[0], symbol_for(seq[1:]), rule.probability))
        else:
            raise GrammarError(
                f"the parser cannot handle production '{rule}'; allowed: X -> 't' (one terminal) "
                "or X -> Y1 ... Yk (k >= 2 nonterminals)"
            )
    n_sym = n_nt + len(intermediate)
    binary.sort(key=lambda r: r[0])
    rules = np.array([r[:3] for r in binary], dtype=np.int64).reshape(-1, 3)
    lex = np.zeros((len(grammar.terminals), n_sym))
    for (t, a), p in lexical.items():
        lex[t, a] = p

    # Length bounds. min: relax to a fixed point. max: infinite when the symbol reaches a cycle.
    lo = np.where(lex.any(axis=0), 1.0, np.inf)
    for _ in range(n_sym + 1):
        np.minimum.at(lo, rules[:, 0], lo[rules[:, 1]] + lo[rules[:, 2]])
    reach = np.zeros((n_sym, n_sym), dtype=bool)
    reach[rules[:, 0], rules[:, 1]] = reach[rules[:, 0], rules[:, 2]] = True
    for _ in range(int(np.ceil(np.log2(n_sym + 1))) + 1):
        reach |= (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
    unbounded = (reach & np.diag(reach)[None, :]).any(axis=1) | np.diag(reach)
    hi = np.where(lex.any(axis=0), 1.0, 0.0)
    for _ in range(n_sym + 1):
        np.maximum.at(hi, rules[:, 0], hi[rules[:, 1]] + hi[rules[:, 2]])
    hi[unbounded] = np.inf
    return _Binarised(
        n_nt,
        n_sym,
        nts[grammar.start],
        lex,
        rules[:, 1],
        rules[:, 2],
        rules[:, 0],
        np.log([r[3] for r in binary]),
        lo,
        hi,
    )


def _check_tokens(grammar: Grammar, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise ValueError(
            f"tokens must be a 1-D sequence of integer terminal ids, got shape {tokens.shape} dtype {tokens.dtype}"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(grammar.terminals)):
        raise ValueError(
            f"token ids must lie in 0..{len(grammar.terminals) - 1} "
            f"({', '.join(grammar.terminals)}); got {tokens.min()}..{tokens.max()}"
        )
    return tokens.astype(np.int64)


@lru_cache(maxsize=8192)
def _plan(grammar: Grammar, length: int) -> tuple[np.ndarray, int, int, np.ndarray, np.ndarray] | None:
    """What builds spans of ``length``: the productions that can (positions into the binarised rules), the
    union ``k0..k1`` of their feasible split points, their parents, and a (parents, width) table of positions
    into those productions (-1 pads). None when no production can."""
    g = _binarise(grammar)
    ok = (g.min_length[g.parent] <= length) & (g.max_length[g.parent] >= length)
    ok &= g.min_length[g.left] + g.min_length[g.right] <= length
    ok &= g.max_length[g.left] + g.max_length[g.right] >= length
    rules = np.flatnonzero(ok)
    if not len(rules):
        return None
    k0 = int(max(np.maximum(g.min_length[g.left[rules]], length - g.max_length[g.right[rules]]).min(), 1))
    k1 = int(min(np.minimum(g.max_length[g.left[rules]], length - g.min_length[g.right[rules]]).max(), length - 1))
    if k0 > k1:
        return None
    parents, first, count = np.unique(g.parent[rules], return_index=True, return_counts=True)  # rules are sorted
    width = np.arange(count.max())[None, :]
    table = np.where(width < count[:, None], first[:, None] + width, -1)
    return rules, k0, k1, parents, table


def _right_halves(chart: np.ndarray, length: int, k0: int, k1: int) -> np.ndarray:
    """Read-only view ``[i, k - k0] -> chart[i + k, length - k]`` (the span right of split k of the span
    starting at i), for every start i and split k0..k1: shape (starts, K, *chart.shape[2:]).

    chart[i, l] is span [i, i + l); these cells lie on an anti-diagonal, one stride step (+1 start, -1 length)
    apart, so a strided view reads them without copying the chart into an end-indexed twin.
    """
    starts = chart.shape[0] - length
    s0, s1 = chart.strides[:2]
    shape = (starts, k1 - k0 + 1) + chart.shape[2:]
    return np.lib.stride_tricks.as_strided(
        chart[k0:, length - k0 :], shape=shape, strides=(s0, s0 - s1) + chart.strides[2:], writeable=False
    )


def inside_log_probability(grammar: Grammar, tokens) -> float:
    """Natural log of the probability that ``grammar`` generates ``tokens`` (sum over all trees).

    ``tokens``: 1-D terminal ids (index in ``grammar.terminals``). Returns ``-inf`` when the sentence does not
    parse. The inside algorithm with per-cell scaling, so long sentences do not underflow. Raises ``ValueError``
    for bad token ids and :class:`GrammarError` for productions the parser does not handle.
    """
    g = _binarise(grammar)
    tokens = _check_tokens(grammar, tokens)
    return _inside(grammar, g.lexical[tokens]) if len(tokens) else -np.inf


def masked_posterior(grammar: Grammar, tokens, hidden, position: int) -> np.ndarray:
    """The Bayes-optimal masked-LM prediction at ``position``: P(token = t | every visible token, the sentence
    length) under ``grammar``, for each terminal t; shape (T,), summing to 1.

    ``tokens``: 1-D terminal ids of the sentence (the values at hidden positions are ignored); ``hidden``:
    positions whose tokens are unknown (``position`` is hidden whatever ``hidden`` says). A hidden leaf is summed
    over every terminal in the inside algorithm, and the T candidates for ``position`` take one pass each
    (cost: T inside passes). This is the predictor every masked LM of the grammar approaches as its loss reaches
    the grammar's entropy, so its n-gram dependence (paper §2, M_robust / M_close) is where a
    converged model's probes end. Raises ``ValueError`` for a position outside the sentence or bad token ids,
    and when the visible tokens have probability 0 under the grammar.
    """
    g = _binarise(grammar)
    tokens = _check_tokens(grammar, tokens)
    n = len(tokens)
    unknown = np.zeros(n, dtype=bool)
    for i in [*hidden, position]:
        if not (isinstance(i, (int, np.integer)) and 0 <= i < n):
            raise ValueError(f"position {i!r} is outside the sentence: allowed 0..{n - 1}")
        unknown[i] = True
    cell = g.lexical[tokens]
    cell[unknown] = g.lexical.sum(axis=0)
    log_p = np.empty(len(g.lexical))
    for t in range(len(g.lexical)):
        cell[position] = g.lexical[t]
        log_p[t] = _inside(grammar, cell)
    if not np.isfinite(log_p.max()):
        raise ValueError("the visible tokens have probability 0 under the grammar (not a sentence of it)")
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


def _inside(grammar: Grammar, cell: np.ndarray) -> float:
    """Log of the summed probability of every tree over n leaves whose leaf i is weighted by ``cell[i]``
    ((n, S): for each symbol, the probability of its lexical rule at that leaf, e.g. ``lexical[token]``; a
    hidden leaf sums the lexical rows over all terminals). -inf when no tree has positive weight."""
    g = _binarise(grammar)
    n = len(cell)
    # chart[i, l] holds the inside probabilities of span [i, i+l) divided by exp(scale[i, l]) (max 1 per cell).
    chart = np.zeros((n + 1, n + 1, g.num_symbols))
    scale = np.full((n + 1, n + 1), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        top = cell.max(axis=1)
        chart[:n, 1], scale[:n, 1] = cell / np.where(top > 0, top, 1)[:, None], np.log(top)
        for length in range(2, n + 1):
            plan = _plan(grammar, length)
            if plan is None:
                continue
            rules, k0, k1, parents, table = plan
            starts = n - length + 1
            left = chart[:starts, k0 : k1 + 1]  # (starts, K, S)
            right = _right_halves(chart, length, k0, k1)  # (starts, K, S)
            total = scale[:starts, k0 : k1 + 1] + _right_halves(scale, length, k0, k1)  # (starts, K)
            best = total.max(axis=1)  # (starts,)
            weight = np.exp(total - np.where(np.isfinite(best), best, 0)[:, None])  # (starts, K), 0 where -inf
            per_rule = np.einsum(
                "skr,skr,sk->sr", left[:, :, g.left[rules]], right[:, :, g.right[rules]], weight
            ) * np.exp(g.log_p[rules])  # (starts, R_active)
            padded = np.concatenate([per_rule, np.zeros((starts, 1))], axis=1)
            value = padded[:, table].sum(axis=2)  # (starts, parents)
            top = value.max(axis=1)
            keep = top > 0
            chart[:starts, length, parents] = np.where(keep[:, None], value / np.where(keep, top, 1)[:, None], 0)
            scale[:starts, length] = np.where(keep, best + np.log(np.where(keep, top, 1)), -np.inf)
        p = chart[0, n, g.start]
        return float(np.log(p) + scale[0, n]) if p > 0 else -np.inf


def most_likely_parse(grammar: Grammar, tokens) -> Parse | None:
    """The Viterbi tree of ``tokens``: its log probability and its nonterminal spans, or None if none parses.

    Spans are ``(nonterminal id, start, end)`` (end exclusive, id indexes ``grammar.nonterminals``) in preorder,
    preterminal nodes (``a -> 'a'``) included; ties between equally likely trees go to the first production and
    the leftmost split. Raises like :func:`inside_log_probability`.
    """
    g = _binarise(grammar)
    tokens = _check_tokens(grammar, tokens)
    n = len(tokens)
    if n == 0:
        return None
    with np.errstate(divide="ignore"):
        chart = np.full((n + 1, n + 1, g.num_symbols), -np.inf)  # log probabilities
        chart[:n, 1] = np.log(g.lexical[tokens])
    index = np.int16 if max(n, len(g.parent)) < 2**15 else np.int32
    best_rule = np.full((n + 1, n + 1, g.num_symbols), -1, dtype=index)  # backpointers: production, split
    best_split = np.zeros((n + 1, n + 1, g.num_symbols), dtype=index)
    for length in range(2, n + 1):
        plan = _plan(grammar, length)
        if plan is None:
            continue
        rules, k0, k1, parents, table = plan
        starts = n - length + 1
        left = chart[:starts, k0 : k1 + 1][:, :, g.left[rules]]  # (starts, K, R)
        right = _right_halves(chart, length, k0, k1)[:, :, g.right[rules]]
        score = left + right  # (starts, K, R)
        split = score.argmax(axis=1)  # (starts, R)
        per_rule = np.take_along_axis(score, split[:, None, :], axis=1)[:, 0] + g.log_p[rules]
        padded = np.concatenate([per_rule, np.full((starts, 1), -np.inf)], axis=1)
        pick = padded[:, table].argmax(axis=2)  # (starts, parents)
        position = table[np.arange(len(parents))[None, :], pick]  # (starts, parents)
        rows = np.arange(starts)[:, None]
        value = padded[rows, position]
        found = np.isfinite(value)
        chart[:starts, length, parents] = value
        best_rule[:starts, length, parents] = np.where(found, rules[position], -1)
        best_split[:starts, length, parents] = split[rows, position] + k0
    if not np.isfinite(chart[0, n, g.start]):
        return None

    spans: list[Span] = []
    stack = [(g.start, 0, n)]
    while stack:
        symbol, start, length = stack.pop()
        if symbol < g.num_nonterminals:
            spans.append((int(symbol), start, start + length))
        if length == 1:
            continue
        rule, k = best_rule[start, length, symbol], int(best_split[start, length, symbol])
        stack.append((int(g.right[rule]), start + k, length - k))  # right pushed first: preorder pops left
        stack.append((int(g.left[rule]), start, k))
    return Parse(float(chart[0, n, g.start]), tuple(spans))


def tree_log_probability(grammar: Grammar, tokens, spans) -> float:
    """Natural log of the probability of the tree given by its nonterminal ``spans`` over ``tokens``.

    ``spans``: ``(nonterminal id, start, end)`` triples in any order, preterminal nodes included (the form of
    :meth:`~progdistill.tasks.pcfg.sampler.Sentence.spans` for layered grammars and of :class:`Parse`). Raises
    ``ValueError`` when the spans are not one tree of ``grammar`` deriving ``tokens`` (no root over the whole
    sentence, crossing or repeated spans, a node whose children are not a production, a leaf whose token is
    not its production).
    """
    tokens = _check_tokens(grammar, tokens)
    spans = list(spans)
    for x, a, b in spans:
        if not (0 <= x < len(grammar.nonterminals) and 0 <= a < b <= len(tokens)):
            raise ValueError(
                f"span {(x, a, b)} is invalid; allowed: nonterminal id in "
                f"0..{len(grammar.nonterminals) - 1} and 0 <= start < end <= {len(tokens)}"
            )
    nodes = sorted({(int(a), int(b), int(x)) for x, a, b in spans}, key=lambda s: (s[0], -s[1]))
    if len(nodes) != len(spans):
        raise ValueError("spans repeat a node; a tree has each (nonterminal, start, end) once")
    if not nodes or nodes[0][:2] != (0, len(tokens)) or grammar.nonterminals[nodes[0][2]] != grammar.start:
        raise ValueError(f"the first span must be the start symbol {grammar.start!r} over (0, {len(tokens)})")
    probability = {(r.lhs, r.rhs): r.probability for r in grammar.rules}

    def as_span(node: tuple[int, int, int]) -> Span:
        return node[2], node[0], node[1]

    children: dict[int, list[int]] = {0: []}
    stack = [0]
    for i, (a, b, _) in enumerate(nodes[1:], start=1):
        while stack and not (nodes[stack[-1]][0] <= a and b <= nodes[stack[-1]][1]):
            if nodes[stack[-1]][1] > a:
                raise ValueError(f"span {as_span(nodes[i])} crosses span {as_span(nodes[stack[-1]])}; spans must nest")
            stack.pop()
        if not stack or (a, b) == nodes[stack[-1]][:2]:
            raise ValueError(f"span {as_span(nodes[i])} repeats an enclosing span; spans must nest")
        children[stack[-1]].append(i)
        children[i] = []
        stack.append(i)
    total = 0.0
    for i, (a, b, x) in enumerate(nodes):
        lhs = grammar.nonterminals[x]
        if children[i]:
            kids = [nodes[j] for j in children[i]]
            if kids[0][0] != a or kids[-1][1] != b or any(p[1] != q[0] for p, q in itertools.pairwise(kids)):
                raise ValueError(f"children of {lhs!r} over ({a}, {b}) do not tile its span")
            rhs: tuple[str | Terminal, ...] = tuple(grammar.nonterminals[k[2]] for k in kids)
        elif b - a == 1:
            rhs = (Terminal(grammar.terminals[tokens[a]]),)
        else:
            raise ValueError(f"leaf {lhs!r} spans ({a}, {b}); a leaf must cover one token")
        if (lhs, rhs) not in probability:
            raise ValueError(f"{lhs} -> {' '.join(map(str, rhs))} is not a production of the grammar")
        total += np.log(probability[lhs, rhs])
    return float(total)
