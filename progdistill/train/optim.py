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
