"""Running an experiment: a teacher trajectory, then one student per (schedule, seed), then the task's
end-of-run probes and the report, all into one run directory (:mod:`progdistill.store.rundir`).

``run`` is idempotent: rerunning the same config reuses the finished teacher and finished students, resumes
interrupted ones from their saved state, and keeps the results of a finished run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from progdistill.core.config import ConfigError
from progdistill.core.distributed import barrier, is_main, rank_world, resolve_device
from progdistill.core.files import MetricsWriter, atomic_write, read_metrics
from progdistill.core.settings import DistillationConfig
from progdistill.distill.schedules import CE
from progdistill.experiment import (
    ExperimentConfig,
    StudentRun,
    build_model,
    check_memory,
    check_planned_checkpoints,
    check_task_data,
    co_training_only,
    require_config,
    stack_state_name,
    student_runs,
    student_stacks,
    teacher_header,
    teacher_pool,
)
from progdistill.probes.registry import end_of_run_probes
from progdistill.recipes.presets import preset_changes
from progdistill.store.environment import environment
from progdistill.store.lock import RunLock
from progdistill.store.report import write_report
from progdistill.store.rundir import RESUME_STATE, STUDENT_WEIGHTS, RunDir
from progdistill.store.trackers import hyperparameters, resolve_report_to, start_trackers
from progdistill.store.trajectory import Trajectory, TrajectoryError, TrajectoryWriter, cpu_state
from progdistill.tasks.base import Task
from progdistill.train.cotraining import cotrain
from progdistill.train.evaluation import EVAL_CHUNK
from progdistill.train.loop import BLOCK_STEPS, Member, fit, load_state


def train_teacher(
    config: ExperimentConfig,
    out: str | Path,
    device: str = "auto",
    log=print,
    task: Task | None = None,
    on_record=None,
    report_to: Sequence[str] | None = None,
) -> Trajectory:
    """Train the teacher into ``out/teacher`` or reuse a finished trajectory of the same config; returns it.
    ``task``: the prepared task (default ``config.task``); ``on_record``: passed to :func:`~progdistill.train.loop.fit`;
    ``report_to``: experiment trackers (:func:`progdistill.store.trackers.resolve_report_to`; default TensorBoard when
    installed).
    Raises ``TrajectoryError`` for a teacher directory it would reuse or resume from but cannot read
    (:meth:`~progdistill.store.rundir.RunDir.reusable_teacher`), before anything is deleted or written."""
    rundir = RunDir(out)
    task = config.task if task is None else task
    directory = rundir.teacher
    header = teacher_header(config)
    existing = rundir.reusable_teacher(config)
    state_path = directory / RESUME_STATE
    if existing is not None and not existing.complete and not state_path.exists():
        # stopped between its last checkpoint and being marked complete (RunDir.reusable_teacher checked it)
        if is_main():
            TrajectoryWriter(directory, header, max_checkpoints=config.teacher.max_checkpoints).finish()
        barrier()
        existing = Trajectory(directory)
    if existing is not None and existing.complete:
        log(f"reusing finished teacher trajectory {directory} ({len(existing.steps)} checkpoints)")
        return existing
    resuming = existing is not None and load_state(state_path, ["teacher"]) is not None
    barrier()  # all processes have looked before rank 0 changes anything
    writer = metrics = None
    if is_main():
        if directory.exists() and existing is None:  # nothing worth keeping (RunDir.reusable_teacher)
            log(f"starting the teacher over in {directory}")
            shutil.rmtree(directory)
        writer = TrajectoryWriter(directory, header, max_checkpoints=config.teacher.max_checkpoints)
        if resuming:
            log(f"resuming the teacher from its saved state {state_path}")
        else:
            state_path.unlink(missing_ok=True)
            writer.truncate(after_step=-1)
        metrics = MetricsWriter(
            directory / "metrics.jsonl",
            start_trackers(report_to, rundir.path, "teacher", hyperparameters(config, "teacher")),
        )
    dev = resolve_device(device)
    cfg = config.teacher
    model = build_model(task, cfg.model, [cfg.seed], "teacher-init")
    if is_main():
        rundir.clear_failure(directory)
    try:
        fit(
            task,
            model,
            cfg,
            [Member("teacher", cfg.seed, CE(), metrics)],
            data_stream="teacher-data",
            checkpoint_writer=writer,
            device=dev,
            desc="teacher",
            state_path=state_path,
            on_record=on_record,
        )
    except Exception as exc:  # for `progdistill status`
        if is_main():
            rundir.record_failure(directory, exc)
        raise
    finally:
        if metrics is not None:
            metrics.close()
    if writer is not None:
        writer.finish()
    barrier()
    return Trajectory(directory)


def train_students(
    config: ExperimentConfig,
    out: str | Path,
    trajectory: Trajectory | None,
    device: str = "auto",
    log=print,
    runs: list[StudentRun] | None = None,
    directory: Path | None = None,
    task: Task | None = None,
    on_record=None,
    report_to: Sequence[str] | None = None,
) -> int:
    """Train every student not yet finished into ``directory/<name>/`` (default ``out/students``); returns
    how many were trained (0 when all had finished).

    ``runs``: the students to train, default every one of the config (:func:`~progdistill.experiment.student_runs`:
    one per schedule and seed, and per further way for the schedules that learn from a teacher); each trains with
    its way's distillation settings. Schedules are resolved against ``trajectory`` first (2-shot-auto picks its
    checkpoint); stackable students (MLPs) of one way train in one stack.
    ``task``: the prepared task (default ``config.task``); ``on_record``: passed to
    :func:`~progdistill.train.loop.fit`; ``report_to``: as for :func:`train_teacher`.
    """
    rundir = RunDir(out)
    task = config.task if task is None else task
    cfg = config.student
    directory = directory or rundir.students
    if runs is None:
        runs = student_runs(config)
    todo = [run for run in runs if not rundir.student_finished(run.name, cfg.steps, directory)]
    if not todo:
        log("all students already finished")
        return 0
    resolved = {}
    if trajectory is None:  # co-training students only: their teacher trains alongside them
        if any(run.schedule.teacher_source != "live" for run in todo):
            raise ValueError("train_students needs the teacher trajectory for students other than co-training ones")
        resolved = {run.schedule: run.schedule for run in todo}
    for sched in [run.schedule for run in todo] if trajectory is not None else ():
        if sched in resolved:  # the same schedule for another seed
            continue
        resolved[sched] = sched.resolve(trajectory)
        if resolved[sched] is not sched:
            log(f"{sched.label}: {resolved[sched]}")
    dev = resolve_device(device)
    teachers = None if trajectory is None else teacher_pool(config, task, trajectory, dev)
    if teachers is not None:
        try:  # a schedule the trajectory cannot serve, a missing or corrupted checkpoint: before any student file
            teachers.check(resolved.values())  # (fit finds them checked)
        except TrajectoryError as exc:
            raise rundir.damaged_teacher(exc) from None
    members = []
    for run in todo:
        writer = None
        if is_main():
            writer = MetricsWriter(
                directory / run.name / "metrics.jsonl",
                start_trackers(
                    report_to, rundir.path, run.name, hyperparameters(config, run.name, run.schedule, run.seed, run.way)
                ),
            )
        members.append(Member(run.name, run.seed, resolved[run.schedule], writer))
    # Stackable models (MLPs) train all students of a way in one stack; others one student at a time. Students
    # of a teacher that trains alongside them (co-training), and of schedules that do not stack with others,
    # form stacks of their own.
    by_name = {m.name: m for m in members}
    distillation = {run.name: run.distillation for run in todo}
    stacks = student_stacks(config, todo)
    groups = [[by_name[name] for name in stack] for stack in stacks]
    try:
        for group in groups:
            with ExitStack() as held:  # each student's lock: jobs of a launcher train a run's students side by side
                for mem in group if is_main() else ():
                    held.enter_context(RunLock(directory / mem.name))
                    rundir.clear_failure(directory / mem.name)
                log(f"training {len(group)} student(s) together: {', '.join(m.name for m in group)}")
                model = build_model(task, cfg.model, [m.seed for m in group], "student-init")
                state_path = directory / stack_state_name([m.name for m in group])
                if state_path.exists():
                    log(f"resuming from the saved state {state_path}")
                try:
                    way = distillation[group[0].name]  # a stack shares its way
                    if group[0].schedule.teacher_source == "live":
                        _cotrain(config, task, trajectory, model, group, directory, dev, log, on_record, way)
                        continue
                    fit(
                        task,
                        model,
                        cfg,
                        group,
                        data_stream="student-data",
                        distillation=way,
                        teachers=teachers,
                        device=dev,
                        desc="students" if len(group) > 1 else group[0].name,
                        state_path=state_path,
                        on_record=on_record,
                    )
                except Exception as exc:  # for `progdistill status`; Ctrl-C is no failure
                    for mem in group if is_main() else ():
                        rundir.record_failure(directory / mem.name, exc)
                    raise
                for index, mem in enumerate(group):
                    if is_main():
                        _save_weights(_member_state(model, index, len(group)), directory / mem.name / STUDENT_WEIGHTS)
    finally:
        for mem in members:
            if mem.writer is not None:
                mem.writer.close()
    barrier()
    return len(todo)


def _cotrain(
    config: ExperimentConfig,
    task: Task,
    trajectory: Trajectory | None,
    model,
    group: list[Member],
    directory: Path,
    device,
    log,
    on_record,
    distillation: DistillationConfig,
) -> None:
    """Co-training students (:mod:`progdistill.train.cotraining`): the teacher's training runs again, in step with them,
    from its own initialization and data (the same teacher, bit for bit on CPU with the same thread count;
    cotraining.json says how far its final weights are from the trajectory's). Such a group is not resumed."""
    teacher = config.teacher
    # Beside a stored trajectory the live teacher replays its training (compared with it); without one
    # (a co-training-only run) it is the run's teacher and writes into the teacher's directory.
    teacher_dir = RunDir(directory.parent).teacher if trajectory is None else directory / f"{group[0].name}-teacher"
    summary = cotrain(
        task,
        build_model(task, teacher.model, [teacher.seed], "teacher-init"),
        teacher,
        teacher.seed,
        model,
        config.student,
        group,
        dict(
            data_stream="student-data",
            distillation=distillation,
            desc="co-training students",
            on_record=on_record,
        ),
        teacher_dir,
        device,
        None if trajectory is None else trajectory.load(trajectory.final_step),
    )
    log(
        f"co-training: {summary['wall_time_s']:.1f} s for the teacher and {len(group)} student(s)"
        + (
            ""
            if trajectory is None
            else "; final teacher weights differ from the trajectory's by at most "
            f"{summary['final_max_abs_diff_vs_trajectory']:.3g}"
        )
    )
    for m, mem in enumerate(group):
        if is_main():
            _save_weights(_member_state(model, m, len(group)), directory / mem.name / STUDENT_WEIGHTS)


def _co_train_teacher(
    config: ExperimentConfig, rundir: RunDir, task: Task, device: str, log, on_record, report_to
) -> int:
    """A co-training-only run's teacher and co-training students, trained together in one pass
    (:func:`progdistill.train.cotraining.cotrain`): the teacher's metrics go to ``teacher/metrics.jsonl`` and its
    final weights become the run's trajectory, one checkpoint, which :func:`train_teacher` then reuses. Returns
    how many students it trained (0 when that trajectory is already complete)."""
    header = teacher_header(config)
    existing = rundir.reusable_teacher(config)  # a damaged teacher is refused before anything is deleted
    if existing is not None and existing.complete:
        return 0
    if rundir.teacher.exists():  # an interrupted co-training run: co-training starts over (it is not resumed)
        log(f"co-training starts over: discarding the unfinished teacher directory {rundir.teacher}")
        shutil.rmtree(rundir.teacher)
    runs = [run for run in student_runs(config) if run.schedule.teacher_source == "live"]
    for run in runs:  # their students depended on the discarded teacher
        shutil.rmtree(rundir.students / run.name, ignore_errors=True)
    trained = train_students(
        config, rundir.path, None, device, log, runs=runs, task=task, on_record=on_record, report_to=report_to
    )
    final = rundir.teacher / "final.safetensors"
    last = read_metrics(rundir.teacher / "metrics.jsonl")[-1]
    writer = TrajectoryWriter(rundir.teacher, header)
    writer.save(
        config.teacher.steps,
        load_file(str(final)),
        {k: v for k, v in last.items() if k.startswith("eval_") and v is not None},
    )
    writer.finish()
    final.unlink()
    return trained


def _save_weights(state: dict, path: Path) -> None:
    """safetensors through a temporary file and a rename: a student killed mid-save leaves no half-written
    weights beside a finished metrics.jsonl (which would count it as finished)."""
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def _member_state(model, m: int, size: int) -> dict:
    """The weights of model m of a stack of ``size`` (a stack of one keeps its leading dimension), as CPU
    tensors."""
    state = model.state_dict()
    if size > 1:
        state = {k: v[m : m + 1] for k, v in state.items()}
    return cpu_state(state)


def check_run(config: ExperimentConfig, device: str = "auto", log=print):
    """Everything :func:`run` checks from the config alone before writing anything (see there); returns the
    task data's digest and the end-of-run probes. Raises ``ConfigError``."""
    require_config(config)  # a dict or a name gives one clear error, not an AttributeError deep inside
    resolve_device(device)  # a bad --device is refused before anything is written
    if co_training_only(config) and rank_world()[1] > 1:
        raise ConfigError(
            "schedules: a co-training-only run trains its teacher alongside the students in one "
            "process; run it without torchrun"
        )
    check_planned_checkpoints(config)
    check_memory(config, BLOCK_STEPS, EVAL_CHUNK)  # absurd sizes: before the data (the held-out set) is built
    data_digest = check_task_data(config)  # a bad grammar, corpus or size is refused before anything is written
    probes = end_of_run_probes(config.task)
    for probe in probes:
        probe.check(config)
    for role, cfg in (("teacher", config.teacher), ("student", config.student)):
        if cfg.eval_every > cfg.steps and is_main():
            log(
                f"note: {role}.eval_every={cfg.eval_every} exceeds {role}.steps={cfg.steps}: the {role} is evaluated "
                f"only at steps 0 and {cfg.steps}, so its steps-to-threshold can only read {cfg.steps}"
            )
    return data_digest, probes


def run(
    config: ExperimentConfig,
    out: str | Path,
    overwrite: bool = False,
    device: str = "auto",
    log=print,
    retrain_teacher: bool = False,
    report_to: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the whole experiment into run directory ``out`` and return ``results.json``'s content.

    Everything the config alone can refuse (a bad device, a run whose estimated memory exceeds the memory
    available (:func:`progdistill.experiment.check_memory`), k-shot points the teacher will not save, task data
    that does not load or fit the models, an end-of-run probe the task's sequences are too short for) raises
    ``ConfigError`` before anything is written; so does a directory holding another config's run unless
    ``overwrite`` (:meth:`progdistill.store.rundir.RunDir.claim`). A teacher that ``overwrite`` would keep is verified
    before anything is deleted; a damaged one raises ``TrajectoryError`` naming the way out (and so does any file
    a rerun would reuse or resume from: :meth:`~progdistill.store.rundir.RunDir.check_reusable`),
    ``retrain_teacher``: delete the teacher and everything trained from it, and train them again. ``report_to``:
    experiment trackers of every model (:mod:`progdistill.store.trackers`; default TensorBoard when installed), an
    unknown or uninstalled one refused before anything is written. Raises ``RunLockedError`` while another
    process runs in ``out``."""
    rundir = RunDir(out)
    started = time.perf_counter()
    data_digest, probes = check_run(config, device, log)
    report_to = resolve_report_to(report_to)  # so is an unknown or uninstalled tracker
    if not is_main():  # data-parallel workers: train alongside rank 0, which alone writes
        barrier()
        task = rundir.task(config)
        trajectory = train_teacher(config, out, device, log=lambda *a: None, task=task)
        train_students(config, out, trajectory, device, log=lambda *a: None, task=task)
        barrier()
        return {}
    with RunLock(rundir.path):
        try:
            rundir.claim(config, overwrite, data_digest, retrain_teacher)
        finally:
            barrier()  # workers wait until the directory is claimed (or the claim failed)
        task = rundir.task(config)
        previous = rundir.finished_results()
        if previous is not None:
            try:  # a teacher deleted since is retrained, and then nothing is "unchanged"
                previous = previous if Trajectory(rundir.teacher).complete else None
            except TrajectoryError:
                previous = None
        earlier = rundir.earlier_wall_time()
        recorded: list[int] = []

        def persist_wall_time(step: int) -> None:  # at every record: a SIGKILL loses only the time since the last
            recorded.append(step)
            rundir.record_interrupted_wall_time(earlier + time.perf_counter() - started)

        try:
            results = _train_probe_report(
                config, rundir, task, probes, device, log, previous, earlier, started, persist_wall_time, report_to
            )
        except BaseException:  # interrupted (Ctrl-C, an error): the seconds spent count towards the run's wall time
            if recorded:  # (before the first record: a check refused the run, and it writes nothing)
                with suppress(OSError):  # (a full disk: the error to report is the one propagating)
                    rundir.record_interrupted_wall_time(earlier + time.perf_counter() - started)  # (SIGKILL: above)
            raise
        rundir.clear_interrupted_wall_time()
        barrier()
        return results


def _train_probe_report(
    config: ExperimentConfig,
    rundir: RunDir,
    task: Task,
    probes,
    device: str,
    log,
    previous: dict[str, Any] | None,
    earlier: float,
    started: float,
    persist_wall_time,
    report_to: Sequence[str] = (),
) -> dict[str, Any]:
    """The teacher, the students, the end-of-run probes and the report of :func:`run` (rank 0). The run's
    wall time is that of every invocation that worked on it: a finished run's recorded one (when a rerun
    trains what is missing), earlier interrupted ones (``earlier``), and this one; ``persist_wall_time(step)``
    records it at every evaluation record."""

    trained = 0
    if co_training_only(config):  # the teacher trains once, alongside its students: its final checkpoint only
        trained = _co_train_teacher(config, rundir, task, device, log, persist_wall_time, report_to)
    trajectory = train_teacher(
        config, rundir.path, device, log, task=task, on_record=persist_wall_time, report_to=report_to
    )
    trained += train_students(
        config, rundir.path, trajectory, device, log, task=task, on_record=persist_wall_time, report_to=report_to
    )
    # A rerun of a finished run trains nothing: it keeps the probes and the original wall time instead of
    # recomputing the one and replacing the other with the seconds this no-op took.
    unchanged = previous is not None and trained == 0
    for probe in probes:
        if not (unchanged and (rundir.probes / probe.summary).exists()):
            probe.run(rundir, config, task, log)
    if unchanged:
        log(f"{rundir.path} was already complete: nothing retrained, results kept (wall time of the original run)")
    before = previous["wall_time_s"] if previous is not None else 0.0  # e.g. a deleted student retrained
    wall = before if unchanged else before + earlier + time.perf_counter() - started
    env = previous.get("environment") if unchanged and previous is not None else environment(resolve_device(device))
    return write_report(rundir.path, wall_time_s=wall, env=env, modified=preset_changes(config))
