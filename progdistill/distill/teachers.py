"""Teacher checkpoints during student training: loaded on demand, and their logits for a block of steps.

A student at step t learns from the teacher its schedule names, a :class:`~progdistill.distill.schedules.TeacherSpec`
(a checkpoint, optionally transformed: :mod:`progdistill.distill.schedules`, :mod:`progdistill.distill.curricula`);
:class:`TeacherPool` keeps the teachers in use loaded, and :func:`block_teacher_logits` computes the
teacher logits of a whole block of steps of a stack in one large batch per (data stream, teacher) instead
of once per step. A teacher that trains alongside its students (co-training) is
:class:`progdistill.train.cotraining.LiveTeacher`, with the same ``get``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file

from progdistill.core.config import ConfigError
from progdistill.distill.schedules import TeacherSpec, teacher_temperature

TEACHER_CHUNK = 512


class Teachers(Protocol):
    """What training asks of its teachers: a :class:`TeacherPool`, or co-training's live teacher
    (:class:`progdistill.train.cotraining.LiveTeacher`)."""

    @property
    def steps(self) -> list[int]: ...

    def check(self, schedules) -> None: ...

    def prepare(self, specs) -> None: ...

    def retain(self, specs) -> None: ...

    def get(self, spec: TeacherSpec) -> torch.nn.Module: ...


class TeacherPool:
    """Frozen teacher checkpoints loaded on demand from a trajectory.

    ``trajectory``: a :class:`progdistill.store.trajectory.Trajectory` or
    :class:`progdistill.integrations.hf.HFTrajectory` (anything with ``steps`` and ``load_model(step, build)``;
    ``load(step)`` for transformed teachers, ``verify()`` for :meth:`verify`); ``build`` makes an untrained teacher to
    load weights into; ``init(seed)`` a freshly initialized teacher (the start of a "fresh" weight path). A teacher is
    loaded once when a schedule first
    switches to it and kept while a schedule uses it; its model is in eval mode, with ``requires_grad`` off, and
    never in an optimizer. ``loads`` counts teacher loads.
    """

    def __init__(
        self,
        trajectory,
        build: Callable[[], torch.nn.Module] | None,
        device: torch.device,
        init: Callable[[int], torch.nn.Module] | None = None,
    ):
        self.trajectory = trajectory
        self.build = build
        self.init = init
        self.device = device
        self.models: dict[tuple, torch.nn.Module] = {}
        self.initial_states: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}
        self.loads = 0
        self.checked: set = set()  # the schedules :meth:`check` has validated against this trajectory

    @property
    def steps(self) -> list[int]:
        return self.trajectory.steps

    def get(self, spec: TeacherSpec | int) -> torch.nn.Module:
        """The teacher of ``spec`` (a checkpoint step: that checkpoint as saved). Temperature and hint layer do
        not change the model; a transform is applied to the checkpoint's weights (``ConfigError`` when it
        cannot be, e.g. a weight path between models of different shapes)."""
        spec = spec if isinstance(spec, TeacherSpec) else TeacherSpec(spec)
        key = (spec.checkpoint, spec.transform)
        if key not in self.models:
            if spec.transform is None:
                model = self.trajectory.load_model(spec.checkpoint, self.build)
            else:
                if self.build is None:
                    raise ValueError("a transformed teacher needs the pool's build")
                model = self.build()
                model.load_state_dict(spec.transform.apply(self.trajectory.load(spec.checkpoint), self))
            model.to(self.device).eval().requires_grad_(False)
            self.models[key] = model
            self.loads += 1
        return self.models[key]

    def prepare(self, specs) -> None:
        """Build the teachers of ``specs`` now (before training), so that one that cannot be built stops the run
        before its first step."""
        for spec in specs:
            self.get(spec)

    def initial_state(self, init: str, seed: int | None) -> dict[str, torch.Tensor]:
        """The start theta_0 of a weight path (CPU tensors): "fresh" -- ``init(seed)``'s weights (``seed`` an
        integer); "trajectory" -- the trajectory's step-0 checkpoint; else the safetensors file at path ``init``."""
        if (init, seed) not in self.initial_states:
            if init == "fresh":
                if seed is None:
                    raise ValueError("a 'fresh' weight path needs the seed of its initialization, got None")
                if self.init is None:
                    raise ConfigError(
                        "a 'fresh' weight path needs a way to initialize the teacher (TeacherPool's "
                        "init); pass init=... or use init 'trajectory'"
                    )
                state = self.init(seed).state_dict()
            elif init == "trajectory":
                if 0 not in self.steps:
                    raise ConfigError("init 'trajectory' needs the trajectory's step-0 checkpoint, which it lacks")
                state = self.trajectory.load(0)
            else:
                if not Path(init).is_file():
                    raise ConfigError(f"weight path init {init!r}: no such file")
                state = load_file(init)
            self.initial_states[(init, seed)] = {k: v.detach().to("cpu") for k, v in state.items()}
        return self.initial_states[(init, seed)]

    def check(self, schedules) -> None:
        """Before any training: validate every schedule of ``schedules`` that needs a teacher against the
        trajectory's checkpoint steps (``schedule.validate``: ``ConfigError``), then check every checkpoint file
        (:meth:`verify`), so that a checkpoint a schedule names but the trajectory lacks, or a missing or corrupted
        file, stops a run before its first step rather than when a schedule reaches it. Done once per pool: the
        runner checks its students' schedules before writing any of their files, and the training loop's own
        call then finds them checked."""
        todo = [s for s in schedules if s.needs_teacher and s not in self.checked]
        for schedule in todo:
            schedule.validate(self.steps)
        if todo and not self.checked:
            self.verify()
        self.checked.update(todo)

    def verify(self) -> None:
        """Check every checkpoint file of the trajectory before training (``trajectory.verify()``: its sha256
        against the manifest, computed once per file), so that a missing or corrupted checkpoint stops a run
        before its first step rather than when a schedule reaches it. Raises
        :class:`progdistill.store.trajectory.TrajectoryError` naming the file and step."""
        self.trajectory.verify()

    def retain(self, specs: set) -> None:
        """Drop the teachers no schedule uses any more (``specs``: the TeacherSpecs or checkpoint steps in use)."""
        keep = {(s.checkpoint, s.transform) if isinstance(s, TeacherSpec) else (s, None) for s in specs}
        for key in list(self.models):
            if key not in keep:
                del self.models[key]


