"""A model of your own: a stack of M tanh MLPs with one hidden layer, trained together.

Used by docs/extending.md: ``progdistill run CONFIG.json --import docs/examples/my_model.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from progdistill.core.config import check_positive_int, register


@register("model")  # config.json names it as {"type": "tanh-mlp", "width": ...}
@dataclass(frozen=True)
class TanhMLPConfig:
    kind: ClassVar[str] = "tanh-mlp"
    stackable: ClassVar[bool] = True  # build() may get several generators: one model each, trained as one stack

    width: int = 32

    def __post_init__(self):
        check_positive_int("model.width", self.width)

    def build(self, input_size: int, num_classes: int, generators: Sequence[torch.Generator]) -> TanhMLP:
        """The stack of ``len(generators)`` models for a task of ``input_size`` inputs and ``num_classes``
        classes; model m's weights drawn from ``generators[m]`` alone."""
        return TanhMLP(input_size, num_classes, self.width, generators)


class TanhMLP(nn.Module):
    """``forward(x)``: x (B, n) shared by every model, or (M, B, n) one batch per model -> logits (M, B, C).
    ``forward(x, hidden=True)``: (logits, [the hidden layer (M, B, width)]), for hint schedules."""

    def __init__(self, n: int, num_classes: int, width: int, generators: Sequence[torch.Generator]):
        super().__init__()
        M = len(generators)
        self.w1, self.b1 = nn.Parameter(torch.empty(M, n, width)), nn.Parameter(torch.zeros(M, 1, width))
        self.w2 = nn.Parameter(torch.empty(M, width, num_classes))
        self.b2 = nn.Parameter(torch.zeros(M, 1, num_classes))
        with torch.no_grad():
            for m, gen in enumerate(generators):
                self.w1[m].uniform_(-1 / math.sqrt(n), 1 / math.sqrt(n), generator=gen)
                self.w2[m].uniform_(-1 / math.sqrt(width), 1 / math.sqrt(width), generator=gen)

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.w1.shape[-1]]

    def forward(self, x: torch.Tensor, hidden: bool = False):
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.w1.shape[0], -1, -1)  # (M, B, n)
        h = torch.tanh(torch.baddbmm(self.b1, x, self.w1))  # (M, B, width)
        logits = torch.baddbmm(self.b2, h, self.w2)  # (M, B, C)
        return (logits, [h]) if hidden else logits
