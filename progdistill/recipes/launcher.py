"""A run's teacher and students as scheduler jobs: Slurm through ``submitit``, or submitit's local executor
(each job its own process, the same code path, for machines without Slurm).

The teacher is one job; the students are jobs that start when it has finished (Slurm: ``afterok`` dependencies;
local: submitted once the teacher job has returned). A stack of MLP students is one job; other students one job
each; ``job_per="seed"`` groups a seed's students into one job instead (``"student"``: one job per student
always). Every job writes into the one run directory (on a filesystem every node sees), which stays the single
source of truth: each student holds its own lock while it trains, resumes from its saved state when its job is
submitted again, and records the error that stopped it (``students/<name>/error.txt``); the job that finishes
the last student writes the report (or ``progdistill report RUN``). ``jobs/launch.json`` keeps the job ids for
``progdistill status``.

A student's numbers do not depend on which job or stack trains it (:func:`progdistill.train.loop.fit`), so a run
launched here ends with the same metrics and weights as ``progdistill run`` in one process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from progdistill.core.config import ConfigError, typed
from progdistill.core.distributed import resolve_device
from progdistill.core.files import atomic_write_json
from progdistill.core.optional import require
from progdistill.core.threads import set_threads
from progdistill.experiment import (
    ExperimentConfig,
    co_training_only,
    step_size,
    student_names,
    student_runs,
    teacher_header,
)
from progdistill.probes.registry import end_of_run_probes
from progdistill.recipes.presets import preset_changes
from progdistill.recipes.runner import check_run, train_students, train_teacher
from progdistill.store.environment import environment
from progdistill.store.lock import RunLock, RunLockedError, lock_holder
from progdistill.store.report import write_report
from progdistill.store.rundir import STUDENT_WEIGHTS, RunDir
from progdistill.store.trackers import resolve_report_to
from progdistill.store.trajectory import Trajectory, TrajectoryError


class JobsFailedError(RuntimeError):
    """Jobs of a launch failed or died; the message names them and the last line of each error."""


LAUNCHERS = ("local", "slurm", "submitit-local")
JOB_PER = ("stack", "seed", "student")
LAUNCH_RECORD = "launch.json"
# Filesystem types that only the machine holding them can see: a run directory there is invisible to other nodes.
NODE_LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs", "overlay"}
NODE_LOCAL_DIRS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


@typed("launcher")
@dataclass(frozen=True)
class LauncherConfig:
    """Where a run's jobs go: ``kind`` one of :data:`LAUNCHERS` ("local": one process, no jobs).

    Slurm options: ``partition``, ``account``, ``gpus_per_job`` (GPUs per node of a job), ``cpus_per_job``
    (also the job's torch threads), ``time_min`` (the time limit, minutes), ``sbatch`` (extra flags, each
    "--name=value" or "--name"). ``job_per``: one of :data:`JOB_PER`. ``node_local_ok``: allow a run directory
    on a node-local filesystem (/tmp, tmpfs) with Slurm, for a cluster that is this one machine."""

    kind: str = "local"
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    time_min: int = 24 * 60
    sbatch: tuple[str, ...] = ()
    job_per: str = "stack"
    node_local_ok: bool = False

    def __post_init__(self):
        if self.kind not in LAUNCHERS:
            raise ConfigError(f"--launcher {self.kind!r} is not a launcher; valid: {', '.join(LAUNCHERS)}")
        if self.job_per not in JOB_PER:
            raise ConfigError(f"--job-per {self.job_per!r} is invalid; valid: {', '.join(JOB_PER)}")
        for name, value, least in (
            ("--gpus-per-job", self.gpus_per_job, 0),
            ("--time", self.time_min, 1),
            ("--cpus-per-job", 1 if self.cpus_per_job is None else self.cpus_per_job, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{name} {value!r} is invalid: an integer >= {least}")
        if self.kind != "slurm":  # a Slurm option given without Slurm would be silently ignored
            given = [
                name
                for name, value in (
                    ("--partition", self.partition),
                    ("--account", self.account),
                    ("--gpus-per-job", self.gpus_per_job or None),
                    ("--sbatch", self.sbatch or None),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(
                    f"{', '.join(given)}: Slurm option(s), valid only with --launcher slurm (this is "
                    f"--launcher {self.kind})"
                )
        for flag in self.sbatch:
            if not flag.startswith("--") or len(flag) < 3 or " " in flag.split("=", 1)[0]:
                raise ConfigError(
                    f"--sbatch {flag!r} is invalid: give one sbatch option as --name=value or --name, "
                    "e.g. --sbatch=--qos=high"
                )

    def extra_parameters(self) -> dict[str, Any]:
        """The ``sbatch`` flags as submitit's ``slurm_additional_parameters`` ({"qos": "high", "exclusive": True})."""
        params = {}
        for flag in self.sbatch:
            name, _, value = flag[2:].partition("=")
            params[name] = value if "=" in flag else True
        return params

    def sbatch_flags(self) -> list[str]:
        """Every option of the launcher as sbatch flags (for ``sbatch --test-only``)."""
        flags = [f"--time={self.time_min}"]
        flags += [f"--partition={self.partition}"] if self.partition else []
        flags += [f"--account={self.account}"] if self.account else []
        flags += [f"--gpus-per-node={self.gpus_per_job}"] if self.gpus_per_job else []
        flags += [f"--cpus-per-task={self.cpus_per_job}"] if self.cpus_per_job else []
        return flags + list(self.sbatch)