def block_teacher_logits(
    plan: list[list[TeacherSpec | None]], x_block: torch.Tensor, seed_index: torch.Tensor, teachers, num_classes: int
) -> torch.Tensor | None:
    """Teacher logits for one block of steps of a stack, computed in one batch per (data stream, teacher).

    plan: (L, M) teacher per step and model (a TeacherSpec or a checkpoint step; None = no teacher); teachers: a
    :class:`TeacherPool` or anything with its ``get(spec)``, asked for the teachers in the order of the steps; x_block:
    (S, L, B, n) inputs of the S data streams; seed_index: (M,) the stream of each model. Returns float32 logits (L, M,
    B, C), zero where the plan has no teacher, or None when no model uses a teacher in the block.
    """
    if teachers is None or all(c is None for row in plan for c in row):
        return None
    L, M, B = len(plan), len(plan[0]), x_block.shape[2]
    logits = torch.zeros(L, M, B, num_classes, device=x_block.device)
    groups: dict[tuple[int, TeacherSpec], list[tuple[int, int]]] = {}
    for i, row in enumerate(plan):
        for m, c in enumerate(row):
            if c is not None:  # the temperature and hint layer do not change the teacher's logits
                spec = c if isinstance(c, TeacherSpec) else TeacherSpec(c)
                model_spec = dataclasses.replace(spec, temperature=None, hint_layer=None)
                groups.setdefault((int(seed_index[m]), model_spec), []).append((i, m))
    with torch.no_grad():
        for (s, model_spec), cells in groups.items():
            rows = sorted({i for i, _ in cells})
            teacher, inputs = teachers.get(model_spec), x_block[s, rows].reshape(len(rows) * B, -1)
            # Chunks of TEACHER_CHUNK rows keep a wide teacher's hidden activations in cache (~2x faster).
            out = torch.cat([teacher(inputs[j : j + TEACHER_CHUNK])[0] for j in range(0, len(inputs), TEACHER_CHUNK)])
            out = out.view(len(rows), B, num_classes).float()  # (rows, B, C)
            pos = {i: j for j, i in enumerate(rows)}
            steps_idx = torch.tensor([i for i, _ in cells])
            model_idx = torch.tensor([m for _, m in cells])
            logits[steps_idx, model_idx] = out[[pos[i] for i, _ in cells]]
    return logits


def plan_temperatures(plan: list[list[TeacherSpec | None]], default: float, device: torch.device):
    """The softmax temperature of every step and model of a plan (L, M): ``default`` (a number) when no spec sets
    its own, else a float32 tensor (L, M) with ``default`` where a spec does not."""
    if all(spec is None or spec.temperature is None for row in plan for spec in row):
        return default
    return torch.tensor([[teacher_temperature(spec, default) for spec in row] for row in plan], device=device)
