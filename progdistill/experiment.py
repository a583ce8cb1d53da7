"""An experiment's configuration: task, teacher and student training, distillation loss and schedules.

Everything here is decided from the config alone, before any file is written: its hash (the identity of a run
directory, :mod:`progdistill.store.rundir`), the teacher trajectory's header, the checkpoints the teacher will save,
whether the task's data loads and fits the models, and the models themselves
(:func:`build_model`). Running an experiment is :func:`progdistill.recipes.runner.run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from progdistill.core.config import (
    ConfigError,
    ScheduleSpec,
    TaskSpec,
    Unloaded,
    check,
    check_positive_int,
    from_dict,
    problems,
    raise_errors,
    to_dict,
    typed,
    unloaded_variants,
)
from progdistill.core.plugins import import_recorded, plugin_entries
from progdistill.core.seeding import generator
from progdistill.core.settings import DistillationConfig, TrainConfig, Way
from progdistill.distill.schedules import CE
from progdistill.distill.teachers import TeacherPool
from progdistill.tasks.base import Task


@typed()
@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: task, teacher and student training, distillation loss and schedules.

    ``seeds`` students are trained per schedule (seeds 0..seeds-1); ``threshold`` is the eval accuracy at
    which ``steps_to_threshold`` is read off (0.9 in the paper's Figure 1).

    ``ways``: further ways of distilling from the same teacher (:class:`~progdistill.core.settings.Way`: a name
    and its own distillation settings, e.g. reverse KL, sequence-level KD, on-policy). Every schedule that
    learns from a teacher trains one more student per way and seed, exactly as an experiment whose
    ``distillation`` is the way's would train it (:func:`student_runs`); schedules that need no teacher (CE)
    train once. Each way is checked as that experiment would be, and a problem is reported as ``ways.<i>
    (<name>): ...``.
    """

    preset: str
    task: TaskSpec
    teacher: TrainConfig
    student: TrainConfig
    distillation: DistillationConfig = DistillationConfig()
    schedules: tuple[ScheduleSpec, ...] = (CE(),)
    seeds: int = 3
    threshold: float = 0.9
    ways: tuple[Way, ...] = field(default=(), metadata={"omit_if_default": True})  # added later: hashes unchanged

    def __post_init__(self):
        # Every check runs and every failure is reported in one message: shrinking steps with --set meets the
        # k-shot points, 2-shot-auto's first steps and the teacher's checkpoints at once, not one per try.
        errors: list[ConfigError] = []

        def checked(validate, *args) -> None:
            try:
                validate(*args)
            except ConfigError as exc:
                errors.append(exc)

        checked(check, bool(self.preset), "preset", self.preset, "a non-empty name")
        checked(check, len(self.schedules) >= 1, "schedules", self.schedules, "at least one schedule")
        labels = [s.label for s in self.schedules]
        checked(
            check,
            len(set(labels)) == len(labels),
            "schedules",
            labels,
            "schedule labels must be distinct (they name "
            'the students; give k-shot schedules with the same number of points a "name")',
        )
        checked(check_positive_int, "seeds", self.seeds)
        checked(check, 0 < self.threshold <= 1, "threshold", self.threshold, "must lie in (0, 1]")
        # a stand-in of a missing plugin (lenient loading, to show files) cannot answer cross-field checks
        variants = (self.task, self.teacher.model, self.student.model, *self.schedules)
        if not any(isinstance(v, Unloaded) for v in variants):
            checked(self._check_generation)
            checked(self._check_top_k)
            planned = planned_checkpoint_steps(self.teacher)
            for i, sched in enumerate(self.schedules):
                checked(sched.validate_experiment, self, f"schedules.{i}")
                checked(sched.validate_teacher_plan, self.teacher, planned, f"schedules.{i}")
            errors += self._way_errors({p for e in errors for p in problems(e)})
        raise_errors(errors)

    def _way_errors(self, known: set[str]) -> list[ConfigError]:
        """The problems of each way: its experiment (this one with the way's distillation) checked as a whole,
        less the problems this experiment has anyway; duplicate way names; student labels that collide."""
        errors = []
        names = [w.name for w in self.ways]
        if len(set(names)) != len(names):
            errors.append(ConfigError(f"ways={names!r} is invalid: way names must be distinct (they name students)"))
        labels = [run.label for run in student_runs(self) if run.seed == 0]
        if len(set(labels)) != len(labels):
            clash = sorted({x for x in labels if labels.count(x) > 1})
            errors.append(
                ConfigError(
                    f"ways={names!r} is invalid: the students {', '.join(clash)} would share a name (a way's students "
                    "are named <way>-<schedule>): rename the way"
                )
            )
        for i, way in enumerate(self.ways):
            try:
                replace(self, distillation=way.distillation, ways=())
            except ConfigError as exc:
                errors += [ConfigError(f"ways.{i} ({way.name}): {p}") for p in problems(exc) if p not in known]
        return errors

    def _check_generation(self) -> None:
        for name, used in (("seq_kd", self.distillation.seq_kd), ("lmbda", self.distillation.lmbda > 0)):
            check(
                not used or self.task.generative,
                f"distillation.{name}",
                getattr(self.distillation, name),
                f"trains on generated sequences, which task {self.task.kind!r} cannot give (not a generative "
                "task; e.g. pcfg-lm is): use false / 0 here",
            )

    def _check_top_k(self) -> None:
        top_k = self.distillation.top_k
        classes = getattr(self.task, "config_num_classes", None)
        check(
            top_k is None or classes is None or top_k <= classes,
            "distillation.top_k",
            top_k,
            f"at most the task's {classes} classes (its vocabulary), or null for all of them",
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to config.json: the fields, headed by ``"plugins"`` when a task, model or
        schedule is defined outside progdistill (the modules to import to read it back:
        :func:`progdistill.core.plugins.plugin_entries`)."""
        plugins = plugin_entries(self)
        return {"plugins": plugins, **to_dict(self)} if plugins else to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], lenient: bool = False) -> ExperimentConfig:
        """The config of a JSON form (:meth:`to_dict`), after importing the plugins it records; one that cannot be
        imported raises :class:`~progdistill.core.plugins.PluginError` naming its module and file. ``lenient`` (for
        commands that only show files, such as ``status``): a missing plugin is a warning, and its variants
        are :class:`~progdistill.core.config.Unloaded` stand-ins that keep their type name and fields."""
        if not isinstance(data, dict) or "plugins" not in data:
            plugins = None
        else:
            plugins, data = data["plugins"], {k: v for k, v in data.items() if k != "plugins"}
        if not lenient:
            import_recorded(plugins)
            return from_dict(cls, data)
        with unloaded_variants(import_recorded(plugins, lenient=True)) as missing:
            config = from_dict(cls, data)
        stand_ins = [
            v
            for v in (config.task, config.teacher.model, config.student.model, *config.schedules)
            if isinstance(v, Unloaded)
        ]
        for reason in dict.fromkeys(missing):
            warnings.warn(f"{reason}; showing its tasks, models and schedules by type name", stacklevel=2)
        if stand_ins and not missing:
            names = ", ".join(dict.fromkeys(f"{v.union} type {v.kind!r}" for v in stand_ins))
            warnings.warn(
                f"{names}: not registered by progdistill or a plugin the config records; shown by type "
                "name (pass --import with the module that defines it)",
                stacklevel=2,
            )
        return config


def require_config(config: Any, what: str = "config") -> ExperimentConfig:
    """``config`` itself when it is an :class:`ExperimentConfig`; anything else (a dict, a preset's name) raises
    :class:`ConfigError` saying what to pass instead."""
    if isinstance(config, ExperimentConfig):
        return config
    hint = ""
    if isinstance(config, dict):
        hint = "; use ExperimentConfig.from_dict for a config.json's content"
    elif isinstance(config, str):
        hint = "; use get_preset(name) for a preset, load_config(path) for a config.json"
    raise ConfigError(f"{what} must be an ExperimentConfig (got {type(config).__name__}{hint})")


def load_config(path: str | Path, lenient: bool = False) -> ExperimentConfig:
    """The config in the JSON file ``path`` (a run's config.json), with the plugins it records imported;
    ``lenient``: as :meth:`ExperimentConfig.from_dict`. Raises ``ConfigError`` for an unreadable or invalid file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return ExperimentConfig.from_dict(data, lenient=lenient)


def co_training_only(config: ExperimentConfig) -> bool:
    """Whether every schedule of ``config`` that learns from a teacher is co-training (paper §5's question of
    curricula without stored checkpoints): then the teacher trains once, alongside its students, and only its
    final checkpoint is stored (:func:`progdistill.recipes.runner.run`)."""
    taught = [s for s in config.schedules if s.needs_teacher]
    return bool(taught) and all(s.teacher_source == "live" for s in taught)


def teacher_header(config: ExperimentConfig, co_training: bool | None = None) -> dict[str, Any]:
    """What a teacher trajectory was trained for: task, model and training config, and ``co_training`` when it
    holds only the final checkpoint of a co-training-only run (so that a run grown by a schedule that needs
    the intermediate checkpoints trains a full trajectory instead of reusing it). ``co_training``: whether it is
    (default: :func:`co_training_only` of ``config``; False gives the header without that key)."""
    header = {"task": to_dict(config.task), "model": to_dict(config.teacher.model), "train": to_dict(config.teacher)}
    co_training = co_training_only(config) if co_training is None else co_training
    return {**header, "co_training": True} if co_training else header


def config_hash(config: ExperimentConfig | dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON (sorted keys; a dict: a config.json's content): the identity of a
    run directory."""
    data = without_plugins(config if isinstance(config, dict) else config.to_dict())
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def without_plugins(data: Any) -> Any:
    """A config.json's content without its ``"plugins"``: where a plugin's file lies is no part of a run's identity
    (a run whose plugin file moved is the same run)."""
    return {k: v for k, v in data.items() if k != "plugins"} if isinstance(data, dict) else data


def student_name(schedule, seed: int, way: str | None = None) -> str:
    """The name of the student of ``schedule`` and ``seed``, e.g. "progressive-seed1" (its directory name); a
    student of a further way (:class:`~progdistill.core.settings.Way`) is prefixed by its name,
    "seq-kd-progressive-seed1"."""
    return f"{schedule.label}-seed{seed}" if way is None else f"{way}-{schedule.label}-seed{seed}"


@dataclass(frozen=True)
class StudentRun:
    """One student of an experiment: its ``name`` (directory), ``schedule``, ``seed``, the ``way`` it distils by
    (None: the experiment's own ``distillation``) and that way's ``distillation`` settings. ``label``: the name
    without the seed, the report's row ("progressive", "seq-kd-progressive")."""

    name: str
    schedule: Any
    seed: int
    way: str | None
    distillation: DistillationConfig

    @property
    def label(self) -> str:
        return self.schedule.label if self.way is None else f"{self.way}-{self.schedule.label}"


def student_runs(config: ExperimentConfig) -> list[StudentRun]:
    """Every student of ``config``, seed-major, then way by way (the experiment's own distillation first, then
    ``config.ways`` in order), then schedule by schedule: (schedule 1, seed 0), (schedule 2, seed 0), ...,
    (way 1, schedule 2, seed 0), ... A further way trains only the schedules that learn from a teacher
    (``needs_teacher``): a labels-only student is the same whatever the distillation settings."""
    ways: list[tuple[str | None, DistillationConfig]] = [(None, config.distillation)]
    ways += [(w.name, w.distillation) for w in config.ways]
    return [
        StudentRun(student_name(s, k, way), s, k, way, distillation)
        for k in range(config.seeds)
        for way, distillation in ways
        for s in config.schedules
        if way is None or s.needs_teacher
    ]


def student_names(config: ExperimentConfig) -> list[str]:
    """Every student of ``config``, in the order of :func:`student_runs`."""
    return [run.name for run in student_runs(config)]


def student_stacks(config: ExperimentConfig, students: Sequence[StudentRun]) -> list[list[str]]:
    """The names of ``students`` (in training order) grouped as they train together: one stack of every student
    of a stackable model (MLPs) and way, except that co-training students and schedules that do not stack with
    others form stacks of their own; one student a stack otherwise. A stack's training state is saved to
    ``.resume-<first name>.pt`` (:func:`stack_state_name`), and resumed only by the same stack."""
    if not config.student.model.stackable:
        return [[run.name] for run in students]
    stacks: dict[tuple, list[str]] = {}
    for run in students:
        alone = None if run.schedule.stacks_with_others else run.schedule.label
        stacks.setdefault((run.way, run.schedule.teacher_source, alone), []).append(run.name)
    return list(stacks.values())


def stack_state_name(names: Sequence[str]) -> str:
    """The file name, in the students' directory, of the resume state of the stack of students ``names``."""
    return f".resume-{names[0]}.pt"


def check_task_data(config: ExperimentConfig) -> str | None:
    """Load the task's data (grammar file, corpus) and check it against the models, before anything is written:
    a bad grammar or corpus, a ``task.level`` beyond the grammar's trees, a ``model.max_positions`` shorter
    than the task's sequences (``task.positions_needed()``) or inputs a model cannot represent (a model config's
    optional ``check_task(task)``, e.g. the parity transformer's bits) raise a clear error here rather than after
    the teacher has trained. Returns ``task.data_digest()`` (None for tasks without data), which the run directory
    records so that a grammar or corpus edited in place is never mixed with results trained on the old one."""
    digest = config.task.data_digest()
    for where, distillation in [("", config.distillation)] + [
        (f"ways.{i}.", w.distillation) for i, w in enumerate(config.ways)
    ]:
        top_k = distillation.top_k
        if top_k is not None and top_k > config.task.num_classes:
            raise ConfigError(
                f"{where}distillation.top_k={top_k} is invalid: at most the task's {config.task.num_classes} "
                "classes (its vocabulary)"
            )
    longest = config.task.positions_needed()
    for role, cfg in (("teacher", config.teacher), ("student", config.student)):
        check_inputs = getattr(cfg.model, "check_task", None)  # optional: a model that reads only some inputs
        if check_inputs is not None:
            try:
                check_inputs(config.task)
            except ConfigError as exc:
                raise ConfigError(f"{role}.model: {exc}") from None
        positions = getattr(cfg.model, "max_positions", None)  # an optional field of sequence models' configs
        if longest is not None and positions is not None and positions < longest:
            raise ConfigError(
                f"{role}.model.max_positions={positions} is invalid: the task's sequences need "
                f"{longest} positions; raise it or leave it null (sized from the task)"
            )
    return digest


SKIP_MEMORY_CHECK = "PROGDISTILL_SKIP_MEMORY_CHECK"  # set to 1: run without comparing the estimate to free memory


def _fields(prefix: str, config, names: tuple[str, ...]) -> str:
    return ", ".join(f"{prefix}{n}={getattr(config, n)}" for n in names)


def estimate_memory(config: ExperimentConfig, block_steps: int, eval_chunk: int) -> list[tuple[str, int]] | None:
    """The parts of a run's peak memory in bytes, each labelled with the config fields that size it, computed from
    the config alone (nothing is built or sampled), before any work; None when the task or a model has no
    ``estimated_bytes`` (an optional method: such runs are not estimated).

    The peak is the larger of two phases, each holding the held-out set: the teacher (a stack of one), and the
    students (one stack of schedules x seeds for stackable models such as the MLP, else one at a time) with the
    teacher's weights and the teacher logits of a block. One-label tasks sample the inputs of a block of up to
    ``block_steps`` steps at once, per data stream (one per seed), and stack them into a second copy
    (:mod:`progdistill.train.loop`); evaluation runs in chunks of ``eval_chunk`` rows. Model configs answer
    ``estimated_bytes(input_size, num_classes, batch_size, stack)`` and tasks ``estimated_bytes(batch_size)``, both
    a dict of entries (bytes, names of the fields that size them): the models' "weights" and "activations",
    "forward" (a pass without gradients), the task's "batch" and "eval"."""
    task, teacher, student = config.task, config.teacher, config.student
    estimates = [getattr(v, "estimated_bytes", None) for v in (task, teacher.model, student.model)]
    if any(e is None for e in estimates) or any(isinstance(v, Unloaded) for v in (task, teacher.model, student.model)):
        return None
    n, c = task.input_size, task.num_classes
    taught = [s for s in config.schedules if s.needs_teacher]
    held_out, held_out_fields = task.estimated_bytes(1)["eval"]
    eval_rows = min(eval_chunk, max(1, held_out // max(1, task.estimated_bytes(1)["batch"][0])))
    held_out_part = (f"held-out set ({_fields('task.', task, held_out_fields)})", held_out)

    def phase(role: str, cfg: TrainConfig, stack: int, streams: int, extra_copies: int) -> list[tuple[str, int]]:
        model = f"{role}.model."
        steps = min(block_steps, cfg.eval_every, cfg.steps)
        if role == "teacher":
            steps = min(steps, cfg.checkpoint_every)
        train = cfg.model.estimated_bytes(n, c, cfg.batch_size, stack)
        evaluation = cfg.model.estimated_bytes(n, c, eval_rows, stack)["forward"][0]
        block, block_fields = task.estimated_bytes(steps * cfg.batch_size)["batch"]
        weights, weight_fields = train["weights"]
        activations, activation_fields = train["activations"]
        return [
            (
                f"{role} weights, gradients and optimizer state ({_fields(model, cfg.model, weight_fields)}, "
                f"{stack} model(s))",
                weights,
            ),
            (
                f"{role} activations ({role}.batch_size={cfg.batch_size}, "
                f"{_fields(model, cfg.model, activation_fields)})",
                activations,
            )
            if activations >= evaluation
            else (
                f"{role} evaluation in chunks of {eval_rows} rows ({_fields(model, cfg.model, activation_fields)})",
                evaluation,
            ),
            (
                f"{role} inputs of a block of {steps} steps ({role}.batch_size={cfg.batch_size}, "
                f"{_fields('task.', task, block_fields)}, {streams} stream(s))",
                (2 * streams + extra_copies) * block,
            ),
            held_out_part,
        ]

    peak = phase("teacher", teacher, 1, 1, 0)
    stack = len(config.schedules) * config.seeds if student.model.stackable else 1
    streams = config.seeds if student.model.stackable else 1
    students = phase("student", student, stack, streams, 1 if taught else 0)
    if taught:
        steps = min(block_steps, student.eval_every, student.steps)
        students += [
            (
                f"teacher logits of a block ({steps} steps x {stack} student(s) x student.batch_size="
                f"{student.batch_size} x {c} classes)",
                4 * steps * stack * student.batch_size * c,
            ),
            ("the teacher's weights", teacher.model.estimated_bytes(n, c, 1, 1)["weights"][0] // 4),
        ]
    return max(peak, students, key=lambda parts: sum(b for _, b in parts))


def step_size(config: ExperimentConfig) -> int | None:
    """Parameters x examples of the run's largest training step, the teacher's or the students' stack's, from the
    models' ``estimated_bytes`` ("weights": 16 bytes a parameter, weights, gradients and two moments), computed
    from the config alone; None when a model has no ``estimated_bytes``. It picks the run's thread count
    (:func:`progdistill.core.threads.choose_threads`), so it depends on nothing but the config."""
    task, teacher, student = config.task, config.teacher, config.student
    models = (teacher.model, student.model)
    if not hasattr(task, "input_size") or any(
        getattr(m, "estimated_bytes", None) is None or isinstance(m, Unloaded) for m in models
    ):
        return None
    stack = len(config.schedules) * config.seeds if student.model.stackable else 1
    sizes = [
        cfg.model.estimated_bytes(task.input_size, task.num_classes, cfg.batch_size, m)["weights"][0]
        // 16
        * cfg.batch_size
        for cfg, m in ((teacher, 1), (student, stack))
    ]
    return max(sizes)


def available_memory() -> int | None:
    """Bytes of memory available to a new process: ``MemAvailable`` of /proc/meminfo, else the free physical pages
    (``os.sysconf``); None when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _size(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def check_memory(config: ExperimentConfig, block_steps: int, eval_chunk: int, available: int | None = None) -> None:
    """Refuse a run whose estimated peak memory (:func:`estimate_memory`) exceeds ``available`` bytes (default:
    :func:`available_memory`; CPU memory, also for runs on a GPU, whose data blocks are sampled in CPU memory),
    with one ``ConfigError`` naming the parts that dominate and their fields. Skipped when the estimate or the
    available memory is unknown, or the environment variable ``PROGDISTILL_SKIP_MEMORY_CHECK`` is 1."""
    if os.environ.get(SKIP_MEMORY_CHECK, "") not in ("", "0"):
        return
    parts = estimate_memory(config, block_steps, eval_chunk)
    available = available_memory() if available is None else available
    if parts is None or available is None:
        return
    total = sum(b for _, b in parts)
    if total <= available:
        return
    ranked = sorted(parts, key=lambda p: -p[1])
    dominant = [p for p in ranked if p[1] >= total / 4] or ranked[:1]
    named = "; ".join(f"{label}: {_size(b)}" for label, b in dominant)
    raise ConfigError(
        f"this run needs about {_size(total)} of memory, more than the {_size(available)} available; mostly "
        f"{named}. Use smaller sizes, or set {SKIP_MEMORY_CHECK}=1 to run anyway (nothing was written)"
    )


def build_model(task: Task, model_cfg, seeds: list[int], stream: str):
    """The model of ``model_cfg`` for ``task`` (a stack of ``len(seeds)``), initialized from the generators
    of (seed, ``stream``): ``model_cfg.build(task.input_size, task.num_classes, generators)``."""
    return model_cfg.build(task.input_size, task.num_classes, [generator(s, stream) for s in seeds])


def teacher_pool(config: ExperimentConfig, task: Task, trajectory, device) -> TeacherPool:
    """The teachers of ``config``'s students from ``trajectory``: its checkpoints, loaded into ``config.teacher``'s
    model, and fresh initializations of that model for weight paths (generator (seed, "weight-path-init"))."""
    model = config.teacher.model
    return TeacherPool(
        trajectory,
        lambda: build_model(task, model, [0], "unused"),
        device,
        init=lambda seed: build_model(task, model, [seed], "weight-path-init"),
    )


def planned_checkpoint_steps(train: TrainConfig) -> list[int]:
    """The steps at which a teacher trained with ``train`` saves checkpoints (before any budget thinning)."""
    return sorted({0, train.steps, *range(0, train.steps, train.checkpoint_every)})


def check_planned_checkpoints(config: ExperimentConfig) -> None:
    """Refuse schedules that the checkpoints the teacher will save cannot serve (a k-shot point the teacher will
    not save, a 2-shot-auto with too few checkpoints to find a transition), before any training, every one in
    one message. Building an :class:`ExperimentConfig` checks this too, with its other fields."""
    planned = planned_checkpoint_steps(config.teacher)
    errors = []
    for i, sched in enumerate(config.schedules):
        try:
            sched.validate_teacher_plan(config.teacher, planned, f"schedules.{i}")
        except ConfigError as exc:
            errors.append(exc)
    raise_errors(errors)