def check_slurm(launcher: LauncherConfig) -> None:
    """Ask Slurm whether it would accept a job with ``launcher``'s options (``sbatch --test-only``: nothing is
    submitted). Raises ``ConfigError`` with Slurm's own words when it would not, or when sbatch is missing."""
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm: sbatch is not on PATH (no Slurm client here); run on a Slurm login "
            "node, or use --launcher submitit-local"
        )
    flags = launcher.sbatch_flags()
    try:
        done = subprocess.run(
            ["sbatch", "--test-only", *flags, "--wrap", "true"], check=False, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            "--launcher slurm: `sbatch --test-only` did not answer within 60 s (is slurmctld up?); "
            "nothing was submitted"
        ) from None
    if done.returncode != 0:
        said = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip()) or f"exit {done.returncode}"
        raise ConfigError(
            f"Slurm refuses the launcher's job options ({' '.join(flags)}): {said}; fix --partition, "
            "--account, --gpus-per-job, --cpus-per-job, --time or --sbatch (nothing was submitted)"
        )


def check_shared(out: Path, launcher: LauncherConfig) -> None:
    """Refuse (``ConfigError``) a Slurm run directory that other nodes cannot see: under /tmp, /var/tmp,
    /dev/shm, or on a tmpfs / ramfs / overlay filesystem (detected from /proc/mounts), unless
    ``launcher.node_local_ok``."""
    if launcher.kind != "slurm" or launcher.node_local_ok:
        return
    path = out.resolve()
    fs = _filesystem_type(path)
    local_dir = next((d for d in NODE_LOCAL_DIRS if d.resolve() == path or d.resolve() in path.parents), None)
    if fs in NODE_LOCAL_FS or local_dir is not None:
        where = f"on a {fs} filesystem" if fs in NODE_LOCAL_FS else f"under {local_dir}"
        raise ConfigError(
            f"--out {out} is {where}, which only this machine sees: Slurm jobs on other nodes could "
            "not write into it. Choose a run directory on a shared filesystem (home, project or "
            "scratch space), or pass --node-local-ok when the cluster is this one machine "
            "(nothing was submitted)"
        )


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = None
    for mount_point, fs in mounts:
        point = Path(mount_point.replace("\\040", " "))
        if (point == path or point in path.parents) and (best is None or len(point.parts) > len(best[0].parts)):
            best = (point, fs)
    return best[1] if best else None


def job_groups(config: ExperimentConfig, names: list[str], job_per: str) -> list[list[str]]:
    """The students ``names`` (seed-major, as :func:`student_names`) split into jobs: a stack of MLPs is one
    job; other students one job each; ``job_per="seed"``: one job per seed; ``"student"``: one job each."""
    if job_per == "student" or (job_per == "stack" and not config.student.model.stackable):
        return [[name] for name in names]
    if job_per == "stack":
        return [names] if names else []
    seed_of = {run.name: run.seed for run in student_runs(config)}
    by_seed: dict[int, list[str]] = {}
    for name in names:
        by_seed.setdefault(seed_of[name], []).append(name)
    return list(by_seed.values())


