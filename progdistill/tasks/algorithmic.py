"""Two algorithmic tasks with a search for structure: modular addition and pointer chasing.

**Modular addition** (Power et al. 2022, "Grokking"): the label of the pair (a, b) in [p]^2 is (a + b) mod p.
A seeded fraction of the p^2 pairs is the training set, and training batches are drawn from it alone; the
held-out set is the disjoint rest. With weight decay a network first memorizes the training pairs (training loss
near 0, held-out accuracy near chance), then generalizes long after -- a delayed transition that a distilled
student may or may not be spared (Singh et al. 2025 distil from grokked teachers).

**Pointer chasing**: the input holds a map f: [m] -> [m] and a start s; the label is f^k(s), the pointer followed
k times. Each hop composes a lookup with the last, the simplest multi-step ("reasoning") composition.

Both are one-label tasks with one-hot float inputs, so the stacked ``mlp`` model trains them as it trains
sparse parity. Every training draw comes from the generator passed in; each held-out set is fixed by a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from progdistill.core.config import check, check_positive_int, register
from progdistill.tasks.base import Batch, TaskBase


def _check_seed(field_name: str, value) -> None:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        field_name,
        value,
        "must be an integer >= 0",
    )


@register("task")
@dataclass(frozen=True)
class ModularAdditionTask(TaskBase):
    """(a + b) mod p from a limited training set.

    Pairs are indexed i = a * p + b. ``split_seed`` draws a permutation of the p^2 pairs; its first
    round(``train_fraction`` * p^2) are the training pairs, the rest the held-out set. Inputs are one-hot a
    followed by one-hot b, float32 (B, 2p); targets (a + b) mod p, int64 (B,), p classes.

    Raises :class:`~progdistill.core.config.ConfigError` for p < 2, a ``train_fraction`` outside (0, 1) or one
    that leaves either set empty, and a negative ``split_seed``.
    """

    kind: ClassVar[str] = "modular-addition"
    accuracy_label: ClassVar[str] = "held-out accuracy"

    p: int = 97
    train_fraction: float = 0.5
    split_seed: int = 0

    def __post_init__(self):
        check(
            isinstance(self.p, int) and not isinstance(self.p, bool) and self.p >= 2,
            "task.p",
            self.p,
            "must be an integer >= 2 (the modulus)",
        )
        check(
            isinstance(self.train_fraction, (int, float))
            and not isinstance(self.train_fraction, bool)
            and 0 < self.train_fraction < 1,
            "task.train_fraction",
            self.train_fraction,
            "must be a number in (0, 1) (the share of the p^2 pairs used for training)",
        )
        n_train = round(self.train_fraction * self.p**2)
        check(
            0 < n_train < self.p**2,
            "task.train_fraction",
            self.train_fraction,
            f"leaves {n_train} of the p^2={self.p**2} pairs for training; both the training and the held-out "
            "set need at least one pair",
        )
        _check_seed("task.split_seed", self.split_seed)

    @property
    def num_classes(self) -> int:
        return self.p

    @property
    def config_num_classes(self) -> int:
        return self.p

    @property
    def input_size(self) -> int:
        """One-hot a and one-hot b: 2p floats."""
        return 2 * self.p

    @property
    def train_size(self) -> int:
        """Training pairs: round(train_fraction * p^2)."""
        return round(self.train_fraction * self.p**2)

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(training pair indices, held-out pair indices), int64, each sorted; disjoint, together all p^2 pairs.
        Drawn from a generator seeded with ``split_seed`` alone."""
        perm = torch.randperm(self.p**2, generator=torch.Generator().manual_seed(self.split_seed))
        return perm[: self.train_size].sort().values, perm[self.train_size :].sort().values

    def encode(self, pairs: torch.Tensor) -> Batch:
        """Pair indices (B,) int64 -> a Batch: inputs (B, 2p) float32 one-hot, targets (a + b) mod p (B,)."""
        a, b = pairs // self.p, pairs % self.p
        inputs = torch.zeros(len(pairs), 2 * self.p)
        rows = torch.arange(len(pairs))
        inputs[rows, a] = 1.0
        inputs[rows, self.p + b] = 1.0
        return Batch(inputs, (a + b) % self.p)

    def estimated_bytes(self, batch_size: int) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Bytes of data, from the fields alone: ``"batch"``, ``batch_size`` examples (float32 inputs, int64
        labels and pair indices); ``"eval"``, the held-out pairs. Each entry also names the fields that size it
        (:func:`progdistill.experiment.estimate_memory`)."""
        per_example = 4 * 2 * self.p + 3 * 8
        held_out = self.p**2 - self.train_size
        return {
            "batch": (batch_size * per_example, ("p",)),
            "eval": (held_out * per_example, ("p", "train_fraction")),
        }

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` training pairs drawn uniformly with replacement from the training set (one draw from
        ``generator``): inputs (count, 2p), targets (count,)."""
        train, _ = self.split()
        return self.encode(train[torch.randint(len(train), (count,), generator=generator)])

    def eval_batches(self) -> list[Batch]:
        """Every held-out pair, once, as one batch."""
        return [self.encode(self.split()[1])]

    def train_batches(self) -> list[Batch]:
        """Every training pair, once, as one batch (for a memorization check: accuracy on what was seen)."""
        return [self.encode(self.split()[0])]


