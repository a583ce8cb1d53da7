"""Where a run stands (``progdistill status RUN``): the teacher and each student done, running (which process
or job, from its lock), failed (the last line of its recorded error), interrupted (resumable) or not started,
with the job ids of a launch (:mod:`progdistill.recipes.launcher`). Read from the run directory's files alone, plus
``squeue`` for queued Slurm jobs when it is on PATH."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from progdistill.core.config import ConfigError, to_dict
from progdistill.core.files import read_metrics
from progdistill.experiment import student_names, teacher_header
from progdistill.recipes.launcher import read_launch, scheduler_states
from progdistill.store.lock import lock_holder
from progdistill.store.rundir import RESUME_STATE, RunDir
from progdistill.store.trajectory import Trajectory, TrajectoryError

STATES = ("done", "running", "failed", "interrupted", "queued", "not started")


def status(out: str | Path) -> list[dict[str, Any]]:
    """One row per model of the run directory ``out``, teacher first: {name, state (one of :data:`STATES`),
    detail, job (the job id of a launch, or None)}. Raises ``ConfigError`` when ``out`` has no valid config. A
    plugin that the config records but cannot be imported is a warning: its schedules' students are named by the
    schedule's type (or ``name`` field) instead of a label only its class knows."""
    rundir = RunDir(out)
    config = rundir.config(lenient=True)
    launch = read_launch(out)
    queued = scheduler_states(launch)
    rows = []
    try:
        trajectory = Trajectory(rundir.teacher)
        done = trajectory.complete and _teacher_of(config, trajectory.header)
        step = max(trajectory.steps, default=0)
    except TrajectoryError:
        done, step = False, 0
    rows.append(
        _row(
            "teacher",
            rundir.teacher,
            rundir.path,
            done,
            step if (rundir.teacher / RESUME_STATE).exists() else None,
            config.teacher.steps,
            launch.get("teacher"),
            queued,
        )
    )
    for name in student_names(config):
        directory = rundir.students / name
        records = read_metrics(directory / "metrics.jsonl") if (directory / "metrics.jsonl").exists() else []
        student_step: int | None = records[-1]["step"] if records else None
        rows.append(
            _row(
                name,
                directory,
                directory,
                rundir.student_finished(name, config.student.steps),
                student_step,
                config.student.steps,
                launch.get("students", {}).get(name),
                queued,
            )
        )
    return rows


def _teacher_of(config, header: dict[str, Any]) -> bool:
    """Whether a trajectory's ``header`` is the teacher of ``config``; when a schedule is a stand-in for a plugin
    that cannot be imported (whether the run is co-training only is then unknown), on the task and teacher alone."""
    try:
        return header == teacher_header(config)
    except ConfigError:
        return {k: v for k, v in header.items() if k != "co_training"} == {
            "task": to_dict(config.task),
            "model": to_dict(config.teacher.model),
            "train": to_dict(config.teacher),
        }


def _row(
    name: str,
    directory: Path,
    locked: Path,
    done: bool,
    step: int | None,
    steps: int,
    job: str | None,
    queued: dict[str, str],
) -> dict[str, Any]:
    holder = None if done else lock_holder(locked)
    if done:
        state, detail = "done", ""
    elif holder is not None:
        state = "running"
        detail = (
            f"process {holder.get('pid')} on {holder.get('host', '?')}"
            + (f", job {holder['job']}" if holder.get("job") else "")
            + (f", step {step}/{steps}" if step else "")
        )
    elif RunDir.failure(directory) is not None:
        state, detail = "failed", RunDir.failure(directory) or ""
    elif job is not None and str(job) in queued:
        state, detail = "queued", f"job {job}: {queued[str(job)].lower()}"
    elif step is not None:
        state, detail = "interrupted", f"at step {step}/{steps}; rerunning resumes it"
    else:
        state, detail = "not started", ""
    return {"name": name, "state": state, "detail": detail, "job": job}


def format_status(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned table, one model a line, and a count per state."""
    width = max(len(r["name"]) for r in rows)
    lines = [
        f"{r['name']:<{width}}  {r['state']:<11}  {('job ' + str(r['job'])) if r['job'] else '':<12} "
        f"{r['detail']}".rstrip()
        for r in rows
    ]
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)
