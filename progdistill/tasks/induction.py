"""In-context recall mixed with a fixed bigram language: the setting where induction heads form.

:class:`InductionTask` (task kind ``"induction"``) draws sequences of ``length`` tokens over ``vocab_size`` ids.
Every sequence is a walk of a fixed, seeded bigram chain (each token's successor drawn from its row of a
transition matrix made from ``bigram_seed``). With probability ``mix`` a sequence also holds ``pairs`` planted
*segments* of ``segment_length`` tokens: each segment is written once in the first half of the sequence and
copied later in the second half (a segment of two tokens is a key-value pair recalled by its key). The copy's
tokens after its first one can be predicted only by looking back at the first occurrence -- in-context
(induction-head) positions; the bigram walk's tokens only from the previous token -- bigram positions.

Next-token prediction: position t predicts token t + 1. Supervised are the *in-context* targets (tokens 2..S of a
copy) and the *bigram* targets (tokens drawn from the chain); a segment's first occurrence (uniform random tokens)
and a copy's first token are not predictable by either rule and are left out (``IGNORE_INDEX``). The held-out
batches carry both position sets as ``Batch.groups`` so that evaluation reports the loss and accuracy of each
(``eval_in_context_loss``, ``eval_bigram_accuracy``, ...). Olsson et al. 2022 (induction heads); Reddy 2023 (a
fixed-statistics component against an in-context one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch

from progdistill.core.config import ConfigError, check, check_positive_int, register
from progdistill.distill.losses import IGNORE_INDEX
from progdistill.tasks.base import Batch, TaskBase

EVAL_BATCH = 128  # sequences per held-out batch

IN_CONTEXT, BIGRAM = "in_context", "bigram"  # the position groups of the held-out batches


@dataclass(frozen=True)
class InductionSample:
    """A batch of sequences with where their planted segments are.

    ``tokens``: (B, L) int64; ``planted``: (B, L) int64, the segment index (0..pairs-1) of a token written as
    part of a segment's first occurrence or copy, -1 for bigram tokens; ``copy``: (B, L) bool, True at the
    tokens of a copy; ``offset``: (B, L) int64, a planted token's place in its segment (0..S-1), -1 elsewhere.
    """

    tokens: torch.Tensor
    planted: torch.Tensor
    copy: torch.Tensor
    offset: torch.Tensor


def bigram_matrix(vocab_size: int, alpha: float, seed: int) -> torch.Tensor:
    """The fixed transition matrix (V, V) float64: row a is the distribution of the token after a, each row a
    draw of Dirichlet(alpha, ..., alpha) from a generator seeded by ``seed`` (small alpha: peaked rows, a low
    bigram entropy)."""
    rows = np.random.default_rng(seed).dirichlet(np.full(vocab_size, float(alpha)), size=vocab_size)
    return torch.from_numpy(rows / rows.sum(axis=1, keepdims=True))


def _slots(count: int, span: int, pairs: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Starts (count, pairs) of ``pairs`` non-overlapping slots of ``size`` tokens inside ``span`` positions,
    sorted, uniformly over the placements: pick ``pairs`` of ``span - pairs*(size-1)`` places and space them."""
    places = span - pairs * (size - 1)
    picks = torch.rand(count, places, generator=generator).argsort(dim=1)[:, :pairs].sort(dim=1).values
    return picks + torch.arange(pairs) * (size - 1)


