"""ReLU MLPs for sparse parity (paper §1: one hidden layer; teacher wide, student narrow).

:class:`MLP` holds a *stack* of ``num_models`` independent networks with the same shape and evaluates them
together with batched matrix products, so a sweep of students (schedules x seeds) trains in one process at
the cost of one larger matmul per layer instead of one Python step per student. A stack of one is an
ordinary MLP. Model m of a stack is initialized from its own generator, exactly as a single model built from
that generator would be, so stacking changes nothing but speed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from progdistill.core.config import check, check_positive_int, register
from progdistill.distill.losses import soft_cross_entropy_from_log_probs, soft_cross_entropy_grad, zero_targets

NARROW_OUTPUT, NARROW_ROWS = 8, 256  # when forward() computes the last layer as a transposed product


@register("model")
@dataclass(frozen=True)
class MLPConfig:
    """``depth`` hidden ReLU layers of ``width`` units each."""

    kind: ClassVar[str] = "mlp"
    stackable: ClassVar[bool] = True  # many models train together as one stack (progdistill.train.loop.fit)

    width: int = 100
    depth: int = 1

    def __post_init__(self):
        check_positive_int("model.width", self.width)
        check_positive_int("model.depth", self.depth)

    def build(self, in_features: int, num_classes: int, generators: Sequence[torch.Generator]) -> MLP:
        return MLP(in_features, num_classes, self, generators)

    def estimated_bytes(
        self, input_size: int, num_classes: int, batch_size: int, stack: int
    ) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Bytes a stack of ``stack`` models uses in training, computed from the sizes alone (nothing is built):
        ``"weights"``: float32 weights, gradients and up to two optimizer moments (4 copies); ``"activations"``:
        a step's float32 layer outputs and their gradients for ``batch_size`` examples (3 per unit); ``"forward"``: a
        forward pass without gradients (evaluation, teacher logits: two layers' outputs at a time). Each entry
        also names the fields that size it (:func:`progdistill.experiment.estimate_memory`)."""
        dims = [input_size] + [self.width] * self.depth + [num_classes]
        params = sum(d_in * d_out + d_out for d_in, d_out in itertools.pairwise(dims))
        units = sum(dims[1:])
        return {
            "weights": (4 * 4 * stack * params, ("width", "depth")),
            "activations": (3 * 4 * stack * batch_size * units, ("width", "depth")),
            "forward": (2 * 4 * stack * batch_size * max(dims[1:]), ("width",)),
        }


