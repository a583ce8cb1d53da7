"""Curricula without stored intermediate checkpoints (paper §5: "a curriculum from the final teacher alone").

Progressive distillation (paper §1-§2) needs the teacher's intermediate checkpoints. The schedules here need only
the final one -- or, for co-training, none at all -- and build the sequence of teachers from it. Each is a
schedule (a variant of the ``schedule`` tagged union, so it works from a preset or ``--set``) whose
:meth:`teacher_at` returns a :class:`~progdistill.distill.schedules.TeacherSpec` per student step:

- :class:`TemperatureCurriculum`: the final teacher at temperature ``start``, annealed to ``end`` (for a nearly
  binary teacher softmax(z / T) ~ 1/2 + z / 4T at large T: a high temperature exposes the logit function itself);
- :class:`WeightPathCurriculum`: the teacher with weights ``(1 - a) theta_0 + a theta_final``, ``a`` rising from
  ``start`` to ``end``; theta_0 a fresh seeded initialization of the teacher's architecture, the trajectory's
  step-0 checkpoint (the real initialization), or a safetensors file;
- :class:`NoisedTeacher`: the final teacher under Gaussian weight noise annealed to ``end``;
- :class:`HintDistillation`: FitNets -- the student matches the final teacher's hidden layer through a learned
  projection for ``hint_steps`` steps, then its outputs;
- :class:`CoTraining`: the student trains alongside the teacher and distils from its current weights (or those
  ``lag`` steps old): progressive distillation with no stored checkpoint (:mod:`progdistill.train.cotraining`).

Random draws of a schedule (the noise, a fresh initialization) follow the student's seed by default (``seed``
null; :meth:`~progdistill.distill.schedules.Schedule.for_seed`), so the students of a run's seeds measure the spread
over draws; an integer ``seed`` pins one draw for every student (the only behaviour before; a config.json that
records ``"seed": 0`` is read that way, as the run that wrote it trained).

Values that change with the step (a weight-path point, a noise level) are piecewise constant over ``stages``
equal stages of the annealing span, so the teacher is rebuilt ``stages`` times rather than at every step; the
temperature changes at every step (it costs nothing). The annealing span is the first ``fraction`` of the
student's steps; the end value holds after it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch

from progdistill.core.config import ConfigError, check, check_positive_int, register, to_dict
from progdistill.core.seeding import generator
from progdistill.distill.schedules import Schedule, TeacherSpec, final_checkpoint

MAX_TEMPERATURE = 100.0  # a hotter teacher is uniform to float32 precision for any logits a model produces
MAX_NOISE = 10.0  # weight noise beyond ten times a tensor's RMS leaves nothing of the teacher
INITS = ("fresh", "trajectory")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_span(fraction, stages: int | None = None) -> None:
    check(
        _is_number(fraction) and 0 < fraction <= 1,
        "schedule.fraction",
        fraction,
        "the share of the student's steps over which the value anneals: a number in (0, 1]",
    )
    if stages is not None:
        check(
            isinstance(stages, int) and not isinstance(stages, bool) and stages >= 2,
            "schedule.stages",
            stages,
            "an integer >= 2 (the teacher is rebuilt at each stage; the first is the start value, the last "
            "the end value)",
        )


def _check_seed(seed) -> None:
    check(
        seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0),
        "schedule.seed",
        seed,
        "an integer >= 0 (the same draws for every student), or null (the default: each student's own seed)",
    )


def _bound_seed(schedule) -> int:
    """The seed of a schedule's own draws; ``ValueError`` when it follows the student's seed and was not bound."""
    if schedule.seed is None:
        raise ValueError(
            f"{schedule.label}: its draws follow the student's seed (seed null), which this schedule was not "
            "given: call schedule.for_seed(student seed) first, as the training loop does"
        )
    return schedule.seed


def _span(total_steps: int, fraction: float) -> int:
    return max(int(round(fraction * total_steps)), 1)


def ramp(student_step: int, total_steps: int, fraction: float) -> float:
    """Progress in [0, 1] at ``student_step``: 0 at step 0, rising linearly to 1 at the last step of the first
    ``fraction`` of ``total_steps`` (span s = round(fraction * total_steps); progress t / (s - 1)), 1 after."""
    span = _span(total_steps, fraction)
    return min(student_step / max(span - 1, 1), 1.0)


def stage_value(start: float, end: float, stages: int, student_step: int, total_steps: int, fraction: float) -> float:
    """The value of stage k = floor(t * stages / span) (at most stages - 1): start + (end - start) k / (stages - 1).
    Stage 0 is ``start``, the last stage (and every step after the span) exactly ``end``."""
    span = _span(total_steps, fraction)
    k = min(student_step * stages // span, stages - 1)
    return end if k == stages - 1 else start + (end - start) * k / (stages - 1)


# ----------------------------------------------------------------------------------------------------------
# Weight transforms (hashable: a block computes one set of teacher outputs per distinct transform)


@dataclass(frozen=True)
class PathPoint:
    """The point ``(1 - a) theta_0 + a theta`` of the weight path from the initialization theta_0 (``init``:
    "fresh" with ``seed``, "trajectory", or a safetensors file; ``seed`` None for the last two) to the
    checkpoint's weights theta. Exactly theta_0 at a = 0 and theta at a = 1."""

    a: float
    init: str
    seed: int | None

    def apply(self, state: dict[str, torch.Tensor], pool) -> dict[str, torch.Tensor]:
        """state: the checkpoint's state dict; pool: a :class:`progdistill.distill.teachers.TeacherPool` (its
        ``initial_state``). Raises ``ConfigError`` when the two models' tensors differ in names or shapes."""
        init = pool.initial_state(self.init, self.seed)
        check_same_shapes(init, state, f"the weight path's initialization ({self.init})", "the teacher checkpoint")
        # Integer buffers (position ids and the like) are the same in both models and stay as they are.
        return {k: (1 - self.a) * init[k].to(v) + self.a * v if v.is_floating_point() else v for k, v in state.items()}

    def describe(self) -> dict:
        return {"teacher_weight_path": self.a}


