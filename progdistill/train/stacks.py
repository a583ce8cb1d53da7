"""Helpers for a *stack* of models trained together (:class:`progdistill.train.loop.Training`): M models, from S
seeds' data streams, whose per-step values are (L, M) per block of L steps."""

from __future__ import annotations

import torch


class PerStepGather:
    """``x[i]`` of a block (S, L, B, n) as each model's inputs (M, B, n), indexed by step i."""

    def __init__(self, block: torch.Tensor, seed_index: torch.Tensor):
        self.block, self.seed_index = block, seed_index.to(block.device)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.block[:, i].index_select(0, self.seed_index)


def per_model_sum(values: torch.Tensor) -> torch.Tensor:
    """(L, M) -> (M,): each model's sum over the block's L steps, added up in the same order whatever M is (a
    sum over dim 0 vectorizes across models and rounds differently for different stack sizes), so a student
    trained in any stack -- one job per seed, a sweep grown by a seed -- reports the same training loss."""
    return values.t().contiguous().sum(dim=1)