# -- the jobs (module-level functions: submitit pickles them by name) ---------------------------------------------
def _drop_job_folder_template(out: str | Path) -> None:
    """Remove the empty ``jobs/%j`` directory that submitit's local executor makes from the folder template
    before each job starts (each job's files go to ``jobs/<job id>/``); called by every job when it starts."""
    with contextlib.suppress(OSError):  # absent, or not empty (then it is not the template's)
        (Path(out) / "jobs" / "%j").rmdir()


def teacher_job(
    out: str, device: str = "auto", threads: int | None = None, report_to: tuple[str, ...] | None = None
) -> int:
    """Train (or resume, or reuse) the teacher of the run directory ``out``; returns its checkpoint count.
    ``report_to``: experiment trackers (:mod:`progdistill.store.trackers`; default TensorBoard when installed)."""
    _drop_job_folder_template(out)
    rundir = RunDir(out)
    config = rundir.config()
    set_threads(threads, step_size(config))  # as `progdistill run` does: from the config and the cores
    with RunLock(rundir.path):
        trajectory = train_teacher(config, out, device, task=rundir.task(config), report_to=report_to)
    return len(trajectory.steps)


def student_job(
    out: str,
    names: list[str],
    device: str = "auto",
    threads: int | None = None,
    report_to: tuple[str, ...] | None = None,
) -> list[str]:
    """Train (or resume) the students ``names`` of the run directory ``out`` (one stack when the model stacks),
    then write the report if every student of the run has finished. Returns the names trained. Raises
    ``TrajectoryError`` when the teacher has not finished."""
    _drop_job_folder_template(out)
    rundir = RunDir(out)
    config = rundir.config()
    set_threads(threads, step_size(config))  # as `progdistill run` does: from the config and the cores
    trajectory = Trajectory(rundir.teacher)
    if not trajectory.complete or trajectory.header != teacher_header(config):
        raise TrajectoryError(
            f"the teacher of {out} has not finished; its job must succeed first (see `progdistill status {out}`)"
        )
    runs = [run for run in student_runs(config) if run.name in names]
    train_students(config, out, trajectory, device, runs=runs, task=rundir.task(config), report_to=report_to)
    finish(out, device)
    return names


def finish(out: str | Path, device: str = "auto", log=print) -> dict[str, Any] | None:
    """Write the report if every student of the run has finished and no other job is writing it; returns the
    results (None when students remain or another process holds the run's lock)."""
    rundir = RunDir(out)
    config = rundir.config()
    if not all(rundir.student_finished(name, config.student.steps) for name in student_names(config)):
        return None
    try:
        with RunLock(rundir.path):
            return report(out, device, log)
    except RunLockedError:
        return None  # the job finishing beside this one writes it


def report(out: str | Path, device: str = "auto", log=print) -> dict[str, Any]:
    """Run the end-of-run probes whose summaries are missing or older than the newest student, and write
    results.json, summary.md and accuracy.png of the run directory ``out`` (``progdistill report``). The wall
    time is that of the launch (``jobs/launch.json``: from submission to the last student's weights, plus the
    run's time before it), else the one already recorded. Raises ``ConfigError`` while students are unfinished."""
    rundir = RunDir(out)
    config = rundir.config()
    unfinished = [n for n in student_names(config) if not rundir.student_finished(n, config.student.steps)]
    if unfinished:
        raise ConfigError(
            f"{len(unfinished)} student(s) of {out} have not finished ({', '.join(unfinished[:4])}"
            f"{', ...' if len(unfinished) > 4 else ''}); see `progdistill status {out}` (nothing was "
            "written)"
        )
    # a damaged or edited file stops the report before it writes anything, as it stops a rerun
    rundir.check_inputs(config)
    rundir.check_reusable(config)
    task = rundir.task(config)
    newest = max((rundir.students / n / STUDENT_WEIGHTS).stat().st_mtime for n in student_names(config))
    for probe in end_of_run_probes(config.task):
        summary = rundir.probes / probe.summary
        if not summary.exists() or summary.stat().st_mtime < newest:
            probe.run(rundir, config, task, log)
    launch = read_launch(out)
    previous = rundir.finished_results() or {}
    if launch and launch.get("submitted"):
        wall = launch.get("before_s", 0.0) + max(newest - launch["submitted"], 0.0)
    else:
        wall = previous.get("wall_time_s", 0.0)
    env = environment(resolve_device(device))
    return write_report(rundir.path, wall_time_s=wall, env=env, modified=preset_changes(config))


