"""Evaluation on a task's held-out batches during training, and the progress line that reports it.

Both evaluators take a model and the task's ``eval_batches()`` (:class:`progdistill.tasks.base.Batch`) and
return ``(eval_loss, eval_accuracy)``, tensors of shape (M,) over the M models of a stack (M = 1 for token
tasks): mean cross-entropy in nats and accuracy, per example (:func:`evaluate_stack`) or per supervised
position (:func:`evaluate_tokens`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch

from progdistill.distill.losses import IGNORE_INDEX, cross_entropy
from progdistill.tasks.base import Batch

EVAL_CHUNK = 8192
PROGRESS_LOG_SECONDS = 60.0


@torch.no_grad()
def evaluate_stack(model: torch.nn.Module, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) and accuracy of every model of a stack on one-label batches (inputs (N, n),
    targets (N,)), in chunks of ``EVAL_CHUNK`` rows: two tensors of shape (M,)."""
    was_training = model.training
    model.eval()
    loss_sum: torch.Tensor | None = None  # (M,)
    correct: torch.Tensor | None = None  # (M,)
    count = 0
    for batch in batches:
        x, y = batch.inputs, batch.targets
        for i in range(0, len(x), EVAL_CHUNK):
            logits = model(x[i : i + EVAL_CHUNK])  # (M, b, C)
            target = y[i : i + EVAL_CHUNK].expand(logits.shape[0], -1)
            losses = cross_entropy(logits, target, reduction="none").sum(dim=1)
            hits = (logits.argmax(-1) == target).float().sum(dim=1)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            correct = hits if correct is None else correct + hits
        count += len(x)
    model.train(was_training)
    if loss_sum is None or correct is None:
        raise ValueError("evaluate_stack: the evaluation batches hold no rows")
    return loss_sum / count, correct / count


@torch.no_grad()
def evaluate_tokens(
    model: torch.nn.Module, batches: Sequence[Batch], groups: dict[str, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats per supervised token) and accuracy at the supervised positions of
    ``batches``, each as a tensor of shape (1,) like :func:`evaluate_stack`. When ``groups`` is a dict and the
    batches carry position groups (``Batch.groups``), it receives ``eval_<name>_loss`` and
    ``eval_<name>_accuracy`` of every group, over its supervised positions (a group with none is left out)."""
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    split: dict[str, list[float]] = {}  # group -> [loss sum, correct, count]
    for batch in batches:
        selected = batch.targets != IGNORE_INDEX
        logits = model(*batch.model_inputs)  # (B, L, V)
        losses = cross_entropy(logits[selected], batch.targets[selected], reduction="none")  # (N,)
        hits = logits[selected].argmax(-1) == batch.targets[selected]  # (N,)
        loss_sum += float(losses.sum())
        correct += float(hits.sum())
        count += int(selected.sum())
        if groups is not None and batch.groups is not None:
            for name, where in batch.groups.items():
                inside = where[selected]  # (N,) the group's positions among the supervised ones
                acc = split.setdefault(name, [0.0, 0.0, 0.0])
                acc[0] += float(losses[inside].sum())
                acc[1] += float(hits[inside].sum())
                acc[2] += int(inside.sum())
    model.train(was_training)
    if groups is not None:
        for name, (g_loss, g_correct, g_count) in split.items():
            if g_count:
                groups[f"eval_{name}_loss"] = g_loss / g_count
                groups[f"eval_{name}_accuracy"] = g_correct / g_count
    count = max(count, 1)
    return torch.tensor([loss_sum / count]), torch.tensor([correct / count])


class ProgressLog:
    """Where no progress bar shows (stderr is not a terminal: a log file, a batch job), a line on stderr per
    evaluation, at most every ``PROGRESS_LOG_SECONDS`` and always at the last step: the step and the
    evaluation (its range over the models of a stack)."""

    def __init__(self, desc: str, steps: int, enabled: bool):
        self.desc, self.steps, self.enabled = desc, steps, enabled
        self.last: float | None = None  # when the last line was written (time.monotonic)

    def __call__(self, step: int, eval_loss: torch.Tensor, eval_acc: torch.Tensor) -> None:
        now = time.monotonic()
        if not self.enabled or (step < self.steps and self.last is not None and now - self.last < PROGRESS_LOG_SECONDS):
            return
        self.last = now

        def span(t):
            return f"{float(t.min()):.4f}" + ("" if len(t) == 1 else f"-{float(t.max()):.4f}")

        print(
            f"{self.desc}: step {step}/{self.steps}, eval_loss {span(eval_loss)}, eval_accuracy {span(eval_acc)}",
            file=sys.stderr,
            flush=True,
        )
