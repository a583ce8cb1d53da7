"""A task of your own: a random halfspace in n real dimensions.

x ~ N(0, I_n); the label is 1 where w . x > 0, for a hidden unit vector w drawn from ``w_seed``. Used by
docs/extending.md: ``progdistill run CONFIG.json --import docs/examples/my_task.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from progdistill.core.config import check, check_positive_int, register
from progdistill.tasks.base import Batch, TaskBase


@register("task")  # config.json names it as {"type": "halfspace", ...}
@dataclass(frozen=True)  # a task is a frozen config: equal fields, equal task
class HalfspaceTask(TaskBase):  # TaskBase: no data files, no probes, one label per example
    kind: ClassVar[str] = "halfspace"

    n: int = 20
    w_seed: int = 0
    eval_size: int = 2048
    eval_seed: int = 1

    def __post_init__(self):
        check_positive_int("task.n", self.n)
        check(isinstance(self.w_seed, int) and self.w_seed >= 0, "task.w_seed", self.w_seed, "an integer >= 0")
        check_positive_int("task.eval_size", self.eval_size)

    @property
    def num_classes(self) -> int:  # C: the models' output classes
        return 2

    @property
    def input_size(self) -> int:  # n: what a model config's build() receives as its input size
        return self.n

    def _w(self) -> torch.Tensor:
        w = torch.randn(self.n, generator=torch.Generator().manual_seed(self.w_seed))
        return w / w.norm()

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        """``count`` fresh examples: inputs (count, n) float32, targets (count,) int64; every draw from
        ``generator`` (the loop's per-seed data stream), so the same state gives the same batch."""
        x = torch.randn(count, self.n, generator=generator)  # (count, n)
        return Batch(x, (x @ self._w() > 0).long())  # targets (count,)

    def eval_batches(self) -> list[Batch]:
        """The fixed held-out set, the same at every call."""
        return [self.sample_batch(self.eval_size, torch.Generator().manual_seed(self.eval_seed))]
