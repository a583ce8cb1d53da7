"""Distillation schedules: which teacher checkpoint a student learns from at each of its steps.

Each schedule is its own type and a pure mapping ``student step -> checkpoint step`` (or ``None`` for no
teacher), given the steps at which the teacher trajectory has checkpoints. Every schedule is a
:class:`Schedule` and answers for itself what callers need to know (whether it needs a teacher, whether it is
valid for an experiment and a trajectory, what it resolves to on a finished teacher), so a new schedule is one
class: ``resolve(trajectory)`` is the schedule to train with on that teacher (itself, except
:class:`TwoShotAuto`).

- :class:`CE`: no teacher; the student trains on true labels.
- :class:`OneShot`: the final checkpoint for the whole run.
- :class:`Progressive`: the student follows the teacher's timeline at ``speed`` (1 = the teacher's own pace).
- :class:`KShot`: an explicit list of (checkpoint step, number of student steps); 2-shot is a list of two.

What the training loop asks of a schedule is :meth:`teacher_at`: a :class:`TeacherSpec` (a checkpoint, and
optionally a temperature, a weight transform or a hint layer) per student step. The schedules here name a
checkpoint only; the curricula built from the final checkpoint alone are in :mod:`progdistill.distill.curricula`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from progdistill.core.config import ConfigError, check, check_positive_int, register, union_base, variants
from progdistill.distill.phases import NoTransitionError, detect_phases, detect_transition

FINAL = -1  # in a k-shot list: the teacher's final checkpoint
LOSS_MIN_RELATIVE_DROP = 0.1  # 2-shot-auto on eval_loss: the sharp drop is at least this share of the plateau


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher a student learns from at one step: checkpoint ``checkpoint`` of the trajectory, with

    - ``temperature``: the softmax temperature of its targets, instead of ``distillation.temperature`` (None: that);
    - ``transform``: a hashable weight transform applied to the checkpoint's weights before use (e.g. a point on a
      weight path, Gaussian noise; :mod:`progdistill.distill.curricula`), with ``apply(state_dict, pool)`` and
      ``describe()``; None for the checkpoint as saved;
    - ``hint_layer``: (student layer, teacher layer), hidden-layer indices (-1: the last): the student's layer
      regresses the teacher's through a learned projection instead of matching its outputs (FitNets); None for
      output distillation;
    - ``now``: for a teacher that trains alongside the student (co-training), the teacher step reached when the
      student takes this step; ``checkpoint`` is then the step whose weights are used (``now`` minus the lag).

    Specs are hashable: one block of steps computes the teacher's outputs once per distinct spec."""

    checkpoint: int
    temperature: float | None = None
    transform: Any = None
    hint_layer: tuple[int, int] | None = None
    now: int | None = None

    def describe(self) -> dict[str, Any]:
        """What a metrics record says about this teacher besides ``teacher_checkpoint``."""
        out = {} if self.temperature is None else {"teacher_temperature": self.temperature}
        if self.transform is not None:
            out.update(self.transform.describe())
        if self.hint_layer is not None:
            out["teacher_hint_layer"] = self.hint_layer[1]
        return out


def teacher_temperature(spec: TeacherSpec | None, default: float) -> float:
    """The softmax temperature of the teacher's targets at a step with teacher ``spec``: the spec's own (e.g. a
    temperature curriculum's), else ``default`` (``distillation.temperature``). Every form of a step (stacked,
    per position) takes its temperature from here."""
    return default if spec is None or spec.temperature is None else spec.temperature