class MLP(nn.Module):
    """A stack of M independent ReLU MLPs.

    Parameters: ``weights[i]`` of shape (M, d_in, d_out) and ``biases[i]`` of shape (M, 1, d_out).
    Initialization: uniform on [-1/sqrt(d_in), 1/sqrt(d_in)] for weights and biases (PyTorch's
    ``nn.Linear`` default), model m drawn from ``generators[m]``.
    """

    # Declares :meth:`sgd_step`: the training loop may take plain SGD steps with it instead of autograd.
    hand_written_sgd: ClassVar[bool] = True

    def __init__(self, in_features: int, num_classes: int, config: MLPConfig, generators: Sequence[torch.Generator]):
        super().__init__()
        check(len(generators) >= 1, "generators", len(generators), "need one generator per model")
        self.config = config
        self.num_models = len(generators)
        dims = [in_features] + [config.width] * config.depth + [num_classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(dims):
            self.weights.append(nn.Parameter(torch.empty(self.num_models, d_in, d_out)))
            self.biases.append(nn.Parameter(torch.empty(self.num_models, 1, d_out)))
        with torch.no_grad():
            for m, gen in enumerate(generators):
                for w, b in zip(self.weights, self.biases):
                    bound = 1.0 / math.sqrt(w.shape[1])
                    w[m].uniform_(-bound, bound, generator=gen)
                    b[m].uniform_(-bound, bound, generator=gen)

    def _layers(self, x: torch.Tensor):
        """The layers' (weight, bias) and the input in the form the matrix products take: for a stack of one
        (the teacher, a lone student) 2-D views (d_in, d_out), (1, d_out) and x (B, n) for ``torch.addmm``
        (~1.5x faster than ``baddbmm`` with a batch of one on CPU); else the (M, ...) tensors for ``baddbmm``
        with x (M, B, n). The views share storage with the parameters, so in-place updates reach them."""
        affine, matmul = (torch.addmm, torch.mm) if self.num_models == 1 else (torch.baddbmm, torch.bmm)
        return self._parameters_as_taken(), self._inputs_as_taken(x), affine, matmul

    def _parameters_as_taken(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.num_models == 1:
            return [(w[0], b[0]) for w, b in zip(self.weights, self.biases)]
        return list(zip(self.weights, self.biases))

    def _inputs_as_taken(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_models == 1:
            return x[0] if x.dim() == 3 else x
        return x.unsqueeze(0).expand(self.num_models, -1, -1) if x.dim() == 2 else x

    @property
    def hidden_sizes(self) -> list[int]:
        """The width of each hidden layer (what ``forward(x, hidden=True)`` returns per layer)."""
        return [w.shape[-1] for w in self.weights[:-1]]

    def forward(self, x: torch.Tensor, hidden: bool = False):
        """x: (B, n) shared by all models, or (M, B, n) one batch per model -> logits (M, B, C); with
        ``hidden``, (logits, [each hidden layer's ReLU output (M, B, width)])."""
        layers, h, affine, _ = self._layers(x)
        last = len(layers) - 1
        states = []
        for i, (w, b) in enumerate(layers):
            if i == last and w.shape[-1] <= NARROW_OUTPUT and h.shape[-2] >= NARROW_ROWS:
                # A few output classes and many rows (teacher targets, evaluation): (w^T h^T)^T is the same
                # product, ~2x faster on CPU than h w with its 2-column right factor.
                h = affine(b.transpose(-1, -2), w.transpose(-1, -2), h.transpose(-1, -2)).transpose(-1, -2)
                h = h.contiguous()
            else:
                h = affine(b, h, w)  # (M, B, d_out), or (B, d_out) for a stack of one
            if i < last:  # in place when no graph is recorded (teacher targets, evaluation): less memory traffic
                h = torch.relu(h) if torch.is_grad_enabled() else h.relu_()
                states.append(h if h.dim() == 3 else h.unsqueeze(0))
        logits = h if h.dim() == 3 else h.unsqueeze(0)
        return (logits, states) if hidden else logits

    @torch.no_grad()
    def sgd_step(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        lr: float,
        zero: torch.Tensor | None = None,
        ignored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One plain SGD step (no momentum, no weight decay) on sum_m mean_b CE(target_mb, softmax(logits_mb)),
        with the gradients written out by hand instead of autograd (the same update within float32 rounding,
        ~2x faster per step at batch 32 because no graph is recorded): :meth:`sgd_steps` with one step.

        x: (B, n) shared or (M, B, n); target: (M, B, C) class distributions (one-hot labels, a teacher's
        softmax, or a mixture of both; their cross-entropy has gradient softmax(logits) - target). A row of
        zeros (an ignored position) gets no gradient, and a class the target gives 0 adds nothing to the loss
        whatever its logit (the zero-probability rule of :mod:`progdistill.distill.losses`). ``zero`` and
        ``ignored``: ``target``'s :func:`~progdistill.distill.losses.zero_targets`, when computed once per block.
        Returns the per-example cross-entropy before the step, (M, B).
        """
        zero_steps = None if zero is None else zero[None]
        ignored_steps = None if ignored is None else ignored[None]
        return self.sgd_steps([x], target[None], [lr], zero_steps, ignored_steps, per_example=True)[0]

    @torch.no_grad()
    def sgd_steps(
        self,
        x_steps,
        targets: torch.Tensor,
        lrs: Sequence[float],
        zero: torch.Tensor | None = None,
        ignored: torch.Tensor | None = None,
        per_example: bool = False,
    ) -> torch.Tensor:
        """``len(lrs)`` plain SGD steps in a row, step i on inputs ``x_steps[i]`` ((B, n) or (M, B, n)), targets
        ``targets[i]`` ((L, M, B, C) in all) at learning rate ``lrs[i]``: :meth:`sgd_step` L times, without
        its per-step set-up. ``zero`` and ``ignored``: :func:`~progdistill.distill.losses.zero_targets` of
        ``targets``. Returns each step's mean cross-entropy per model before the step, (L, M), unchecked (with
        ``per_example``, each example's, (L, M, B)).

        For the block the last layer's weight is held transposed, (M, C, d) contiguous, and written back at the
        end: with a few output classes the products with it run ~5-25x faster on CPU in that layout (MKL's
        kernels for a 2-column right factor are slow), about a third of a step of the width-2000 teacher."""
        L, M = targets.shape[:2]
        if zero is None:
            zero, ignored = zero_targets(targets)
        if M == 1:  # a stack of one steps on 2-D tensors: (B, C)
            targets, zero, ignored = targets[:, 0], zero[:, 0], None if ignored is None else ignored[:, 0]
        # the per-step views made at once (one call, not three indexing ops a step)
        step_targets = targets.unbind(0)
        step_ignored = [None] * L if ignored is None else ignored.unbind(0)
        # Each step writes its log-probabilities; the block's losses come from them at the end, in one pass
        # instead of four small ops a step (the same floats: elementwise, then a sum over the classes).
        logps = torch.empty(targets.shape, device=targets.device)
        step_logps = logps.unbind(0)
        layers = self._parameters_as_taken()
        with self._last_layer_transposed() as last:
            for i, lr in enumerate(lrs):
                h = self._inputs_as_taken(x_steps[i])
                self._sgd_step(layers, last, h, step_targets[i], step_ignored[i], lr, step_logps[i])
        losses = soft_cross_entropy_from_log_probs(logps, targets, zero)  # (L, M, B), or (L, B) for M == 1
        losses = losses.unsqueeze(1) if M == 1 else losses
        return losses if per_example else losses.mean(dim=-1)

    @contextlib.contextmanager
    def _last_layer_transposed(self):
        """The last layer's weight as a contiguous transposed copy, (M, C, d) (a stack of one: (C, d)), written
        back into the parameter on exit."""
        weight = self.weights[-1] if self.num_models > 1 else self.weights[-1][0]
        last = weight.detach().transpose(-1, -2).contiguous()
        try:
            yield last
        finally:
            with torch.no_grad():
                weight.copy_(last.transpose(-1, -2))

    @staticmethod
    def _sgd_step(layers, last: torch.Tensor, h: torch.Tensor, target, ignored, lr: float, logp_out) -> None:
        """One step on inputs h ((B, n) for a stack of one, else (M, B, n)) with targets (M, B, C) (a stack of
        one: (B, C)), the last layer's weight given transposed (``last``, (M, C, d)); writes the log softmax of
        the logits before the step, the shape of ``target``, to ``logp_out``."""
        B = target.shape[-2]
        stacked = h.dim() == 3
        affine, matmul = (torch.baddbmm, torch.bmm) if stacked else (torch.addmm, torch.mm)
        acts = [h]  # the input of each layer, (M, B, d_in) or (B, d_in); for i > 0 the ReLU output of layer i - 1
        for w, b in layers[:-1]:
            acts.append(affine(b, acts[-1], w).relu_())
        b_last = layers[-1][1]
        # logits^T = b^T + w^T h^T, (M, C, B): the same product in the fast layout, viewed back as (M, B, C)
        logits = affine(b_last.transpose(-1, -2), last, acts[-1].transpose(-1, -2)).transpose(-1, -2)
        # grad (M, B, C) is B * d(sum_m mean_b loss) / d logits, the 1 / B folded into the step
        grad, _ = soft_cross_entropy_grad(logits, target, ignored, logp_out)
        step = -lr / B
        for i in range(len(layers) - 1, -1, -1):
            w, b = layers[i]
            is_last = i == len(layers) - 1
            # The gradient flowing into layer i - 1 uses w before its update; ReLU's backward keeps the entries
            # whose output was positive (aten's fused threshold_backward: one pass instead of compare + mul).
            if i:
                into = matmul(grad, last) if is_last else matmul(grad, w.transpose(-1, -2))  # (M, B, d_in)
                below = torch.ops.aten.threshold_backward(into, acts[i], 0)
            if is_last:  # w^T -= lr/B * grad^T acts, in place
                (last.baddbmm_ if stacked else last.addmm_)(grad.transpose(-1, -2), acts[i], alpha=step)
            else:  # w -= lr/B * acts^T grad, in place
                (w.baddbmm_ if stacked else w.addmm_)(acts[i].transpose(-1, -2), grad, alpha=step)
            b.add_(grad.sum(dim=-2, keepdim=True), alpha=step)
            if i:
                grad = below
