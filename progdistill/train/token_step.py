"""One optimizer step of a token task (targets per position): micro-batches normalized by the step's
supervised tokens, so gradient accumulation and data parallelism do not change the objective."""

from __future__ import annotations

import torch

from progdistill.core.config import DistillationConfig, TrainConfig
from progdistill.core.distributed import all_reduce_mean, all_true, rank_world
from progdistill.distill.losses import IGNORE_INDEX, cross_entropy, distillation_loss
from progdistill.tasks.base import Batch


def train_token_step(net: torch.nn.Module, batch: Batch, teacher: torch.nn.Module | None, train: TrainConfig,
                     distillation: DistillationConfig, autocast) -> float:
    """Forward and backward passes of one optimizer step of a token task; returns the step's loss (float).

    The batch (:class:`progdistill.tasks.base.Batch`) is split into ``train.grad_accumulation`` micro-batches,
    and every micro-batch's summed per-token loss is divided by the number of supervised tokens of the *whole*
    step (over all processes), so the accumulated gradient is that of the mean per-token loss of the step,
    however the tokens fall into micro-batches. Loss per supervised token: CE on the true token without a
    teacher, else ``alpha * CE + (1 - alpha) * D(teacher || student)``
    (:func:`progdistill.distill.losses.distillation_loss`)."""
    selected = batch.targets != IGNORE_INDEX  # (B, L)
    total = float(all_reduce_mean(selected.sum().float().reshape(1))[0])  # mean over processes
    total = max(total, 1.0)
    value = 0.0
    data_parallel = rank_world()[1] > 1
    for index in torch.arange(batch.inputs.shape[0]).chunk(train.grad_accumulation):
        part, mask = batch.rows(index), selected[index]
        if not mask.any() and not data_parallel:  # nothing to learn; under DDP every process must still
            continue                                # run the backward pass (its gradient all-reduce) below
        with autocast:
            logits = net(*part.model_inputs)[mask]  # (N, V)
        target = part.targets[mask]
        if teacher is None:
            per_token = cross_entropy(logits, target, reduction="none")
        else:
            with torch.no_grad():
                teacher_logits = teacher(*part.model_inputs)[mask]
            per_token = distillation_loss(logits, teacher_logits, target, distillation.loss,
                                          distillation.temperature, distillation.alpha, reduction="none",
                                          **distillation.loss_options())
        loss = per_token.sum() / total
        if all_true(bool(torch.isfinite(loss)), loss.device):  # one process's inf skips it on all of them
            loss.backward()
        value += float(loss.detach())
    return value
