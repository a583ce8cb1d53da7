"""Optimizers and learning-rate schedules of the training loop (:class:`progdistill.core.settings.OptimizerConfig`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from progdistill.core.settings import OptimizerConfig


def learning_rate_factor(cfg: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at step t: 1, or linear warmup then cosine decay to 0."""
    if cfg.lr_schedule == "constant":
        return lambda step: 1.0
    warmup = int(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(params, cfg: OptimizerConfig, total_steps: int):
    """The optimizer and its LambdaLR scheduler. Every update is elementwise, so the models of a stack are
    optimized independently of each other."""
    params = list(params)
    opt: torch.optim.Optimizer
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, learning_rate_factor(cfg, total_steps))


class PlainSGDSchedule:
    """The learning rate of plain SGD whose updates the model applies itself (:meth:`progdistill.models.mlp.MLP.
    sgd_steps`): ``cfg.lr`` times :func:`learning_rate_factor` at the step, the same floats torch's ``LambdaLR``
    over ``torch.optim.SGD`` gives, without building either (building a torch optimizer imports
    ``torch._dynamo``: ~1 s of CPU per process, a tenth of a 50,000-step parity-MLP teacher).

    ``lr``: the rate of the next step; :meth:`take` (the next ``n`` rates, advancing the schedule);
    ``state_dict`` / ``load_state_dict``: ``{"last_epoch": steps taken}``, and ``load_state_dict`` also reads
    a ``LambdaLR``'s state (its ``last_epoch``), so a run can resume across the two."""

    def __init__(self, cfg: OptimizerConfig, total_steps: int):
        self.base_lr, self.factor, self.last_epoch = cfg.lr, learning_rate_factor(cfg, total_steps), 0

    def rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based), as LambdaLR computes it."""
        return self.base_lr * self.factor(step)

    @property
    def lr(self) -> float:
        return self.rate(self.last_epoch)

    def take(self, n: int) -> list[float]:
        """The rates of the next ``n`` steps, in order; the schedule then stands ``n`` steps further on."""
        rates = [self.rate(t) for t in range(self.last_epoch, self.last_epoch + n)]
        self.last_epoch += n
        return rates

    def step(self) -> None:
        self.last_epoch += 1

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