@union_base("schedule")
class Schedule:
    """What every schedule answers for itself; the defaults are those of a schedule that learns from stored
    checkpoints of the teacher and does not depend on its curve (resolving it against a trajectory is itself).

    - ``needs_teacher``: whether its students learn from a teacher at all (False: labels only);
    - ``teacher_source``: "trajectory" (stored checkpoints) or "live" (a teacher trained alongside the student);
    - ``stacks_with_others``: whether its students may share a stack with other schedules' students;
    - ``checkpoints_only``: whether its teacher at every step is a stored checkpoint as saved, at the
      distillation temperature (what :class:`progdistill.integrations.hf.ProgressiveDistillationTrainer` takes);
    - :meth:`validate_experiment`, :meth:`validate_teacher_plan` and :meth:`validate`: whether it is valid for an
      experiment, for the checkpoints its teacher will save, and for a finished trajectory's checkpoints;
    - :meth:`resolve` and :meth:`resolution`: the schedule to train with on a finished teacher, and what it
      picked there (for the report);
    - :meth:`for_seed`: the schedule a student of one seed trains with (its own random draws follow that seed);
    - :meth:`teacher_at`: the teacher (a :class:`TeacherSpec`, None for none) at each student step.
    """

    needs_teacher: ClassVar[bool] = True
    teacher_source: ClassVar[str] = "trajectory"
    stacks_with_others: ClassVar[bool] = True  # False: its students train in a stack of their own
    checkpoints_only: ClassVar[bool] = False

    def resolve(self, trajectory) -> Schedule:
        return self

    def for_seed(self, seed: int) -> Schedule:
        """The schedule that the student of seed ``seed`` trains with. A schedule with random draws of its own
        (a noised teacher's noise, a weight path's fresh initialization) whose ``seed`` field is unset draws them
        from the student's seed, so that students of different seeds see different draws; the default (no draws
        of its own, or a pinned seed) returns itself. The training loop binds every member's schedule this way
        before its first step."""
        return self

    def resolution(self, trajectory) -> dict[str, Any] | None:
        """What :meth:`resolve` picks on ``trajectory``, as the report shows it; None when nothing is picked."""
        return None

    def validate_experiment(self, experiment, field: str) -> None:
        """Raise ``ConfigError`` naming ``field`` (e.g. "schedules.2") when this schedule cannot train the
        students of ``experiment`` (an :class:`progdistill.experiment.ExperimentConfig`: task, teacher and student
        training, distillation). Called when the experiment's config is built."""

    def validate_teacher_plan(self, teacher, planned_steps: Sequence[int], field: str) -> None:
        """Raise ``ConfigError`` naming ``field`` when the checkpoints that a teacher trained with ``teacher`` (a
        :class:`progdistill.core.settings.TrainConfig`) saves, ``planned_steps`` (before any thinning to
        ``teacher.max_checkpoints``), cannot serve this schedule. Called before any training."""

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        """Raise ``ConfigError`` when a trajectory with checkpoints at ``checkpoint_steps`` cannot serve this
        schedule (by default: it needs the final checkpoint)."""
        final_checkpoint(checkpoint_steps)

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        """The checkpoint step of the teacher at ``student_step`` (None: no teacher); each schedule that
        learns from stored checkpoints says, or overrides :meth:`teacher_at` instead."""
        raise NotImplementedError(f"{type(self).__name__} names no checkpoint: it overrides teacher_at")

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec | None:
        """The teacher at ``student_step`` of a run of ``total_steps``: the checkpoint :meth:`checkpoint_at`
        names, as saved (None: no teacher)."""
        step = self.checkpoint_at(student_step, checkpoint_steps)
        return None if step is None else TeacherSpec(step)


def final_checkpoint(checkpoint_steps: Sequence[int]) -> int:
    if not checkpoint_steps:
        raise ConfigError("the teacher trajectory has no checkpoints, so no schedule can use it")
    return max(checkpoint_steps)


@register("schedule")
@dataclass(frozen=True)
class CE(Schedule):
    """Cross-entropy on true labels only; no teacher."""

    kind: ClassVar[str] = "ce"
    needs_teacher: ClassVar[bool] = False
    checkpoints_only: ClassVar[bool] = True

    @property
    def label(self) -> str:
        return "ce"

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        pass

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        return None


@register("schedule")
@dataclass(frozen=True)
class OneShot(Schedule):
    """The teacher's final checkpoint at every student step."""

    kind: ClassVar[str] = "one-shot"
    checkpoints_only: ClassVar[bool] = True

    @property
    def label(self) -> str:
        return "one-shot"

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        return final_checkpoint(checkpoint_steps)


@register("schedule")
@dataclass(frozen=True)
class Progressive(Schedule):
    """Follow the teacher trajectory: at student step t, the first checkpoint saved after teacher step
    ``t * speed`` (the final one once the trajectory is exhausted).

    With checkpoints every c teacher steps, the student spends c / ``speed`` of its steps on each checkpoint
    (paper §1: interval = checkpoint spacing / speed factor). The checkpoint *ahead* of the student's point on
    the timeline is used, so the first interval learns from a trained teacher rather than its random init.
    """

    kind: ClassVar[str] = "progressive"
    checkpoints_only: ClassVar[bool] = True

    speed: float = 1.0

    def __post_init__(self):
        check(
            isinstance(self.speed, (int, float)) and self.speed > 0,
            "schedule.speed",
            self.speed,
            "must be a positive number (1 = the teacher's own pace)",
        )

    @property
    def label(self) -> str:
        return "progressive" if self.speed == 1 else f"progressive-x{self.speed:g}"

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        steps = sorted(checkpoint_steps)
        i = bisect.bisect_right(steps, student_step * self.speed)
        return steps[i] if i < len(steps) else final_checkpoint(steps)


