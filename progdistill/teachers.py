"""Teacher checkpoints during student training: loaded on demand, and their logits for a block of steps.

A student at step t learns from the checkpoint its schedule names (:mod:`progdistill.schedules`);
:class:`TeacherPool` keeps the checkpoints in use loaded, and :func:`block_teacher_logits` computes the
teacher logits of a whole block of steps of a stack in one large batch per (data stream, checkpoint) instead
of once per step.
"""

from __future__ import annotations

from typing import Callable

import torch

TEACHER_CHUNK = 512


class TeacherPool:
    """Frozen teacher checkpoints loaded on demand from a trajectory.

    ``trajectory``: a :class:`progdistill.trajectory.Trajectory` or :class:`progdistill.hf.HFTrajectory` (anything
    with ``steps`` and ``load_model(step, build)``; ``verify()`` for :meth:`verify`); ``build`` makes an untrained
    teacher to load weights into. A checkpoint is loaded once when a schedule first switches to it and kept while
    a schedule uses it; its model is in eval mode, with ``requires_grad`` off, and never in an optimizer. ``loads``
    counts checkpoint loads.
    """

    def __init__(self, trajectory, build: Callable[[], torch.nn.Module] | None, device: torch.device):
        self.trajectory = trajectory
        self.build = build
        self.device = device
        self.models: dict[int, torch.nn.Module] = {}
        self.loads = 0

    def get(self, step: int) -> torch.nn.Module:
        if step not in self.models:
            model = self.trajectory.load_model(step, self.build)
            model.to(self.device).eval().requires_grad_(False)
            self.models[step] = model
            self.loads += 1
        return self.models[step]

    def verify(self) -> None:
        """Check every checkpoint file of the trajectory before training (``trajectory.verify()``: its sha256
        against the manifest, computed once per file), so that a missing or corrupted checkpoint stops a run
        before its first step rather than when a schedule reaches it. Raises
        :class:`progdistill.trajectory.TrajectoryError` naming the file and step."""
        self.trajectory.verify()

    def retain(self, steps: set[int]) -> None:
        """Drop the checkpoints no schedule uses any more."""
        for step in list(self.models):
            if step not in steps:
                del self.models[step]


def block_teacher_logits(plan: list[list[int | None]], x_block: torch.Tensor, seed_index: torch.Tensor,
                         teachers: TeacherPool | None, num_classes: int) -> torch.Tensor | None:
    """Teacher logits for one block of steps of a stack, computed in one batch per (data stream, checkpoint).

    plan: (L, M) checkpoint per step and model (None = no teacher); x_block: (S, L, B, n) inputs of the S data
    streams; seed_index: (M,) the stream of each model. Returns float32 logits (L, M, B, C), zero where the plan
    has no teacher, or None when no model uses a teacher in the block.
    """
    if teachers is None or all(c is None for row in plan for c in row):
        return None
    L, M, B = len(plan), len(plan[0]), x_block.shape[2]
    logits = torch.zeros(L, M, B, num_classes, device=x_block.device)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, row in enumerate(plan):
        for m, c in enumerate(row):
            if c is not None:
                groups.setdefault((int(seed_index[m]), c), []).append((i, m))
    with torch.no_grad():
        for (s, c), cells in groups.items():
            rows = sorted({i for i, _ in cells})
            teacher, inputs = teachers.get(c), x_block[s, rows].reshape(len(rows) * B, -1)
            # Chunks of TEACHER_CHUNK rows keep a wide teacher's hidden activations in cache (~2x faster).
            out = torch.cat([teacher(inputs[j:j + TEACHER_CHUNK])[0] for j in range(0, len(inputs), TEACHER_CHUNK)])
            out = out.view(len(rows), B, num_classes).float()  # (rows, B, C)
            pos = {i: j for j, i in enumerate(rows)}
            steps_idx = torch.tensor([i for i, _ in cells])
            model_idx = torch.tensor([m for _, m in cells])
            logits[steps_idx, model_idx] = out[[pos[i] for i, _ in cells]]
    return logits
