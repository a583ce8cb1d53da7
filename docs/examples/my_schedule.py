"""A schedule of your own: the teacher's whole trajectory stretched over the student's run.

At student step t of T it uses checkpoint number floor((t + 1) / T * K) of the K saved (clamped to the last), so
a student of any length walks every checkpoint, ahead of its point on the timeline (as ``progressive`` does).
Used by docs/extending.md: ``progdistill run CONFIG.json --import docs/examples/my_schedule.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from progdistill.core.config import ConfigError, register
from progdistill.distill.schedules import Schedule, TeacherSpec


@register("schedule")  # config.json names it as {"type": "stretched"}
@dataclass(frozen=True)  # schedules are hashable configs
class Stretched(Schedule):  # Schedule's defaults: needs a teacher, reads stored checkpoints, resolves to itself
    kind: ClassVar[str] = "stretched"

    @property
    def label(self) -> str:  # names its students: stretched-seed0, ...
        return "stretched"

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        """Called before training with the trajectory's checkpoint steps: refuse what cannot work."""
        if len(checkpoint_steps) < 2:
            raise ConfigError("schedule 'stretched' needs at least 2 teacher checkpoints")

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec | None:
        """The teacher at ``student_step`` of ``total_steps``: a TeacherSpec naming a checkpoint step (None:
        true labels only at this step)."""
        steps = sorted(checkpoint_steps)
        index = min(len(steps) - 1, (student_step + 1) * len(steps) // total_steps)
        return TeacherSpec(steps[index])