@register("schedule")
@dataclass(frozen=True)
class KShot(Schedule):
    """An explicit list of ``(checkpoint step, number of student steps)``, used in order; the last
    checkpoint stays in use after the list is exhausted. Checkpoint step -1 means the final checkpoint.
    2-shot (paper §1) is a list of two: a checkpoint inside the teacher's phase transition, then
    the final one."""

    kind: ClassVar[str] = "k-shot"
    checkpoints_only: ClassVar[bool] = True

    points: tuple[tuple[int, int], ...] = field(
        default=(), metadata={"allowed": "(checkpoint step, student steps) pairs, e.g. ((31000, 20000), (-1, 40000))"}
    )
    name: str | None = field(default=None, metadata={"omit_if_default": True})

    def __post_init__(self):
        check(
            len(self.points) >= 1,
            "schedule.points",
            self.points,
            "needs at least one (checkpoint step, student steps) pair",
        )
        check(
            self.name is None
            or (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name) is not None),
            "schedule.name",
            self.name,
            "1 to 100 letters, digits, '.', '_' and '-' (it names the students' directories)",
        )
        shots = re.fullmatch(r"(\d+)-shot", self.name or "")
        check(
            self.name != "teacher" and (shots is None or int(shots.group(1)) == len(self.points)),
            "schedule.name",
            self.name,
            f"must not be 'teacher', nor 'k-shot' with k other than this schedule's {len(self.points)} "
            "points (labels that would mislead)",
        )
        for i, (ckpt, count) in enumerate(self.points):
            check(
                isinstance(ckpt, int) and (ckpt >= 0 or ckpt == FINAL),
                f"schedule.points.{i}.0",
                ckpt,
                "a checkpoint step >= 0, or -1 for the final checkpoint",
            )
            check_positive_int(f"schedule.points.{i}.1", count)

    @property
    def label(self) -> str:
        """``name`` when given (to tell apart two k-shot schedules of one run), else "k-shot" for k points."""
        return self.name or f"{len(self.points)}-shot"

    def __str__(self) -> str:
        def name(c):
            return "the final checkpoint" if c == FINAL else f"checkpoint {c}"

        first = [f"{name(c)} for {n} student steps" for c, n in self.points[:-1]]
        return ", then ".join(first + [f"{name(self.points[-1][0])} for the rest of the run"])

    def validate_experiment(self, experiment, field: str) -> None:
        if len(self.points) > 1:
            before_last = sum(count for _, count in self.points[:-1])
            steps = experiment.student.steps
            check(
                before_last < steps,
                f"{field}.points",
                [list(p) for p in self.points],
                f"its points before the last take {before_last} student steps, not fewer than "
                f"student.steps={steps}, so the last checkpoint would never be used; lower "
                f"the step counts in {field}.points too or raise student.steps",
            )

    def validate_teacher_plan(self, teacher, planned_steps: Sequence[int], field: str) -> None:
        if teacher.max_checkpoints is None:  # else thinning decides later which steps survive: checked then
            self.validate(planned_steps, field=f"{field}.points")  # named as --set takes it

    def validate(self, checkpoint_steps: Sequence[int], field: str = "schedule.points") -> None:
        """Raise ``ConfigError`` naming ``field``.I.0 for a point whose checkpoint is not in ``checkpoint_steps``."""
        available = set(checkpoint_steps)
        final_checkpoint(checkpoint_steps)
        for i, (ckpt, _) in enumerate(self.points):
            if ckpt != FINAL and ckpt not in available:
                raise ConfigError(
                    f"{field}.{i}.0={ckpt} names a checkpoint that the teacher "
                    f"trajectory does not have; available steps: {sorted(available)}"
                )

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        ckpt, end = self.points[-1][0], 0  # the last checkpoint also serves any step past the planned ones
        for point, count in self.points:
            end += count
            if student_step < end:
                ckpt = point
                break
        return final_checkpoint(checkpoint_steps) if ckpt == FINAL else ckpt