@dataclass(frozen=True)
class WeightNoise:
    """The checkpoint's weights plus Gaussian noise of standard deviation ``sigma`` times each tensor's RMS,
    drawn from the generator (``seed``, "teacher-noise-<stage>"): one fixed noisy teacher per stage."""

    sigma: float
    seed: int
    stage: int

    def apply(self, state: dict[str, torch.Tensor], pool) -> dict[str, torch.Tensor]:
        gen = generator(self.seed, f"teacher-noise-{self.stage}")
        out = {}
        for k in sorted(state):  # a fixed order: the same draws for the same names
            v = state[k]
            if not v.is_floating_point():  # integer buffers carry no weights to perturb
                out[k] = v
                continue
            noise = torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v)
            out[k] = v + self.sigma * v.float().pow(2).mean().sqrt().to(v) * noise
        return out

    def describe(self) -> dict:
        return {"teacher_noise": self.sigma}


def check_same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], name_a: str, name_b: str) -> None:
    """Raise ``ConfigError`` naming the first tensor whose name or shape differs between two state dicts."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ConfigError(
            f"a weight path needs two models of one architecture: {name_a} and {name_b} differ in "
            f"their tensors ({', '.join(only[:3])}{'...' if len(only) > 3 else ''})"
        )
    for k in sorted(a):
        if a[k].shape != b[k].shape:
            raise ConfigError(
                f"a weight path needs two models of one architecture: tensor {k!r} has shape "
                f"{tuple(a[k].shape)} in {name_a} and {tuple(b[k].shape)} in {name_b}"
            )


# ----------------------------------------------------------------------------------------------------------
# Schedules


class _FromFinal(Schedule):
    """A curriculum built from the final checkpoint alone."""

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        return final_checkpoint(checkpoint_steps)


@register("schedule")
@dataclass(frozen=True)
class TemperatureCurriculum(_FromFinal):
    """The final teacher at temperature ``start``, annealed to ``end`` over the first ``fraction`` of the
    student's steps (``shape`` "geometric": T = start (end / start)^p, "linear": start + (end - start) p, with p the
    :func:`ramp`), then ``end``. start > end is the curriculum, start < end its reverse (a control).
    The temperature replaces ``distillation.temperature``; 0 is the teacher's argmax."""

    kind: ClassVar[str] = "temperature-curriculum"

    start: float = 4.0
    end: float = 0.5
    shape: str = "geometric"
    fraction: float = 1.0

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            check(
                _is_number(value) and 0 <= value <= MAX_TEMPERATURE,
                f"schedule.{name}",
                value,
                f"a temperature in [0, {MAX_TEMPERATURE:g}] (0 = the teacher's argmax)",
            )
        check(
            self.start != self.end,
            "schedule.end",
            self.end,
            f"must differ from schedule.start={self.start} (a constant temperature is one-shot distillation "
            "with distillation.temperature)",
        )
        check(self.shape in ("geometric", "linear"), "schedule.shape", self.shape, "one of geometric, linear")
        check(
            self.shape == "linear" or min(self.start, self.end) > 0,
            "schedule.shape",
            self.shape,
            "geometric annealing needs start and end > 0; use shape linear to anneal to or from 0",
        )
        _check_span(self.fraction)

    @property
    def label(self) -> str:
        return f"temperature-{self.start:g}-to-{self.end:g}" + ("" if self.shape == "geometric" else "-linear")

    def validate_experiment(self, experiment, field: str) -> None:
        distillation = experiment.distillation
        check(
            distillation.temperature_scaling == "teacher",
            "distillation.temperature_scaling",
            distillation.temperature_scaling,
            f"'teacher' with {field} (a temperature "
            "curriculum): its per-student temperatures scale the teacher's logits only",
        )
        reaches_zero = min(self.start, self.end) == 0
        one_hot_bad = distillation.loss == "reverse_kl" or (
            distillation.loss == "generalized_jsd" and distillation.beta == 1
        )
        check(
            not (reaches_zero and one_hot_bad),
            field,
            to_dict(self),
            f"a temperature range above 0 with distillation.loss={distillation.loss!r} (a one-hot "
            "teacher at T = 0 has infinite reverse KL)",
        )

    def temperature_at(self, student_step: int, total_steps: int) -> float:
        p = ramp(student_step, total_steps, self.fraction)
        if p >= 1:
            return self.end
        if self.shape == "linear":
            return self.start + (self.end - self.start) * p
        return self.start * (self.end / self.start) ** p

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec:
        return TeacherSpec(
            final_checkpoint(checkpoint_steps), temperature=self.temperature_at(student_step, total_steps)
        )


