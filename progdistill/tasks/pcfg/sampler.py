"""Sampling sentences, with their parse trees, from a probabilistic context-free grammar (paper §2).

Randomness comes from an explicit ``numpy.random.Generator`` (not a ``torch.Generator``: the sampler is numpy
throughout, and numpy draws whole arrays of uniforms cheaply). A torch-seeded pipeline can derive one with
``np.random.default_rng(int(torch.randint(2**63 - 1, (), generator=g)))``. Same generator state and same
``count``, same sentences, bit for bit; the sentences depend on ``count`` (one call of 20 is not two calls of 10).

The sampler expands whole batches breadth-first, one tree depth at a time: every nonterminal of the frontier
draws its production at once (one uniform per node, compared with the cumulative rule probabilities), children
replace parents with ``np.repeat``, and terminals are carried to the next depth unchanged. Per-token ancestors
and span boundaries are read back through the stored parent pointers, so nothing loops over tokens in Python.

Per sentence of ``n`` tokens (:class:`Sentence`):

- ``tokens`` (n,) int64: terminal ids, the index in ``Grammar.terminals`` (sorted: a, b, c -> 0, 1, 2).
- ``ancestors`` (num_levels, n) int32: ``ancestors[d, t]`` is the id (index in ``Grammar.nonterminals``) of
  the depth-d node on the path from the root to token t. For a layered grammar (the cfg3 family) depth d is
  level d and every entry is set; in other grammars a token whose path is shorter holds -1, and nodes deeper
  than ``num_levels - 1`` are not recorded.
- ``boundaries`` (num_levels, n) int8: 1 where token t is the last token of its depth-d ancestor's span.
- ``log_probability``: natural log of the probability of the sampled tree (the sum over its productions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from progdistill.tasks.pcfg.grammar import Grammar, GrammarError, Terminal

CHUNK = 1024  # sentences expanded together; part of what fixes the sentences drawn for a seed
MAX_LENGTH = 10_000  # default guard: a sentence longer than this is an error
MAX_DEPTH = 1_000  # default guard on tree depth (unary recursion can deepen trees without lengthening them)


class SentenceTooLongError(GrammarError):
    """Sampling exceeded the length or depth guard: the grammar (likely recursive) grows without bound."""


@dataclass(frozen=True)
class Sentence:
    """One sampled sentence and its tree, as per-token arrays (shapes in the module docstring)."""

    tokens: np.ndarray  # (n,) int64
    ancestors: np.ndarray  # (num_levels, n) int32, -1 where the token's path is shorter
    boundaries: np.ndarray  # (num_levels, n) int8
    log_probability: float

    def __len__(self) -> int:
        return len(self.tokens)

    def spans(self) -> list[tuple[int, int, int]]:
        """The tree's nonterminal nodes at the recorded depths, as ``(nonterminal id, start, end)`` with ``end``
        exclusive, ordered by depth then start. For a layered grammar this is the whole tree."""
        out = []
        for anc, ends in zip(self.ancestors, self.boundaries):
            stops = np.flatnonzero(ends) + 1
            starts = np.concatenate(([0], stops[:-1]))
            out += [(int(anc[a]), int(a), int(b)) for a, b in zip(starts, stops) if anc[a] >= 0]
        return out


@dataclass(frozen=True)
class SentenceBatch:
    """Sampled sentences stored ragged: all tokens concatenated, sentence i is ``offsets[i]:offsets[i+1]``."""

    tokens: np.ndarray  # (N,) int64, N = total tokens
    ancestors: np.ndarray  # (num_levels, N) int32
    boundaries: np.ndarray  # (num_levels, N) int8
    offsets: np.ndarray  # (count + 1,) int64
    log_probability: np.ndarray  # (count,) float64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(count,) int64 sentence lengths in tokens."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> Sentence:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sentence {i} out of range for a batch of {len(self)}")
        i %= len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return Sentence(
            self.tokens[a:b], self.ancestors[:, a:b], self.boundaries[:, a:b], float(self.log_probability[i])
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class _Tables:
    """The grammar as arrays. Symbols share one id space: nonterminals 0..N-1, terminal t is N + t."""

    num_nonterminals: int
    start: int
    cumulative: np.ndarray  # (N, R) cumulative rule probabilities, last real one and padding = inf
    first_rule: np.ndarray  # (N,) index of each nonterminal's first rule
    rhs: np.ndarray  # (num_rules, K) symbol ids, -1 padded
    rhs_length: np.ndarray  # (num_rules,)
    log_p: np.ndarray  # (num_rules,)


@lru_cache(maxsize=32)
def _tables(grammar: Grammar) -> _Tables:
    nts = {s: i for i, s in enumerate(grammar.nonterminals)}
    ts = {t: len(nts) + i for i, t in enumerate(grammar.terminals)}
    groups = [grammar.rules_for(s) for s in grammar.nonterminals]
    width = max(len(g) for g in groups)
    cumulative = np.full((len(nts), width), np.inf)
    first_rule = np.zeros(len(nts), dtype=np.int64)
    index = 0
    for i, group in enumerate(groups):
        first_rule[i] = index
        index += len(group)
        # The last rule takes all remaining mass, so rounding in the file can never leave a gap.
        cumulative[i, : len(group) - 1] = np.cumsum([r.probability for r in group])[:-1]
    k = max(len(r.rhs) for r in grammar.rules)
    rhs = np.full((len(grammar.rules), k), -1, dtype=np.int64)
    for j, r in enumerate(grammar.rules):
        rhs[j, : len(r.rhs)] = [ts[s.name] if isinstance(s, Terminal) else nts[s] for s in r.rhs]
    return _Tables(
        len(nts),
        nts[grammar.start],
        cumulative,
        first_rule,
        rhs,
        np.array([len(r.rhs) for r in grammar.rules]),
        np.log([r.probability for r in grammar.rules]),
    )


def sample_sentences(
    grammar: Grammar, count: int, rng: np.random.Generator, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH
) -> SentenceBatch:
    """Sample ``count`` sentences with their trees (paper §2: the cfg3 data).

    Deterministic in the state of ``rng`` and ``count``. Raises :class:`SentenceTooLongError` (a
    :class:`GrammarError`) naming the limit when a sentence grows past ``max_length`` tokens or its tree past
    ``max_depth`` levels, which is how a grammar that can grow without bound (recursion) shows itself.
    """
    if not (isinstance(count, int) and count >= 0):
        raise GrammarError(f"count={count!r} is invalid: must be an integer >= 0")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    parts = [_sample_chunk(grammar, min(CHUNK, count - i), rng, max_length, max_depth) for i in range(0, count, CHUNK)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        d = grammar.num_levels
        return SentenceBatch(
            np.zeros(0, np.int64),
            np.zeros((d, 0), np.int32),
            np.zeros((d, 0), np.int8),
            np.zeros(1, np.int64),
            np.zeros(0),
        )
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    return SentenceBatch(
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.ancestors for p in parts], axis=1),
        np.concatenate([p.boundaries for p in parts], axis=1),
        np.concatenate(([0], np.cumsum(lengths))),
        np.concatenate([p.log_probability for p in parts]),
    )


def _sample_chunk(
    grammar: Grammar, count: int, rng: np.random.Generator, max_length: int, max_depth: int
) -> SentenceBatch:
    tb = _tables(grammar)
    n_nt = tb.num_nonterminals
    symbols = np.full(count, tb.start, dtype=np.int64)  # frontier at the current depth, sentence order
    sentence = np.arange(count)  # sentence of each frontier item
    log_probability = np.zeros(count)
    history = []  # per depth: (frontier symbols, parent of next frontier)
    depth = 0
    while True:
        is_nt = symbols < n_nt
        if not is_nt.any():
            break
        if depth >= max_depth:
            raise SentenceTooLongError(
                f"a tree grew deeper than max_depth={max_depth}; the grammar {grammar.name!r} is likely recursive"
            )
        nt_symbols = symbols[is_nt]  # (M,)
        u = rng.random(len(nt_symbols))
        choice = (u[:, None] >= tb.cumulative[nt_symbols]).sum(axis=1)  # (M,)
        rule = tb.first_rule[nt_symbols] + choice
        log_probability += np.bincount(sentence[is_nt], weights=tb.log_p[rule], minlength=count)
        counts = np.ones(len(symbols), dtype=np.int64)
        counts[is_nt] = tb.rhs_length[rule]
        lengths = np.bincount(sentence, weights=counts, minlength=count)
        if lengths.max() > max_length:
            raise SentenceTooLongError(
                f"a sentence grew past max_length={max_length} tokens; the grammar "
                f"{grammar.name!r} can grow without bound (recursion), or raise the limit"
            )
        parent = np.repeat(np.arange(len(symbols)), counts)  # (M',)
        position = np.arange(len(parent)) - np.repeat(np.cumsum(counts) - counts, counts)
        rule_of_item = np.full(len(symbols), -1, dtype=np.int64)
        rule_of_item[is_nt] = rule
        parent_rule = rule_of_item[parent]
        expanded = parent_rule >= 0
        children = symbols[parent].copy()  # terminals carried over
        children[expanded] = tb.rhs[parent_rule[expanded], position[expanded]]
        history.append((symbols, parent))
        symbols, sentence = children, sentence[parent]
        depth += 1

    levels = grammar.num_levels
    n = len(symbols)
    ancestors = np.empty((levels, n), dtype=np.int32)
    boundaries = np.empty((levels, n), dtype=np.int8)
    ancestors[depth:], boundaries[depth:] = -1, 0  # rows deeper than every tree (non-layered grammars)
    item = np.arange(n)
    for d in range(depth - 1, -1, -1):
        frontier, parent = history[d]
        item = parent[item]
        if d < levels:
            sym = frontier[item]
            real = sym < n_nt
            ancestors[d] = np.where(real, sym, -1)
            boundaries[d] = np.append(item[1:] != item[:-1], True) & real
    offsets = np.concatenate(([0], np.cumsum(np.bincount(sentence, minlength=count))))
    return SentenceBatch(symbols - n_nt, ancestors, boundaries, offsets, log_probability)