# -- submitting ------------------------------------------------------------------------------------------------
def read_launch(out: str | Path) -> dict[str, Any]:
    """The run's ``jobs/launch.json`` ({launcher, submitted, before_s, teacher, students: {name: job id}}), or {}."""
    try:
        return json.loads((Path(out) / "jobs" / LAUNCH_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _executor(launcher: LauncherConfig, folder: Path, name: str):
    submitit = require("submitit", "launch", f"--launcher {launcher.kind}")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm" if launcher.kind == "slurm" else "local")
    params: dict[str, Any] = {"timeout_min": launcher.time_min, "name": name, "nodes": 1, "tasks_per_node": 1}
    if launcher.gpus_per_job:
        params["gpus_per_node"] = launcher.gpus_per_job
    if launcher.cpus_per_job:
        params["cpus_per_task"] = launcher.cpus_per_job
    if launcher.kind == "slurm":
        params.update(
            slurm_partition=launcher.partition,
            slurm_account=launcher.account,
            slurm_additional_parameters=launcher.extra_parameters(),
        )
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor


def launch(
    config: ExperimentConfig,
    out: str | Path,
    launcher: LauncherConfig,
    overwrite: bool = False,
    device: str = "auto",
    retrain_teacher: bool = False,
    wait: bool = False,
    log=print,
    report_to: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Submit the run of ``config`` into ``out`` as jobs (see the module docstring); returns the launch record
    (the job ids). Everything :func:`progdistill.recipes.runner.run` refuses is refused here too, before anything is
    written or submitted, and so are a run directory the jobs cannot see (:func:`check_shared`) and options
    Slurm rejects (:func:`check_slurm`). Students that have finished are not submitted again, nor ones whose
    lock a live job holds or whose job Slurm still has queued. submitit-local waits for the teacher's job
    before it submits the students (it has no job dependencies). ``wait``: return when every job has ended; raises
    ``JobsFailedError`` naming the jobs that failed. ``report_to``: the jobs' experiment trackers
    (:func:`progdistill.store.trackers.resolve_report_to`, checked here; the jobs need the same packages)."""
    if launcher.kind == "local":
        raise ConfigError(
            "launch() submits jobs; --launcher local runs in this process (progdistill.recipes.runner.run)"
        )
    require("submitit", "launch", f"--launcher {launcher.kind}")  # before anything is written
    if co_training_only(config):
        raise ConfigError(
            f"--launcher {launcher.kind}: a co-training-only run trains its teacher alongside the "
            "students in one process, which one job cannot split; use --launcher local"
        )
    report_to = resolve_report_to(report_to)
    out = Path(out)
    data_digest, _ = check_run(config, device, log)
    check_shared(out, launcher)
    if launcher.kind == "slurm":
        check_slurm(launcher)
    rundir = RunDir(out)
    with RunLock(rundir.path):
        previous = rundir.finished_results()
        rundir.claim(config, overwrite, data_digest, retrain_teacher)
        rundir.task(config)  # a text task's tokenizer is trained here once, not by racing jobs
    executor = _executor(launcher, rundir.path / "jobs", f"progdistill-{config.preset}")
    threads = launcher.cpus_per_job
    record = read_launch(out) if previous is None else {}
    record.update(
        launcher=launcher.kind,
        submitted=time.time(),
        before_s=(previous or {}).get("wall_time_s", 0.0),
        students=record.get("students", {}),
    )
    try:
        trajectory = Trajectory(rundir.teacher)
        teacher_done = trajectory.complete and trajectory.header == teacher_header(config)
    except TrajectoryError:
        teacher_done = False
    jobs = {}
    teacher = None
    if not teacher_done:
        teacher = executor.submit(teacher_job, str(out), device, threads, report_to)
        record["teacher"] = teacher.job_id
        jobs["teacher"] = teacher
        log(f"submitted the teacher as job {teacher.job_id}")
    todo = [n for n in student_names(config) if not rundir.student_finished(n, config.student.steps)]
    queued = scheduler_states(record)
    running = [n for n in todo if lock_holder(rundir.students / n) or str(record["students"].get(n)) in queued]
    if running:
        log(f"not submitting {len(running)} student(s) that a live or queued job will train: {', '.join(running)}")
    todo = [n for n in todo if n not in running]
    if teacher is not None:
        if launcher.kind == "slurm":
            executor.update_parameters(
                slurm_additional_parameters={
                    **launcher.extra_parameters(),
                    "dependency": f"afterok:{teacher.job_id}",
                    # a failed teacher cancels its students
                    # (else they pend forever and --wait hangs)
                    "kill_on_invalid_dep": "yes",
                }
            )
        else:  # submitit's local executor has no dependencies: the students start when the teacher has returned
            _write_launch(out, record)
            _wait(jobs, launcher)
    for names in job_groups(config, todo, launcher.job_per):
        job = executor.submit(student_job, str(out), names, device, threads, report_to)
        jobs[" ".join(names)] = job
        record["students"].update({n: job.job_id for n in names})
        log(f"submitted {len(names)} student(s) as job {job.job_id}: {', '.join(names)}")
    _write_launch(out, record)
    if not todo and teacher is None and not running:
        finish(out, device, log)  # everything had finished: (re)write the report
    if wait:
        _wait(jobs, launcher)
        _drop_job_folder_template(out)
    return record


def scheduler_states(record: dict[str, Any]) -> dict[str, str]:
    """Slurm's state (PENDING, RUNNING, ...) of the launch ``record``'s jobs that it still has, by job id ({}
    without squeue or for another launcher)."""
    ids = {str(j) for j in [record.get("teacher"), *record.get("students", {}).values()] if j}
    if record.get("launcher") != "slurm" or not ids or shutil.which("squeue") is None:
        return {}
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", ",".join(sorted(ids)), "-o", "%i %T"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.split(None, 1) for line in done.stdout.splitlines() if len(line.split(None, 1)) == 2)


def _write_launch(out: Path, record: dict[str, Any]) -> None:
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "jobs" / LAUNCH_RECORD, record)


def _wait(jobs: dict[str, Any], launcher: LauncherConfig, poll_s: float = 1.0) -> None:
    """Block until every job has ended (its result file written, or the scheduler no longer has it); raises
    ``JobsFailedError`` naming the jobs that failed or died, with the last line of their error."""
    pending = dict(jobs)
    failed = []
    while pending:
        for what, job in list(pending.items()):
            if job.paths.result_pickle.exists():
                del pending[what]
                try:
                    job.result()
                except Exception as exc:  # submitit re-raises the job's error with its traceback
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    failed.append(f"job {job.job_id} ({what}): {lines[-1] if lines else type(exc).__name__}")
            elif not _alive(job, launcher):
                time.sleep(poll_s)  # the result file is written before the job ends; look once more
                if not job.paths.result_pickle.exists():
                    del pending[what]
                    failed.append(
                        f"job {job.job_id} ({what}): ended without a result (killed, cancelled or out of time)"
                    )
        if pending:
            time.sleep(poll_s)
    if failed:
        raise JobsFailedError(
            "jobs failed: " + "; ".join(failed) + " (`progdistill status` shows each student; "
            "submitting the run again resumes them)"
        )


def _alive(job, launcher: LauncherConfig) -> bool:
    """Whether the scheduler still has ``job`` (queued or running)."""
    if launcher.kind != "slurm":
        return job.state == "RUNNING"
    done = subprocess.run(
        ["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], check=False, capture_output=True, text=True
    )
    return done.returncode == 0 and bool(done.stdout.strip())
