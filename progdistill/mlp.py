"""ReLU MLPs for sparse parity (PAPER.md section 1: one hidden layer; teacher wide, student narrow).

:class:`MLP` holds a *stack* of ``num_models`` independent networks with the same shape and evaluates them
together with batched matrix products, so a sweep of students (schedules x seeds) trains in one process at
the cost of one larger matmul per layer instead of one Python step per student. A stack of one is an
ordinary MLP. Model m of a stack is initialized from its own generator, exactly as a single model built from
that generator would be, so stacking changes nothing but speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from .config import check, check_positive_int, register


@register("model")
@dataclass(frozen=True)
class MLPConfig:
    """``depth`` hidden ReLU layers of ``width`` units each."""

    kind: ClassVar[str] = "mlp"
    stackable: ClassVar[bool] = True  # many models train together as one stack (progdistill.train.fit)

    width: int = 100
    depth: int = 1

    def __post_init__(self):
        check_positive_int("model.width", self.width)
        check_positive_int("model.depth", self.depth)

    def build(self, in_features: int, num_classes: int, generators: Sequence[torch.Generator]) -> "MLP":
        return MLP(in_features, num_classes, self, generators)


class MLP(nn.Module):
    """A stack of M independent ReLU MLPs.

    Parameters: ``weights[i]`` of shape (M, d_in, d_out) and ``biases[i]`` of shape (M, 1, d_out).
    Initialization: uniform on [-1/sqrt(d_in), 1/sqrt(d_in)] for weights and biases (PyTorch's
    ``nn.Linear`` default), model m drawn from ``generators[m]``.
    """

    def __init__(self, in_features: int, num_classes: int, config: MLPConfig,
                 generators: Sequence[torch.Generator]):
        super().__init__()
        check(len(generators) >= 1, "generators", len(generators), "need one generator per model")
        self.config = config
        self.num_models = len(generators)
        dims = [in_features] + [config.width] * config.depth + [num_classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.weights.append(nn.Parameter(torch.empty(self.num_models, d_in, d_out)))
            self.biases.append(nn.Parameter(torch.empty(self.num_models, 1, d_out)))
        with torch.no_grad():
            for m, gen in enumerate(generators):
                for w, b in zip(self.weights, self.biases):
                    bound = 1.0 / math.sqrt(w.shape[1])
                    w[m].uniform_(-bound, bound, generator=gen)
                    b[m].uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n) shared by all models, or (M, B, n) one batch per model -> logits (M, B, C)."""
        h = x.unsqueeze(0).expand(self.num_models, -1, -1) if x.dim() == 2 else x  # (M, B, n)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)  # (M, B, d_out)
            if i < last:  # in place when no graph is recorded (teacher targets, evaluation): less memory traffic
                h = torch.relu(h) if torch.is_grad_enabled() else h.relu_()
        return h

    @torch.no_grad()
    def sgd_step(self, x: torch.Tensor, target: torch.Tensor, lr: float) -> torch.Tensor:
        """One plain SGD step (no momentum, no weight decay) on sum_m mean_b CE(target_mb, softmax(logits_mb)),
        with the gradients written out by hand instead of autograd (the same update, ~2x faster per step at
        batch 32 because no graph is recorded).

        x: (B, n) shared or (M, B, n); target: (M, B, C) class distributions (one-hot labels, a teacher's
        softmax, or a mixture of both; their cross-entropy has gradient softmax(logits) - target).
        Returns the per-example cross-entropy before the step, (M, B).
        """
        B = target.shape[1]
        if x.dim() == 2:
            x = x.unsqueeze(0) if self.num_models == 1 else x.unsqueeze(0).expand(self.num_models, -1, -1)
        acts = [x]  # the input of each layer, (M, B, d_in)
        active = []  # ReLU masks of the hidden layers
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            pre = torch.baddbmm(b, acts[-1], w)  # (M, B, d_out)
            if i < last:
                active.append(pre > 0)
                acts.append(pre.relu_())
        logp = torch.log_softmax(pre, dim=-1)  # (M, B, C)
        loss = (target * logp).sum(dim=-1)  # (M, B), negated below
        grad = logp.exp().sub_(target)  # B * d(sum_m mean_b loss) / d logits; 1 / B is folded into the step
        grads_w, grads_b = [None] * len(self.weights), [None] * len(self.weights)
        for i in range(last, -1, -1):
            grads_w[i] = torch.bmm(acts[i].transpose(1, 2), grad)  # (M, d_in, d_out)
            grads_b[i] = grad.sum(dim=1, keepdim=True)  # (M, 1, d_out)
            if i > 0:
                grad = torch.bmm(grad, self.weights[i].transpose(1, 2)).mul_(active[i - 1])  # (M, B, d_in)
        torch._foreach_add_(list(self.weights) + list(self.biases), grads_w + grads_b, alpha=-lr / B)
        return loss.neg_()

