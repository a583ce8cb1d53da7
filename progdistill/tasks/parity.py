"""The (n, k) sparse parity task (paper §1).

x is uniform on {-1, +1}^n; a hidden support S of k coordinates; the label is the class of the parity
prod_{i in S} x_i: class 1 when the product is +1, class 0 when it is -1. Training samples are drawn fresh
from a ``torch.Generator``; the evaluation set is fixed by its own seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from progdistill.core.config import check, check_positive_int, register
from progdistill.tasks.base import Batch, TaskBase


@dataclass(frozen=True)
class SupportTask(TaskBase):
    """Shared fields and sampling of a label that depends on k hidden coordinates of x uniform on {-1, +1}^n.

    ``support_seed``: None puts the support on the first k coordinates; an integer draws k distinct
    coordinates from a generator seeded with it (the same draw in every subclass: sparse parity here, the
    staircases and majority in :mod:`progdistill.tasks.boolean`). ``eval_size`` examples are drawn once from
    ``eval_seed``. Subclasses give :meth:`labels`.
    """

    # The monomial-correlation probe (progdistill.probes.monomials) reads n, k, support and sample_inputs only.
    probes: ClassVar[tuple[str, ...]] = ("monomials",)

    n: int = 20
    k: int = 3
    support_seed: int | None = None
    eval_size: int = 4096
    eval_seed: int = 12345

    def __post_init__(self):
        check_positive_int("task.n", self.n)
        check(
            isinstance(self.k, int) and 1 <= self.k <= self.n,
            "task.k",
            self.k,
            f"must be an integer in 1..n (n={self.n})",
        )
        check(
            self.support_seed is None or (isinstance(self.support_seed, int) and self.support_seed >= 0),
            "task.support_seed",
            self.support_seed,
            "None (first k coordinates) or an integer >= 0",
        )
        check_positive_int("task.eval_size", self.eval_size)
        check(
            isinstance(self.eval_seed, int) and self.eval_seed >= 0,
            "task.eval_seed",
            self.eval_seed,
            "must be an integer >= 0",
        )

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def config_num_classes(self) -> int:
        return 2

    @property
    def input_size(self) -> int:
        """Input bits per example (n)."""
        return self.n

    @property
    def support(self) -> tuple[int, ...]:
        """The k support coordinates, sorted (0-based)."""
        if self.support_seed is None:
            return tuple(range(self.k))
        gen = torch.Generator().manual_seed(self.support_seed)
        return tuple(sorted(torch.randperm(self.n, generator=gen)[: self.k].tolist()))

    def estimated_bytes(self, batch_size: int) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Bytes of data, from the fields alone (nothing is sampled): ``"batch"``, ``batch_size`` examples sampled
        at once (int8 bits, their float32 inputs and int64 labels); ``"eval"``, the held-out set. Each entry also
        names the fields that size it (:func:`progdistill.experiment.estimate_memory`)."""
        per_example = 5 * self.n + 8
        return {"batch": (batch_size * per_example, ("n",)), "eval": (self.eval_size * per_example, ("eval_size", "n"))}

    def sample_inputs(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` inputs uniform on {-1, +1}^n, float32 of shape (count, n)."""
        bits = torch.randint(0, 2, (count, self.n), generator=generator, dtype=torch.int8)
        return bits.float().mul_(2).sub_(1)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n) in {-1, +1} -> int64 classes (...)."""
        raise NotImplementedError

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh batch: inputs (count, n) float32 and labels (count,) int64."""
        x = self.sample_inputs(count, generator)
        return x, self.labels(x)

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed held-out set: (eval_size, n) inputs and (eval_size,) labels, drawn from ``eval_seed``."""
        return self.sample(self.eval_size, torch.Generator().manual_seed(self.eval_seed))

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """:meth:`sample` as a :class:`~progdistill.tasks.base.Batch`: inputs (count, n), targets (count,)."""
        return Batch(*self.sample(count, generator))

    def eval_batches(self) -> list[Batch]:
        """The fixed held-out set (:meth:`eval_set`) as one batch."""
        return [Batch(*self.eval_set())]


@register("task")
@dataclass(frozen=True)
class ParityTask(SupportTask):
    """Config and sampler of (n, k) sparse parity.

    ``support_seed``: None puts the support on the first k coordinates; an integer draws k distinct
    coordinates from a generator seeded with it. ``eval_size`` examples are drawn once from ``eval_seed``.
    """

    kind: ClassVar[str] = "parity"

    n: int = 50
    k: int = 5

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Class of the parity of the support: x (..., n) in {-1, +1} -> int64 (...), 1 iff prod x_S = +1."""
        parity = x[..., list(self.support)].prod(dim=-1)
        return (parity > 0).long()
