"""One optimizer step of each kind: the stacked one-label step and the per-position token step.

Each step function holds a whole step -- zero_grad, forward, loss, backward, the non-finite check and the
optimizer step -- and returns what the loop tallies (:class:`StepResult`). The loop
(:mod:`progdistill.train.loop`) decides the teachers of a block, samples its data, tallies the losses, steps the
learning-rate schedule, records, saves checkpoints and resumes.

- :func:`stack_step`: a stack of M models (:class:`progdistill.models.mlp.MLP`) on one-label inputs, against the
  block's objective (:class:`StackObjective`: the fused forward-KL form where it applies, else the weighted
  objective; hint losses for the models in a hint phase);
- :func:`token_step`: one model on per-position targets, in micro-batches.

The fast form of :func:`stack_step` for plain SGD, a block of steps with the model's hand-written gradients
(:meth:`progdistill.models.mlp.MLP.sgd_steps`, no autograd), is called by the loop directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from progdistill.core.distributed import all_reduce_mean, all_true, rank_world
from progdistill.core.settings import DistillationConfig, TrainConfig
from progdistill.distill.losses import (
    IGNORE_INDEX,
    cross_entropy,
    distillation_loss,
    soft_cross_entropy,
    soft_targets,
    weighted_distillation_loss,
)
from progdistill.tasks.base import Batch


@dataclass
class StepContext:
    """What every step of one :func:`progdistill.train.loop.fit` needs: ``net`` the model as called (itself, or its
    DDP / compiled wrapper), its optimizer (None on the hand-written SGD path, which takes no autograd step),
    ``params`` (the model's parameters, whose gradients ``on_non_finite="skip"`` checks), the training config,
    the autocast context (bf16 or disabled) and the device."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer | None
    params: list[torch.nn.Parameter]
    train: TrainConfig
    autocast: Any
    device: torch.device

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer of an autograd step; RuntimeError on the hand-written path, which has none."""
        if self.opt is None:
            raise RuntimeError("an autograd step of a loop on the hand-written SGD path, which has no optimizer")
        return self.opt


@dataclass
class StepResult:
    """A step's training loss (M,) per model (a float for a token step) and, when it was not taken, the
    non-finite quantity ``bad`` ("training loss" or "gradient") and the models whose loss was non-finite
    (``culprits``, indices; empty: all of them)."""

    loss: Any
    bad: str | None = None
    culprits: list[int] | None = None


def grads_finite(params, device) -> bool:
    """Whether every gradient is finite, on every process (one sync). No gradient at all (a step without a
    supervised token) is finite."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return all_true(not sums or bool(torch.isfinite(torch.stack(sums)).all()), device)


@dataclass
class StackObjective:
    """The objective of a block of L steps of a stack of M models, computed once per block: labels (L, M, B);
    ``teacher_logits`` (L, M, B, C) or None when no model has a teacher in the block; ``temperature`` a number
    or (L, M); ``ce_weight`` and ``kd_weight`` (L, M, 1) (:func:`progdistill.distill.losses.mixture_weights`).
    ``fused``: the fused forward-KL form (:func:`progdistill.distill.losses.soft_targets`), with mixture
    ``targets`` (L, M, B, C) and their entropy ``corrections`` (L, M) when a teacher is in use, else the
    weighted objective (:func:`progdistill.distill.losses.weighted_distillation_loss`)."""

    labels: torch.Tensor
    teacher_logits: torch.Tensor | None
    temperature: Any
    ce_weight: torch.Tensor
    kd_weight: torch.Tensor
    distillation: DistillationConfig
    fused: bool
    targets: torch.Tensor | None = None
    corrections: torch.Tensor | None = None

    def __post_init__(self):
        if self.teacher_logits is not None and self.fused:
            temperature = self.temperature
            per_position = temperature[..., None] if torch.is_tensor(temperature) else temperature  # (L, M, 1)
            self.targets, correction = soft_targets(
                self.teacher_logits, self.labels, per_position, self.ce_weight, self.kd_weight
            )
            self.corrections = correction.mean(dim=2)

    def loss(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Step i's per-example objective (M, B) of the stack's logits (M, B, C); the fused form reports the
        objective plus the block's correction of that step (the loop takes it back from the tally)."""
        if self.fused:
            return soft_cross_entropy(logits, self.labels[i] if self.targets is None else self.targets[i])
        d = self.distillation
        assert self.teacher_logits is not None  # not fused: a teacher's logits to distil from
        step_temperature = self.temperature[i][:, None] if torch.is_tensor(self.temperature) else self.temperature
        return weighted_distillation_loss(
            logits,
            self.teacher_logits[i],
            self.labels[i],
            d.loss,
            step_temperature,
            self.ce_weight[i],
            self.kd_weight[i],
            **d.loss_options(),
        )


def stack_step(
    ctx: StepContext, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor], hints: Callable | None = None
) -> StepResult:
    """One optimizer step of a stack of M models on inputs ``x`` ((B, n) shared by all models, or (M, B, n)).

    ``loss(logits)``: the step's per-example objective (M, B) of the logits (M, B, C) (:meth:`StackObjective.loss`);
    ``hints(per_example, hidden)``: in a hint phase, the rows of the hint models replaced by their hint loss
    (:meth:`progdistill.distill.hints.Hints.replace`; the forward then also returns the hidden layers). The
    gradient is that of the sum over models of each model's mean loss; with a non-finite loss (or gradient, when
    ``on_non_finite="skip"``) no update is made."""
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.autocast:
        if hints is None:
            logits, hidden = ctx.net(x), None  # (M, B, C)
        else:
            logits, hidden = ctx.net(x, hidden=True)  # (M, B, C), [(M, B, width)]
    per_example = loss(logits)  # (M, B)
    if hints is not None and hidden is not None:  # the hint phase: these models regress the teacher's hidden layer
        per_example = hints(per_example, hidden)
    total = per_example.sum() / per_example.shape[1]  # sum over models of each model's mean loss
    bad = None if all_true(bool(torch.isfinite(total)), ctx.device) else "training loss"
    if bad is None:
        total.backward()
        # In "stop" mode a non-finite gradient is caught one step later, as a non-finite loss; the per-step
        # gradient check (a sync and a few ops) is paid only where a step may be skipped.
        if ctx.train.on_non_finite == "skip" and not grads_finite(ctx.params, ctx.device):
            bad = "gradient"
    step_loss = per_example.detach().mean(dim=1)  # (M,)
    if bad is not None:
        return StepResult(step_loss, bad, [m for m, row in enumerate(per_example) if not torch.isfinite(row).all()])
    ctx.optimizer.step()
    return StepResult(step_loss)


def token_step(
    ctx: StepContext, batch: Batch, teacher: torch.nn.Module | None, distillation: DistillationConfig
) -> StepResult:
    """One optimizer step of a model on a token task (targets per position); the loss is a float.

    The batch (:class:`progdistill.tasks.base.Batch`) is split into ``train.grad_accumulation`` micro-batches,
    and every micro-batch's summed per-token loss is divided by the number of supervised tokens of the *whole*
    step (over all processes), so the accumulated gradient is that of the mean per-token loss of the step,
    however the tokens fall into micro-batches. Loss per supervised token: CE on the true token without a
    teacher, else ``alpha * CE + (1 - alpha) * D(teacher || student)``
    (:func:`progdistill.distill.losses.distillation_loss`) at ``distillation.temperature``."""
    ctx.optimizer.zero_grad(set_to_none=True)
    selected = batch.targets != IGNORE_INDEX  # (B, L)
    total = float(all_reduce_mean(selected.sum().float().reshape(1))[0])  # mean over processes
    total = max(total, 1.0)
    value = 0.0
    data_parallel = rank_world()[1] > 1
    for index in torch.arange(batch.inputs.shape[0]).chunk(ctx.train.grad_accumulation):
        part, mask = batch.rows(index), selected[index]
        if not mask.any() and not data_parallel:  # nothing to learn; under DDP every process must still
            continue  # run the backward pass (its gradient all-reduce) below
        with ctx.autocast:
            logits = ctx.net(*part.model_inputs)[mask]  # (N, V)
        target = part.targets[mask]
        if teacher is None:
            per_token = cross_entropy(logits, target, reduction="none")
        else:
            with torch.no_grad():
                teacher_logits = teacher(*part.model_inputs)[mask]
            per_token = distillation_loss(
                logits,
                teacher_logits,
                target,
                distillation.loss,
                distillation.temperature,
                distillation.alpha,
                reduction="none",
                **distillation.loss_options(),
            )
        loss = per_token.sum() / total
        if all_true(bool(torch.isfinite(loss)), loss.device):  # one process's inf skips it on all of them
            loss.backward()
        value += float(loss.detach())
    bad = None if all_true(bool(math.isfinite(value)), ctx.device) else "training loss"
    if bad is None and ctx.train.on_non_finite == "skip" and not grads_finite(ctx.params, ctx.device):
        bad = "gradient"
    if bad is None:
        ctx.optimizer.step()
    return StepResult(value, bad)