@register("schedule")
@dataclass(frozen=True)
class TwoShotAuto(Schedule):
    """2-shot whose first checkpoint is picked from the teacher's curve (paper §1, 2-shot): the
    checkpoint in the middle of the phase transition detected on ``metric`` (a rise for accuracies, a drop
    for losses; :func:`progdistill.distill.phases.detect_transition`), for ``first_steps`` student steps, then the
    final checkpoint. :meth:`resolve` turns it into the equivalent :class:`KShot` for a given trajectory."""

    kind: ClassVar[str] = "2-shot-auto"
    checkpoints_only: ClassVar[bool] = True

    first_steps: int = 1000
    metric: str = "eval_accuracy"

    def __post_init__(self):
        check_positive_int("schedule.first_steps", self.first_steps)
        check(
            self.metric in ("eval_accuracy", "eval_loss"),
            "schedule.metric",
            self.metric,
            "one of eval_accuracy (a rise), eval_loss (a drop)",
        )

    @property
    def label(self) -> str:
        return "2-shot-auto"

    def window(self, steps: Sequence[int], values: Sequence[float]):
        """The phase transition (:class:`progdistill.distill.phases.Transition`) of the curve (steps, values) of
        ``metric``; raises :class:`progdistill.distill.phases.NoTransitionError` when there is none."""
        if self.metric == "eval_loss":  # the sharp drop of a loss curve, the untrained model left out
            transition = detect_phases(steps, values).transition
            # A loss has no fixed scale (an accuracy's min_change of 0.1 is a tenth of its range): the drop must
            # also be a tenth of the plateau's level, or a slow creep such as 3.57 -> 3.45 would pass.
            if transition.size < LOSS_MIN_RELATIVE_DROP * transition.before:
                raise NoTransitionError(
                    f"no sharp drop in the curve: from the early level {transition.before:.4g} "
                    f"to the final level {transition.after:.4g} the loss falls by "
                    f"{transition.size / transition.before:.1%} of its level, below "
                    f"{LOSS_MIN_RELATIVE_DROP:.0%}"
                )
            return transition
        return detect_transition(steps, values, "rise")

    def pick(self, steps: Sequence[int], values: Sequence[float]) -> int:
        """The checkpoint step in the middle of the transition of the curve (steps, values)."""
        try:
            return self.window(steps, values).middle
        except NoTransitionError as exc:
            raise ConfigError(
                f"2-shot-auto needs a teacher whose {self.metric} has a phase transition: "
                f"{exc.reason}. Train the teacher longer (teacher.steps) "
                "or leave 2-shot-auto out of the schedules"
            ) from None

    def resolve(self, trajectory) -> KShot:
        """The KShot ((middle of the transition, first_steps), (final, rest)) for ``trajectory``."""
        steps, values = trajectory.curve(self.metric)
        return KShot(points=((self.pick(steps, values), self.first_steps), (FINAL, 1)))

    def resolution(self, trajectory) -> dict[str, Any]:
        """The first ``checkpoint`` it picks on ``trajectory`` (the middle of the detected transition), the
        teacher's ``value`` of ``metric`` there, ``first_steps``, and the ``transition``
        (:meth:`progdistill.distill.phases.Transition.to_dict`: start, middle, end, before, after, noise, size,
        width)."""
        steps, values = trajectory.curve(self.metric)
        window = self.window(steps, values)
        return {
            "checkpoint": window.middle,
            "metric": self.metric,
            "value": values[steps.index(window.middle)],
            "first_steps": self.first_steps,
            "transition": window.to_dict(),
        }

    def validate_experiment(self, experiment, field: str) -> None:
        steps = experiment.student.steps
        check(
            self.first_steps < steps,
            f"{field}.first_steps",
            self.first_steps,
            f"must be smaller than student.steps={steps} (the rest goes to the final "
            f"checkpoint); lower {field}.first_steps too or raise student.steps",
        )

    def validate_teacher_plan(self, teacher, planned_steps: Sequence[int], field: str) -> None:
        if len(planned_steps) < 3:
            raise ConfigError(
                f"{field}: 2-shot-auto needs at least 3 teacher checkpoints to locate a transition; "
                f"teacher.steps={teacher.steps} with teacher.checkpoint_every="
                f"{teacher.checkpoint_every} saves {len(planned_steps)}"
            )

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        raise ConfigError("2-shot-auto must be resolved against a teacher trajectory first (resolve())")

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        raise ConfigError("2-shot-auto must be resolved against a teacher trajectory first (resolve())")

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec | None:
        raise ConfigError("2-shot-auto must be resolved against a teacher trajectory first (resolve())")


def schedule_kinds() -> list[str]:
    return sorted(variants("schedule"))
