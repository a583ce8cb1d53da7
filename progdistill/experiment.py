"""Experiments: a teacher trajectory, then one student per (schedule, seed), written to a run directory.

Layout of a run directory::

    config.json, config.sha256        the full resolved ExperimentConfig and its hash
    teacher/manifest.json             the teacher trajectory (see progdistill.trajectory)
    teacher/checkpoints/...
    teacher/metrics.jsonl
    students/<schedule>-seed<k>/metrics.jsonl
    tensorboard/                      when TensorBoard is installed
    results.json, summary.md, accuracy.png

A run directory belongs to one config: rerunning the same config reuses the finished teacher and finished
students; a different config is refused (with the differing fields) unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import load_file, save_file

from .config import (ConfigError, DistillationConfig, ScheduleSpec, TaskSpec, TrainConfig, check,
                     check_positive_int, diff, from_dict, to_dict)
from .distributed import barrier, is_main
from .lock import RunLock
from .files import MetricsWriter, read_metrics
from .schedules import CE, KShot, TwoShotAuto
from .trajectory import (Trajectory, TrajectoryError, TrajectoryWriter, atomic_write_json, atomic_write_text,
                         cpu_state)
from .train import Member, TeacherPool, fit, generator, resolve_device

STUDENT_WEIGHTS = "final.safetensors"
RESUME_STATE = "resume.pt"
# Seconds spent by earlier, interrupted invocations of `run` on a run directory (added to its wall time).
EARLIER_WALL_TIME = ".wall-time-of-interrupted-runs.json"
# What a run whose task and teacher are unchanged keeps when --overwrite replaces the rest.
TEACHER_OUTPUTS = ("teacher", "tokenizer", "tensorboard/teacher")
# What a run (and `ablate`) writes into its directory; --overwrite deletes these, the config files last, so that
# an interrupted deletion leaves a directory the next --overwrite still recognizes as a run.
OUTPUTS = ("teacher", "students", "ablations", "tensorboard", "probes", "tokenizer", "results.json", "summary.md",
           "accuracy.png", EARLIER_WALL_TIME, "data.sha256", "config.sha256", "config.json")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: task, teacher and student training, distillation loss and schedules.

    ``seeds`` students are trained per schedule (seeds 0..seeds-1); ``threshold`` is the eval accuracy at
    which ``steps_to_threshold`` is read off (0.9 in the paper's Figure 1).
    """

    preset: str
    task: TaskSpec
    teacher: TrainConfig
    student: TrainConfig
    distillation: DistillationConfig = DistillationConfig()
    schedules: tuple[ScheduleSpec, ...] = (CE(),)
    seeds: int = 3
    threshold: float = 0.9

    def __post_init__(self):
        check(isinstance(self.preset, str) and bool(self.preset), "preset", self.preset, "a non-empty name")
        check(len(self.schedules) >= 1, "schedules", self.schedules, "at least one schedule")
        labels = [s.label for s in self.schedules]
        check(len(set(labels)) == len(labels), "schedules", labels, "schedule labels must be distinct (they name "
              "the students; give k-shot schedules with the same number of points a \"name\")")
        check_positive_int("seeds", self.seeds)
        check(0 < self.threshold <= 1, "threshold", self.threshold, "must lie in (0, 1]")
        for i, sched in enumerate(self.schedules):
            if isinstance(sched, TwoShotAuto):
                check(sched.first_steps < self.student.steps, f"schedules.{i}.first_steps", sched.first_steps,
                      f"must be smaller than student.steps={self.student.steps} (the rest goes to the final "
                      f"checkpoint); lower schedules.{i}.first_steps too or raise student.steps")
            if isinstance(sched, KShot) and len(sched.points) > 1:
                before_last = sum(count for _, count in sched.points[:-1])
                check(before_last < self.student.steps, f"schedules.{i}.points", [list(p) for p in sched.points],
                      f"its points before the last take {before_last} student steps, not fewer than "
                      f"student.steps={self.student.steps}, so the last checkpoint would never be used; lower "
                      f"the step counts in schedules.{i}.points too or raise student.steps")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        return from_dict(cls, data)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return ExperimentConfig.from_dict(data)


def teacher_header(config: ExperimentConfig) -> dict[str, Any]:
    return {"task": to_dict(config.task), "model": to_dict(config.teacher.model), "train": to_dict(config.teacher)}