@register("schedule")
@dataclass(frozen=True)
class WeightPathCurriculum(_FromFinal):
    """The teacher with weights ``(1 - a) theta_0 + a theta_final``, ``a`` rising from ``start`` to ``end`` in
    ``stages`` equal stages over the first ``fraction`` of the student's steps (:func:`stage_value`), then ``end``.

    ``init``: theta_0 -- "fresh" (a new initialization of the teacher's architecture from the generator
    (seed, "weight-path-init")), "trajectory" (the trajectory's step-0 checkpoint: the teacher's real
    initialization), or the path of a safetensors file of the same architecture. ``seed``: that of a fresh
    initialization -- None (the default) the student's seed (:meth:`for_seed`), so each seed of a run starts the
    path from another init; an integer pins one init for every student."""

    kind: ClassVar[str] = "weight-path"

    start: float = 0.0
    end: float = 1.0
    init: str = "fresh"
    seed: int | None = None
    stages: int = 20
    fraction: float = 1.0

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            check(
                _is_number(value) and 0 <= value <= 1,
                f"schedule.{name}",
                value,
                "a point a in [0, 1] of the path (1 - a) theta_0 + a theta_final",
            )
        check(self.start != self.end, "schedule.end", self.end, f"must differ from schedule.start={self.start}")
        check(
            isinstance(self.init, str) and (self.init in INITS or self.init.endswith(".safetensors")),
            "schedule.init",
            self.init,
            "fresh, trajectory (its step-0 checkpoint), or a .safetensors file",
        )
        _check_seed(self.seed)
        _check_span(self.fraction, self.stages)

    @property
    def label(self) -> str:
        init = self.init if self.init in INITS else re.sub(r"[^A-Za-z0-9._-]", "_", Path(self.init).stem)
        return f"weight-path-{init}"

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        final_checkpoint(checkpoint_steps)
        if self.init == "trajectory" and 0 not in checkpoint_steps:
            raise ConfigError(
                "schedule.init='trajectory' needs the trajectory's step-0 checkpoint (the real "
                "initialization), which this trajectory does not have (steps "
                f"{list(checkpoint_steps)[:5]}...); use init 'fresh'"
            )
        if self.init not in INITS and not Path(self.init).is_file():
            raise ConfigError(f"schedule.init={self.init!r}: no such file")

    def for_seed(self, seed: int) -> WeightPathCurriculum:
        """Self with ``seed`` set to the student's ``seed`` when unset and the init is fresh (the other inits
        draw nothing)."""
        return replace(self, seed=seed) if self.seed is None and self.init == "fresh" else self

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec:
        """Raises ``ValueError`` for a fresh init whose seed follows the student's and was not bound
        (:meth:`for_seed`)."""
        a = stage_value(self.start, self.end, self.stages, student_step, total_steps, self.fraction)
        seed = _bound_seed(self) if self.init == "fresh" else None  # only a fresh init draws
        return TeacherSpec(final_checkpoint(checkpoint_steps), transform=PathPoint(a, self.init, seed))