MAP_KINDS = ("permutation", "function")


@register("task")
@dataclass(frozen=True)
class PointerChasingTask(TaskBase):
    """Follow a map k times: the label of (f, s) is f^k(s) = f(f(...f(s))).

    f: [m] -> [m] is drawn fresh for every example, by ``maps``: "permutation" (a uniform bijection; every node is
    the image of exactly one, so no count of preimages hints at the label and only the composed lookups
    f(s), f(f(s)), ... carry information) or "function" (any map, uniform; a walk falls into a short cycle,
    and nodes with many preimages are likelier labels). s is uniform on [m]. Inputs, float32
    (B, m*m + m): row i of the map one-hot (f(i) among m) for i = 0..m-1, then s one-hot. Targets f^k(s), int64
    (B,), m classes (uniform, by the symmetry of relabelling). ``eval_size`` examples are drawn once from
    ``eval_seed``.

    Raises :class:`~progdistill.core.config.ConfigError` for m < 2, k < 1, an unknown ``maps``, a non-positive
    ``eval_size`` and a negative ``eval_seed``.
    """

    kind: ClassVar[str] = "pointer-chasing"

    m: int = 8
    k: int = 2
    maps: str = "permutation"
    eval_size: int = 4096
    eval_seed: int = 12345

    def __post_init__(self):
        check(
            isinstance(self.m, int) and not isinstance(self.m, bool) and self.m >= 2,
            "task.m",
            self.m,
            "must be an integer >= 2 (the size of the map's domain)",
        )
        check(
            isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1,
            "task.k",
            self.k,
            "must be an integer >= 1 (the number of hops)",
        )
        check(self.maps in MAP_KINDS, "task.maps", self.maps, f"one of {', '.join(MAP_KINDS)}")
        check_positive_int("task.eval_size", self.eval_size)
        _check_seed("task.eval_seed", self.eval_seed)

    @property
    def num_classes(self) -> int:
        return self.m

    @property
    def config_num_classes(self) -> int:
        return self.m

    @property
    def input_size(self) -> int:
        """The map one-hot (m*m) and the start one-hot (m)."""
        return self.m * self.m + self.m

    def chase(self, maps: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """f^k(s): maps (B, m) int64 with maps[b, i] = f_b(i), starts (B,) int64 -> (B,) int64."""
        node = starts.unsqueeze(1)  # (B, 1)
        for _ in range(self.k):
            node = maps.gather(1, node)
        return node.squeeze(1)

    def encode(self, maps: torch.Tensor, starts: torch.Tensor) -> Batch:
        """maps (B, m), starts (B,) -> a Batch: inputs (B, m*m + m) float32, targets f^k(s) (B,)."""
        m = self.m
        inputs = torch.cat(
            [torch.nn.functional.one_hot(maps, m).flatten(1), torch.nn.functional.one_hot(starts, m)], dim=1
        ).float()  # (B, m*m + m)
        return Batch(inputs, self.chase(maps, starts))

    def estimated_bytes(self, batch_size: int) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Bytes of data, from the fields alone: ``"batch"``, ``batch_size`` examples (the int64 map and start,
        their int64 one-hots and float32 inputs, int64 labels); ``"eval"``, the held-out set. Each entry also
        names the fields that size it (:func:`progdistill.experiment.estimate_memory`)."""
        width = self.m * self.m + self.m
        per_example = 8 * (self.m + 1) + 12 * width + 8
        return {"batch": (batch_size * per_example, ("m",)), "eval": (self.eval_size * per_example, ("eval_size", "m"))}

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` random maps (count, m) and starts (count,), int64, drawn from ``generator``."""
        if self.maps == "permutation":  # the ranks of m uniform draws: a uniform permutation per row
            maps = torch.rand(count, self.m, generator=generator).argsort(dim=1)
        else:
            maps = torch.randint(self.m, (count, self.m), generator=generator)
        starts = torch.randint(self.m, (count,), generator=generator)
        return maps, starts

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` fresh examples: inputs (count, m*m + m), targets (count,)."""
        return self.encode(*self.sample(count, generator))

    def eval_batches(self) -> list[Batch]:
        """``eval_size`` examples drawn once from ``eval_seed``, as one batch."""
        return [self.sample_batch(self.eval_size, torch.Generator().manual_seed(self.eval_seed))]