def config_hash(config: ExperimentConfig | dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON (sorted keys; a dict: a config.json's content): the identity of a
    run directory."""
    data = config if isinstance(config, dict) else config.to_dict()
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def check_task_data(config: ExperimentConfig) -> str | None:
    """Load the task's data (grammar file, corpus) and check it against the models, before anything is written:
    a bad grammar or corpus, a ``task.level`` beyond the grammar's trees or a ``model.max_positions`` shorter
    than the task's sequences raise a clear error here rather than after the teacher has trained.
    Returns the sha256 of the data's content (None for tasks without a data file), which the run directory
    records so that a grammar or corpus edited in place is never mixed with results trained on the old one."""
    task = config.task
    content = None
    if hasattr(task, "load_grammar"):
        content = task.load_grammar().to_text()
        task.sample_batch(2, generator(0, "check"))  # e.g. a task.level the trees do not have
        longest = max(b.inputs.shape[1] for b in task.eval_batches())
    elif hasattr(task, "documents"):
        train, held_out = task.documents()
        content = "\x00".join(train) + "\x01" + "\x00".join(held_out)
        longest = task.input_size
    if content is None:
        return None
    for role, cfg in (("teacher", config.teacher), ("student", config.student)):
        positions = getattr(cfg.model, "max_positions", None)
        if positions is not None and positions < longest:
            raise ConfigError(f"{role}.model.max_positions={positions} is invalid: the task's sequences need "
                              f"{longest} positions; raise it or leave it null (sized from the task)")
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def claim_directory(out: Path, config: ExperimentConfig, overwrite: bool, data_digest: str | None = None) -> None:
    """Make ``out`` the run directory of ``config`` (``config.json`` plus its hash in ``config.sha256``, and the
    task data's hash in ``data.sha256``); refuse a directory that holds another run's results, listing the
    differing fields, or results trained on a grammar / corpus whose content has changed since."""
    saved, digest, data = out / "config.json", out / "config.sha256", out / "data.sha256"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    recorded_data = data.read_text(encoding="utf-8").strip() if data.exists() else None
    if saved.exists() and recorded_data not in (None, data_digest) and not overwrite:
        raise ConfigError(f"{out} holds results trained on other task data: the content of the grammar or corpus "
                          "file named in the config has changed since (its sha256 differs from data.sha256); "
                          "choose another --out or pass --overwrite to replace them")
    new = config.to_dict()
    if saved.exists() and recorded_data not in (None, data_digest):
        _remove_outputs(out)  # --overwrite on a run whose data changed: drop its results (config files last)
    elif saved.exists():
        try:
            old = json.loads(saved.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        recorded = digest.read_text(encoding="utf-8").strip() if digest.exists() else None
        if not _is_run_config(old):  # e.g. a Hugging Face model directory: never ours to replace
            raise ConfigError(f"{out} is not a progdistill run directory (its config.json is not a progdistill "
                              "config); choose another --out (--overwrite replaces only progdistill runs)")
        if old != new or recorded not in (None, config_hash(config)):
            edited = recorded not in (None, config_hash(old))
            same_teacher = not edited and all(old.get(k) == new[k] for k in ("task", "teacher"))
            if not overwrite:
                changes = diff(old, new)
                if edited:
                    changes.insert(0, f"config.json no longer matches the hash in {digest.name}; it was edited")
                raise ConfigError(f"{out} holds results of a different config ({'; '.join(changes[:8])}); "
                                  "choose another --out or pass --overwrite to replace them" +
                                  (" (the task and teacher are unchanged: --overwrite keeps the finished teacher "
                                   "and trains only the students again)" if same_teacher else ""))
            # The teacher depends on the task and teacher config only (train_teacher checks its trajectory's
            # header again before reusing it); everything else is replaced.
            _remove_outputs(out, keep=TEACHER_OUTPUTS if same_teacher else ())
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        # never delete in a directory that is not ours, even with --overwrite
        raise ConfigError(f"{out} is not empty and is not a progdistill run directory (no config.json); "
                          "choose another --out (--overwrite replaces only progdistill runs)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, new)
    atomic_write_text(digest, config_hash(config) + "\n")
    if data_digest is not None:
        atomic_write_text(data, data_digest + "\n")
    _remove_stale_temporaries(out)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the ``.NAME.tmpPID`` files that atomic writes (:mod:`progdistill.trajectory`; figures as
    ``.STEM.tmpPID.png``) leave behind when a process is killed mid-write; called under the run's lock, so no
    live writer owns one."""
    for path in out.rglob(".*.tmp*"):
        if re.fullmatch(r"\..+\.tmp\d+(\.\w+)?", path.name) and path.is_file():  # also .accuracy.tmpPID.png
            path.unlink()


def _remove_outputs(out: Path, keep: Sequence[str] = ()) -> None:
    """Delete what a run writes into ``out`` (:data:`OUTPUTS`), nothing else, except the paths ``keep``
    (an output's name, or "NAME/CHILD" to keep one entry of the directory NAME)."""
    for name in OUTPUTS:
        path = out / name
        if name in keep:
            continue
        kept_children = {k.split("/", 1)[1] for k in keep if k.startswith(name + "/")}
        targets = [c for c in path.iterdir() if c.name not in kept_children] if kept_children and path.is_dir() \
            else [path]
        for target in targets:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _is_run_config(data: Any) -> bool:
    """Whether a parsed config.json has the shape of an ExperimentConfig (a run directory's, maybe another
    version's or hand-edited), as opposed to some other tool's config.json."""
    return isinstance(data, dict) and {"preset", "task", "teacher", "student", "schedules"} <= set(data)


def _build(config: ExperimentConfig, model_cfg, seeds: list[int], stream: str):
    task = config.task
    size = task.input_size if hasattr(task, "input_size") else task.n  # token tasks: positions; parity: bits
    return model_cfg.build(size, task.num_classes, [generator(s, stream) for s in seeds])


def train_teacher(config: ExperimentConfig, out: Path, device: str = "auto", log=print) -> Trajectory:
    """Train the teacher into ``out/teacher`` or reuse a finished trajectory of the same config."""
    directory = out / "teacher"
    header = teacher_header(config)
    try:
        existing = Trajectory(directory)
    except TrajectoryError:
        existing = None
    if existing is not None and existing.complete and existing.header == header:
        missing = [step for step in existing.steps if not (directory / existing.entry(step)["file"]).exists()]
        if missing:  # files are hashed when students load them; a missing one is named now
            raise TrajectoryError(f"the finished teacher trajectory {directory} is damaged: the checkpoint file "
                                  f"of step {missing[0]} is missing ({len(missing)} missing); restore it, or delete "
                                  f"{directory} to train the teacher again")
        log(f"reusing finished teacher trajectory {directory} ({len(existing.steps)} checkpoints)")
        return existing
    state_path = directory / RESUME_STATE
    resuming = state_path.exists()
    barrier()  # all processes have looked before rank 0 changes anything
    writer = metrics = None
    if is_main():
        if directory.exists() and (existing is None or existing.header != header):
            log(f"discarding the unusable teacher directory {directory}; training the teacher again")
            shutil.rmtree(directory)
            resuming = False
        writer = TrajectoryWriter(directory, header, max_checkpoints=config.teacher.max_checkpoints)
        if resuming:
            log(f"resuming the teacher from its saved state {state_path}")
        else:
            writer.truncate(after_step=-1)
        metrics = MetricsWriter(directory / "metrics.jsonl", out / "tensorboard" / "teacher", "teacher/")
    dev = resolve_device(device)
    cfg = config.teacher
    model = _build(config, cfg.model, [cfg.seed], "teacher-init")
    try:
        fit(config.task, model, cfg, [Member("teacher", cfg.seed, CE(), metrics)], data_stream="teacher-data",
            checkpoint_writer=writer, device=dev, desc="teacher", state_path=state_path)
    finally:
        if metrics is not None:
            metrics.close()
    if writer is not None:
        writer.finish()
    barrier()
    return Trajectory(directory)


def student_name(schedule, seed: int) -> str:
    return f"{schedule.label}-seed{seed}"


def _finished(path: Path, steps: int) -> bool:
    if not path.exists() or not (path.parent / STUDENT_WEIGHTS).exists():
        return False
    records = read_metrics(path)
    return bool(records) and records[-1]["step"] == steps


def train_students(config: ExperimentConfig, out: Path, trajectory: Trajectory, device: str = "auto",
                   log=print, runs: list[tuple[str, Any, int]] | None = None,
                   directory: Path | None = None) -> int:
    """Train every student not yet finished into ``directory/<name>/`` (default ``out/students``); returns
    how many were trained (0 when all had finished).

    ``runs``: (name, schedule, seed) triples, default one per (schedule, seed) of the config. Auto schedules
    are resolved against ``trajectory`` first; stackable students (MLPs) all train in one stack.
    """
    cfg = config.student
    directory = directory or out / "students"
    if runs is None:
        runs = [(student_name(s, k), s, k) for k in range(config.seeds) for s in config.schedules]
    todo = [(name, s, k) for name, s, k in runs if not _finished(directory / name / "metrics.jsonl", cfg.steps)]
    if not todo:
        log("all students already finished")
        return 0
    trajectory.verify()  # a missing or corrupted checkpoint stops here, before any student file is written
    resolved = {}
    for _, sched, _ in todo:
        if sched in resolved:  # the same schedule for another seed
            continue
        resolved[sched] = sched.resolve(trajectory) if hasattr(sched, "resolve") else sched
        if not isinstance(sched, CE):
            resolved[sched].validate(trajectory.steps)
        if resolved[sched] is not sched:
            log(f"{sched.label}: {resolved[sched]}")
    dev = resolve_device(device)
    teacher_cfg = config.teacher.model
    teachers = TeacherPool(trajectory, lambda: _build(config, teacher_cfg, [0], "unused"), dev)
    members = []
    for name, sched, seed in todo:
        writer = None
        if is_main():
            writer = MetricsWriter(directory / name / "metrics.jsonl", out / "tensorboard" / name, "student/")
        members.append(Member(name, seed, resolved[sched], writer))
    # Stackable models (MLPs) train all students in one stack; others one student at a time.
    groups = [members] if getattr(cfg.model, "stackable", False) else [[m] for m in members]
    try:
        for group in groups:
            log(f"training {len(group)} student(s) together: {', '.join(m.name for m in group)}")
            model = _build(config, cfg.model, [m.seed for m in group], "student-init")
            state_path = directory / f".resume-{group[0].name}.pt"
            if state_path.exists():
                log(f"resuming from the saved state {state_path}")
            fit(config.task, model, cfg, group, data_stream="student-data", distillation=config.distillation,
                teachers=teachers, device=dev, desc="students" if len(group) > 1 else group[0].name,
                state_path=state_path)
            for m, mem in enumerate(group):
                if is_main():
                    save_file(_member_state(model, m, len(group)), directory / mem.name / STUDENT_WEIGHTS)
    finally:
        for mem in members:
            if mem.writer is not None:
                mem.writer.close()
    barrier()
    return len(todo)


def planned_checkpoint_steps(train: TrainConfig) -> list[int]:
    """The steps at which a teacher trained with ``train`` saves checkpoints (before any budget thinning)."""
    return sorted({0, train.steps, *range(0, train.steps, train.checkpoint_every)})


def _check_k_shot_points(config: ExperimentConfig) -> None:
    """Refuse k-shot schedules naming checkpoints the teacher will not save, before any training."""
    planned = planned_checkpoint_steps(config.teacher)
    if any(isinstance(s, TwoShotAuto) for s in config.schedules) and len(planned) < 3:
        raise ConfigError(f"2-shot-auto needs at least 3 teacher checkpoints to locate a transition; "
                          f"teacher.steps={config.teacher.steps} with teacher.checkpoint_every="
                          f"{config.teacher.checkpoint_every} saves {len(planned)}")
    if config.teacher.max_checkpoints is not None:
        return  # thinning decides later which steps survive; checked against the trajectory then
    for i, sched in enumerate(config.schedules):
        if isinstance(sched, KShot):
            sched.validate(planned, field=f"schedules.{i}.points")  # named as --set takes it


def _member_state(model, m: int, size: int) -> dict:
    """The weights of model m of a stack (a stack of one keeps its leading dimension), as CPU tensors."""
    state = model.state_dict()
    if getattr(model, "num_models", 1) == size and size > 1:
        state = {k: v[m:m + 1] for k, v in state.items()}
    return cpu_state(state)


def _prepare(config: ExperimentConfig, out: Path) -> None:
    """Task data that lives beside the run (e.g. a text task's tokenizer): load it, or make and save it."""
    if hasattr(config.task, "prepare"):
        config.task.prepare(out)


def load_model(config: ExperimentConfig, out: str | Path, which: str, step: int | None = None):
    """A trained model of run directory ``out``, frozen in eval mode: ``which`` = "teacher" (at checkpoint
    ``step``, default the final one) or a student name such as "progressive-seed0" (its final weights)."""
    out = Path(out)
    if is_main():
        _prepare(config, out)  # a text task's vocabulary size comes from the run's tokenizer
    if which == "teacher":
        trajectory = Trajectory(out / "teacher")
        state = trajectory.load(trajectory.final_step if step is None else step)
        model_cfg = config.teacher.model
    else:
        path = out / "students" / which / STUDENT_WEIGHTS
        if not path.exists():
            raise TrajectoryError(f"student weights {path} are missing (has the student finished?)")
        state = load_file(str(path))
        model_cfg = config.student.model
    model = _build(config, model_cfg, [0], "unused")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def finished_results(out: Path) -> dict[str, Any] | None:
    """The results.json of a run that finished before, or None (absent or unreadable)."""
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None


def run(config: ExperimentConfig, out: str | Path, overwrite: bool = False, device: str = "auto",
        log=print) -> dict[str, Any]:
    """Run the whole experiment into ``out`` and return ``results.json``'s content."""
    out = Path(out)
    started = time.perf_counter()
    resolve_device(device)  # a bad --device is refused before anything is written
    _check_k_shot_points(config)
    data_digest = check_task_data(config)  # a bad grammar, corpus or size is refused before anything is written
    _check_probe_fits(config)
    for role, cfg in (("teacher", config.teacher), ("student", config.student)):
        if cfg.eval_every > cfg.steps and is_main():
            log(f"note: {role}.eval_every={cfg.eval_every} exceeds {role}.steps={cfg.steps}: the {role} is evaluated "
                f"only at steps 0 and {cfg.steps}, so its steps-to-threshold can only read {cfg.steps}")
    if not is_main():  # data-parallel workers: train alongside rank 0, which alone writes
        barrier()
        _prepare(config, out)
        trajectory = train_teacher(config, out, device, log=lambda *a: None)
        train_students(config, out, trajectory, device, log=lambda *a: None)
        barrier()
        return {}
    with RunLock(out):
        try:
            claim_directory(out, config, overwrite, data_digest)
        finally:
            barrier()  # workers wait until the directory is claimed (or the claim failed)
        _prepare(config, out)
        previous = finished_results(out)
        if previous is not None:
            try:  # a teacher deleted since is retrained, and then nothing is "unchanged"
                previous = previous if Trajectory(out / "teacher").complete else None
            except TrajectoryError:
                previous = None
        earlier = _earlier_wall_time(out)
        try:
            results = _train_probe_report(config, out, device, log, previous, earlier, started)
        except BaseException:  # interrupted (Ctrl-C, an error): the seconds spent count towards the run's wall time
            atomic_write_json(out / EARLIER_WALL_TIME, {"seconds": earlier + time.perf_counter() - started})
            raise
        (out / EARLIER_WALL_TIME).unlink(missing_ok=True)
        barrier()
        return results


def _train_probe_report(config: ExperimentConfig, out: Path, device: str, log, previous: dict[str, Any] | None,
                        earlier: float, started: float) -> dict[str, Any]:
    """The teacher, the students, the end-of-run probes and the report of :func:`run` (rank 0)."""
    from .probes.ngram import WINDOWS
    from .probes.runs import NGRAM_TASKS, _probe_ngram, probe_generation
    from .report import write_report

    trajectory = train_teacher(config, out, device, log)
    trained = train_students(config, out, trajectory, device, log)
    # A rerun of a finished run trains nothing: it keeps the probes and the original wall time instead of
    # recomputing the one and replacing the other with the seconds this no-op took.
    unchanged = previous is not None and trained == 0
    probes = out / "probes"
    if config.task.kind in NGRAM_TASKS and not (unchanged and (probes / "ngram-summary.json").exists()):
        _probe_ngram(out, config, True, WINDOWS, log)  # the n-gram (and non-terminal) probes
    if config.task.kind == "pcfg-lm" and not (unchanged and (probes / "generation-summary.json").exists()):
        probe_generation(out, config, log)  # how many sampled sentences the grammar accepts
    if unchanged:
        log(f"{out} was already complete: nothing retrained, results kept (wall time of the original run)")
    wall = previous["wall_time_s"] if unchanged else earlier + time.perf_counter() - started
    return write_report(out, wall_time_s=wall)


def _check_probe_fits(config: ExperimentConfig) -> None:
    """A masked LM run ends with the n-gram probe (windows :data:`~progdistill.probes.ngram.WINDOWS`): refuse,
    before any training, task sequences too short for its widest window."""
    from .probes.ngram import WINDOWS
    from .probes.runs import NGRAM_TASKS, _ngram_inputs

    if config.task.kind in NGRAM_TASKS:
        try:
            _ngram_inputs(config.task, WINDOWS)
        except ValueError as exc:
            raise ConfigError(f"task: a {config.task.kind} run ends with the n-gram probe (windows "
                              f"{' '.join(map(str, WINDOWS))}), but {exc}; use a grammar, corpus or sequence length "
                              "with longer sequences (nothing was written)") from None


def _earlier_wall_time(out: Path) -> float:
    """Seconds recorded by interrupted earlier invocations on ``out`` (0 when none, or unreadable). A process
    killed outright (SIGKILL) records nothing, so the total is then a lower bound."""
    try:
        return float(json.loads((out / EARLIER_WALL_TIME).read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