@register("task")
@dataclass(frozen=True)
class InductionTask(TaskBase):
    """Next-token prediction on bigram walks with planted, repeated segments (module docstring).

    Fields: ``vocab_size`` V (token ids 0..V-1); ``length`` L tokens per sequence; ``segment_length`` S >= 2
    (2 = key-value pairs); ``pairs`` segments per in-context sequence; ``mix`` in [0, 1], the probability that a
    sequence holds the segments (0: a pure bigram language, 1: every sequence); ``bigram_alpha`` > 0, the
    Dirichlet concentration of the bigram rows; ``bigram_seed``; ``eval_size`` held-out sequences drawn from
    ``eval_seed``. Raises ``ConfigError`` naming the field when a half of the sequence (L // 2 - 1 positions
    after the first token) cannot hold ``pairs`` segments, or when V < pairs * S (a segment's tokens are all
    distinct from the other segments', so that a copy is determined by its first occurrence).
    """

    kind: ClassVar[str] = "induction"
    per_position_targets: ClassVar[bool] = True
    probes: ClassVar[tuple[str, ...]] = ("induction",)
    end_of_run_probes: ClassVar[tuple[str, ...]] = ("induction",)
    accuracy_label: ClassVar[str] = "next-token accuracy (validation)"
    generative: ClassVar[bool] = True

    vocab_size: int = 32
    length: int = 64
    segment_length: int = 8
    pairs: int = 1
    mix: float = 0.5
    bigram_alpha: float = 0.1
    bigram_seed: int = 0
    eval_size: int = 512
    eval_seed: int = 12345

    def __post_init__(self):
        check(
            isinstance(self.mix, (int, float)) and 0.0 <= self.mix <= 1.0,
            "task.mix",
            self.mix,
            "must lie in [0, 1] (the fraction of sequences with repeated segments)",
        )
        check(
            isinstance(self.segment_length, int) and self.segment_length >= 2,
            "task.segment_length",
            self.segment_length,
            "must be an integer >= 2 (2 = key-value pairs)",
        )
        for name in ("vocab_size", "length", "pairs", "eval_size"):
            check_positive_int(f"task.{name}", getattr(self, name))
        check(
            isinstance(self.bigram_alpha, (int, float)) and self.bigram_alpha > 0,
            "task.bigram_alpha",
            self.bigram_alpha,
            "must be > 0",
        )
        half = self.length // 2 - 1
        if self.pairs * self.segment_length > half:
            raise ConfigError(
                f"task.length={self.length} cannot hold task.pairs={self.pairs} segments of "
                f"task.segment_length={self.segment_length}: each half of a sequence ({half} positions after the "
                f"first token) needs pairs * segment_length = {self.pairs * self.segment_length}; raise task.length "
                "or lower task.pairs / task.segment_length"
            )
        if self.vocab_size < self.pairs * self.segment_length:
            raise ConfigError(
                f"task.vocab_size={self.vocab_size} is too small for task.pairs={self.pairs} segments of "
                f"task.segment_length={self.segment_length} distinct tokens: it must be >= "
                f"{self.pairs * self.segment_length}"
            )

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def config_num_classes(self) -> int:
        return self.vocab_size

    @property
    def input_size(self) -> int:
        return self.length

    def positions_needed(self) -> int:
        return self.length

    def transition(self) -> torch.Tensor:
        """The bigram chain's transition matrix (V, V) float64 (:func:`bigram_matrix`)."""
        return _transition(self.vocab_size, float(self.bigram_alpha), self.bigram_seed)

    def sample(self, count: int, generator: torch.Generator) -> InductionSample:
        """``count`` sequences with their planted segments (:class:`InductionSample`), every draw from
        ``generator`` (a fixed number of draws per call, whatever the outcomes)."""
        V, L, S, K = self.vocab_size, self.length, self.segment_length, self.pairs
        holds = torch.rand(count, generator=generator) < self.mix  # (B,) sequences with segments
        # Segment tokens: K * S distinct ids per sequence, segment j = ids[j*S:(j+1)*S].
        ids = torch.rand(count, V, generator=generator).argsort(dim=1)[:, : K * S].reshape(count, K, S)
        half = L // 2
        first = 1 + _slots(count, half - 1, K, S, generator)  # (B, K) in [1, half)
        second = half + _slots(count, L - half, K, S, generator)  # (B, K) in [half, L)
        order = torch.rand(count, K, generator=generator).argsort(dim=1)  # copy slot k holds segment order[k]
        planted = torch.full((count, L), -1, dtype=torch.long)
        offset = torch.full((count, L), -1, dtype=torch.long)
        copy = torch.zeros(count, L, dtype=torch.bool)
        values = torch.full((count, L), -1, dtype=torch.long)
        rows = torch.arange(count)[:, None]
        for j in range(K):
            for s in range(S):
                planted[rows[:, 0], first[:, j] + s] = j
                offset[rows[:, 0], first[:, j] + s] = s
                values[rows[:, 0], first[:, j] + s] = ids[:, j, s]
                seg = order[:, j]
                pos = second[:, j] + s
                planted[rows[:, 0], pos] = seg
                offset[rows[:, 0], pos] = s
                copy[rows[:, 0], pos] = True
                values[rows[:, 0], pos] = ids[rows[:, 0], seg, s]
        keep = holds[:, None]
        planted = torch.where(keep, planted, -1)
        offset = torch.where(keep, offset, -1)
        copy = copy & keep
        values = torch.where(keep, values, -1)
        # The bigram walk, with the planted tokens written in place (inverse-CDF draws, one uniform per position).
        cumulative = self.transition().cumsum(dim=1)  # (V, V)
        u = torch.rand(count, L, generator=generator, dtype=torch.float64)
        tokens = torch.empty(count, L, dtype=torch.long)
        tokens[:, 0] = (u[:, 0] * V).long().clamp(max=V - 1)
        for t in range(1, L):
            row = cumulative[tokens[:, t - 1]]  # (B, V)
            drawn = (row < u[:, t : t + 1]).sum(dim=1).clamp(max=V - 1)
            tokens[:, t] = torch.where(values[:, t] >= 0, values[:, t], drawn)
        return InductionSample(tokens, planted, copy, offset)

    def batch_from_sample(self, sample: InductionSample) -> Batch:
        """Inputs = the tokens (B, L); targets (B, L): token t + 1 at the in-context and bigram positions,
        ``IGNORE_INDEX`` elsewhere and at the last position; ``groups`` {"in_context", "bigram"}: (B, L) bool."""
        tokens = sample.tokens
        nxt_planted, nxt_copy, nxt_offset = (x[:, 1:] for x in (sample.planted, sample.copy, sample.offset))
        in_context = torch.zeros_like(tokens, dtype=torch.bool)
        bigram = torch.zeros_like(tokens, dtype=torch.bool)
        in_context[:, :-1] = nxt_copy & (nxt_offset >= 1)
        bigram[:, :-1] = nxt_planted < 0
        targets = torch.full_like(tokens, IGNORE_INDEX)
        supervised = in_context | bigram
        targets[:, :-1] = torch.where(supervised[:, :-1], tokens[:, 1:], IGNORE_INDEX)
        return Batch(
            tokens, targets, torch.ones_like(tokens, dtype=torch.bool), {IN_CONTEXT: in_context, BIGRAM: bigram}
        )

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` fresh sequences (the training stream)."""
        return self.batch_from_sample(self.sample(count, generator))

    def prompt_length(self) -> int:
        """Tokens of a generation prompt: the first half of a sequence, L // 2, which holds every segment's first
        occurrence (the copies lie in the second half), so that a continuation can copy."""
        return self.length // 2

    def generate_batch(
        self, model, count: int, generator: torch.Generator, temperature: float = 1.0, max_new_tokens: int | None = None
    ) -> Batch:
        """``count`` sequences whose second half is sampled from ``model`` (a
        :class:`~progdistill.models.language.CausalLM`): prompts are the first :meth:`prompt_length` tokens of
        fresh training sequences (:meth:`sample`, drawn from ``generator``), continued over all V ids at
        ``temperature`` (0 = greedy) for ``max_new_tokens`` tokens (None: up to ``length``; there is no end
        token), every draw from ``generator``. Returns inputs (B, P + N) and targets (B, P + N): in the prompt the
        task's own targets (its bigram positions; a first occurrence is unpredictable), then every generated
        token, ``IGNORE_INDEX`` at the last position; no ``groups``."""
        prompt_len = self.prompt_length()
        data = self.batch_from_sample(self.sample(count, generator))
        device = next(model.parameters()).device
        prompt = data.inputs[:, :prompt_len]
        limit = self.length - prompt_len if max_new_tokens is None else min(max_new_tokens, self.length - prompt_len)
        drawn = model.sample(prompt.to(device), torch.arange(self.vocab_size), -1, limit, generator, temperature)
        new = torch.tensor(drawn, dtype=torch.long).reshape(count, -1)  # no stop id: every row has `limit` tokens
        tokens = torch.cat([prompt, new], dim=1)
        targets = torch.full_like(tokens, IGNORE_INDEX)
        targets[:, : prompt_len - 1] = data.targets[:, : prompt_len - 1]
        targets[:, prompt_len - 1 : -1] = new
        return Batch(tokens, targets, torch.ones_like(tokens, dtype=torch.bool))

    def eval_batches(self) -> list[Batch]:
        """The fixed held-out set: ``eval_size`` sequences drawn from ``eval_seed``, in batches of
        ``EVAL_BATCH``."""
        return _eval_batches(self)


@lru_cache(maxsize=8)
def _transition(vocab_size: int, alpha: float, seed: int) -> torch.Tensor:
    return bigram_matrix(vocab_size, alpha, seed)


@lru_cache(maxsize=4)
def _eval_batches(task: InductionTask) -> list[Batch]:
    batch = task.sample_batch(task.eval_size, torch.Generator().manual_seed(task.eval_seed))
    return [batch.rows(slice(i, i + EVAL_BATCH)) for i in range(0, task.eval_size, EVAL_BATCH)]