@register("schedule")
@dataclass(frozen=True)
class NoisedTeacher(_FromFinal):
    """The final teacher plus Gaussian weight noise of ``start`` times each tensor's RMS, annealed to ``end``
    in ``stages`` stages over the first ``fraction`` of the student's steps (each stage one fixed draw from the
    generator (seed, "teacher-noise-<stage>")); at 0 the teacher itself. ``seed``: that of the draws -- None (the
    default) the student's seed (:meth:`for_seed`), so each seed of a run learns from other noised teachers; an
    integer pins the same draws for every student."""

    kind: ClassVar[str] = "noised-teacher"

    start: float = 1.0
    end: float = 0.0
    seed: int | None = None
    stages: int = 20
    fraction: float = 1.0

    def __post_init__(self):
        check(
            _is_number(self.start) and 0 < self.start <= MAX_NOISE,
            "schedule.start",
            self.start,
            f"a noise scale in (0, {MAX_NOISE:g}] (standard deviation relative to each weight tensor's RMS)",
        )
        check(
            _is_number(self.end) and 0 <= self.end < self.start,
            "schedule.end",
            self.end,
            f"a noise scale in [0, schedule.start={self.start}) (the noise is annealed down)",
        )
        _check_seed(self.seed)
        _check_span(self.fraction, self.stages)

    @property
    def label(self) -> str:
        return f"noised-teacher-{self.start:g}"

    def for_seed(self, seed: int) -> NoisedTeacher:
        """Self with ``seed`` set to the student's ``seed`` when unset."""
        return replace(self, seed=seed) if self.seed is None else self

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec:
        """Raises ``ValueError`` when the seed follows the student's and was not bound (:meth:`for_seed`)."""
        seed = _bound_seed(self)
        sigma = stage_value(self.start, self.end, self.stages, student_step, total_steps, self.fraction)
        final = final_checkpoint(checkpoint_steps)
        if sigma == 0:
            return TeacherSpec(final)
        stage = min(student_step * self.stages // _span(total_steps, self.fraction), self.stages - 1)
        return TeacherSpec(final, transform=WeightNoise(sigma, seed, stage))


@register("schedule")
@dataclass(frozen=True)
class HintDistillation(_FromFinal):
    """FitNets: for the first ``hint_steps`` student steps the student's hidden layer ``student_layer`` is
    regressed, through a learned linear projection, onto the final teacher's hidden layer ``layer`` (mean
    squared error per hidden unit); then the student distils the final teacher's outputs. Layers are 0-based
    indices of the hidden layers, -1 the last. Models must return hidden states (the MLP)."""

    kind: ClassVar[str] = "hint"
    # Hint steps take the autograd path (hidden states, a projection), which would slow a whole stack of students
    # down several times; hint students train in a stack of their own.
    stacks_with_others: ClassVar[bool] = False

    hint_steps: int = 10_000
    layer: int = -1
    student_layer: int = -1

    def __post_init__(self):
        check_positive_int("schedule.hint_steps", self.hint_steps)
        for name in ("layer", "student_layer"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= -1,
                f"schedule.{name}",
                value,
                "a hidden layer index >= 0, or -1 for the last hidden layer",
            )

    @property
    def label(self) -> str:
        return "hint"

    def validate_experiment(self, experiment, field: str) -> None:
        steps = experiment.student.steps
        check(
            self.hint_steps < steps,
            f"{field}.hint_steps",
            self.hint_steps,
            f"must be smaller than student.steps={steps} (output distillation follows the hint phase)",
        )
        for name, role in (("layer", "teacher"), ("student_layer", "student")):
            model = getattr(experiment, role).model
            check(
                model.kind == "mlp",
                f"{role}.model",
                model.kind,
                f"an mlp: {field} (hint) regresses hidden layers, which only the MLP returns",
            )
            layer = getattr(self, name)
            check(
                layer < model.depth,
                f"{field}.{name}",
                layer,
                f"a hidden layer of the {role} (0..{model.depth - 1}, or -1 for the last): it has {model.depth}",
            )

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec:
        final = final_checkpoint(checkpoint_steps)
        if student_step < self.hint_steps:
            return TeacherSpec(final, hint_layer=(self.student_layer, self.layer))
        return TeacherSpec(final)


@register("schedule")
@dataclass(frozen=True)
class CoTraining(Schedule):
    """Online co-training: the student trains alongside the teacher, one step each, and at its step t (0-based)
    distils from the teacher's weights after teacher step t + 1 - ``lag`` (the teacher steps first; lag 0 is
    the teacher's current weights, which a trajectory would call checkpoint t + 1 -- so lag 0 equals
    progressive distillation from a checkpoint saved at every step). Once the teacher has finished, its final
    weights. Needs no stored checkpoint: lagged weights come from an in-memory ring buffer of ``lag + 1``
    copies (:mod:`progdistill.train.cotraining`)."""

    kind: ClassVar[str] = "co-training"
    teacher_source: ClassVar[str] = "live"

    lag: int = 0

    def __post_init__(self):
        check(
            isinstance(self.lag, int) and not isinstance(self.lag, bool) and self.lag >= 0,
            "schedule.lag",
            self.lag,
            "an integer >= 0 (teacher steps between the teacher's weights and those the student uses)",
        )

    @property
    def label(self) -> str:
        return "co-training" if self.lag == 0 else f"co-training-lag{self.lag}"

    def validate_experiment(self, experiment, field: str) -> None:
        check(
            not type(experiment.task).per_position_targets,
            field,
            self.kind,
            f"a schedule for one-label tasks: co-training steps the teacher as a stack, which task "
            f"{experiment.task.kind!r} (targets per position) does not train",
        )

    def validate(self, checkpoint_steps: Sequence[int]) -> None:
        pass  # no stored checkpoint is used

    def checkpoint_at(self, student_step: int, checkpoint_steps: Sequence[int]) -> int | None:
        return max(student_step + 1 - self.lag, 0)

    def teacher_at(self, student_step: int, checkpoint_steps: Sequence[int], total_steps: int) -> TeacherSpec:
        return TeacherSpec(max(student_step + 1 - self.lag, 0), now=student_step + 1)
