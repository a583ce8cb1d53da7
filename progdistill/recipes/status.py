"""Where a run stands (``progdistill status RUN``): the teacher and each student done, running (which process
or job, from its lock), failed (the last line of its recorded error), interrupted (resumable) or not started,
with the job ids of a launch (:mod:`progdistill.recipes.launcher`). Read from the run directory's files alone, plus
``squeue`` for queued Slurm jobs when it is on PATH."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from progdistill.core.config import ConfigError
from progdistill.core.files import read_metrics
from progdistill.experiment import stack_state_name, student_names, student_runs, student_stacks, teacher_header
from progdistill.recipes.launcher import read_launch, scheduler_states
from progdistill.store.lock import lock_holder
from progdistill.store.rundir import RESUME_STATE, RunDir
from progdistill.store.trajectory import Trajectory, TrajectoryError

STATES = ("done", "running", "failed", "interrupted", "queued", "not started")


def status(out: str | Path) -> list[dict[str, Any]]:
    """One row per model of the run directory ``out``, teacher first: {name, state (one of :data:`STATES`),
    detail, job (the job id of a launch, or None)}. Raises ``ConfigError`` when ``out`` has no valid config. A
    plugin that the config records but cannot be imported is a warning: its schedules' students are named by the
    schedule's type (or ``name`` field) instead of a label only its class knows.

    An unfinished model's detail says what rerunning ``run`` will do, read from the saved training states a
    rerun reads (the teacher's ``resume.pt``, a stack's ``.resume-<first student>.pt``): resume at the saved
    step, start over (no state, or one saved by another stack of students), or stop on a state it cannot read."""
    rundir = RunDir(out)
    config = rundir.config(lenient=True)
    launch = read_launch(out)
    queued = scheduler_states(launch)
    rows = []
    try:
        trajectory = Trajectory(rundir.teacher)
        done = trajectory.complete and _teacher_of(config, trajectory.header)
        saved_step = max(trajectory.steps, default=0)
    except TrajectoryError:
        done, saved_step = False, 0
    saved = _saved_state(rundir.teacher / RESUME_STATE)
    progress = _progress(["teacher"], saved, saved_step, config.teacher.steps)
    rows.append(_row("teacher", rundir.teacher, rundir.path, done, saved_step, progress, launch.get("teacher"), queued))
    names = student_names(config)
    finished = {name: rundir.student_finished(name, config.student.steps) for name in names}
    try:  # the stacks a rerun trains: those of the unfinished students
        stacks = student_stacks(config, [run for run in student_runs(config) if not finished[run.name]])
    except ConfigError:  # a model or schedule of a plugin that cannot be imported: its stacking is unknown
        stacks = [[n] for n in names if not finished[n]]
    stack_of = {name: stack for stack in stacks for name in stack}
    states = {path: _saved_state(path) for path in sorted(rundir.students.glob(".resume-*.pt"))}
    for name in names:
        directory = rundir.students / name
        reached = _last_step(directory / "metrics.jsonl")
        progress = None
        if not finished[name]:
            stack = stack_of[name]
            own = states.get(rundir.students / stack_state_name(stack))
            held = own if own is not None and own.get("names") == stack else _holding(states, name)
            if held is None and own is not None and "unreadable" in own:
                held = own  # the stack's own state, which a rerun cannot read
            progress = _progress(stack, held, reached, config.student.steps)
        job = launch.get("students", {}).get(name)
        rows.append(_row(name, directory, directory, finished[name], reached, progress, job, queued))
    return rows


def _saved_state(path: Path) -> dict[str, Any] | None:
    """The ``names`` and ``step`` of the training state saved at ``path`` (None without one; ``{"unreadable":
    reason, "path": path}`` for one that cannot be read, at which a rerun stops). Memory-mapped: the weights are
    not read."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, mmap=True, weights_only=False, map_location="cpu")
        return {"names": list(state["names"]), "step": int(state["step"])}
    except Exception as exc:  # a damaged file: a rerun stops on it (load_state), and so status says
        return {"unreadable": f"{type(exc).__name__}: {exc}".splitlines()[0][:120], "path": path}


def _holding(states: dict[Path, dict[str, Any] | None], name: str) -> dict[str, Any] | None:
    """A saved state of another stack that holds student ``name`` (one trained together by an earlier
    invocation, e.g. before some of its students finished), if any: the furthest."""
    holding = [s for s in states.values() if s is not None and name in s.get("names", ())]
    return max(holding, key=lambda s: s["step"], default=None)


def _last_step(metrics: Path) -> int | None:
    """The step of the last complete record of a ``metrics.jsonl`` (None: no file or no record)."""
    if not metrics.exists():
        return None
    with warnings.catch_warnings():  # a truncated last line: status reports the records before it
        warnings.simplefilter("ignore")
        records = read_metrics(metrics)
    return records[-1]["step"] if records else None


def _progress(stack: list[str], saved: dict[str, Any] | None, reached: int | None, steps: int) -> str | None:
    """What rerunning does for a model trained in ``stack``: "at step S/N; rerunning resumes it" when ``saved``
    (its saved state) belongs to exactly ``stack``; that a rerun stops when ``saved`` cannot be read; "stopped at
    step S/N; rerunning starts it over (why)" when it got somewhere (``reached``: its records' last step, or a
    state's) that a rerun cannot resume; None when it never started."""
    if saved is not None and saved.get("names") == stack:
        return f"at step {saved['step']}/{steps}; rerunning resumes it"
    if saved is not None and "unreadable" in saved:
        where = f"at step {reached}/{steps}; " if reached else ""
        return (
            f"{where}its saved state {saved['path']} cannot be read ({saved['unreadable']}): a rerun stops there, "
            "deleting nothing; restore the file, or delete it to train from step 0"
        )
    if saved is not None:
        others = ", ".join(n for n in saved["names"] if n not in stack) or "none"
        why = f"its saved state, at step {saved['step']}, is that of a stack trained with {others}"
        reached = max(reached or 0, saved["step"])
    else:
        why = "no saved state to resume from"
    if not reached:
        return None if saved is None else f"not started; {why}"
    return f"stopped at step {reached}/{steps}; rerunning starts it over at step 0 ({why})"


def _teacher_of(config, header: dict[str, Any]) -> bool:
    """Whether a trajectory's ``header`` is the teacher of ``config``; when a schedule is a stand-in for a plugin
    that cannot be imported (whether the run is co-training only is then unknown), on the task and teacher alone."""
    try:
        return header == teacher_header(config)
    except ConfigError:
        return {k: v for k, v in header.items() if k != "co_training"} == teacher_header(config, co_training=False)


def _row(
    name: str,
    directory: Path,
    locked: Path,
    done: bool,
    step: int | None,
    progress: str | None,
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
            + (f", step {step}" if step else "")
        )
    elif RunDir.failure(directory) is not None:
        state, detail = "failed", RunDir.failure(directory) or ""
    elif job is not None and str(job) in queued:
        state, detail = "queued", f"job {job}: {queued[str(job)].lower()}"
    elif progress is not None and not progress.startswith("not started"):
        state, detail = "interrupted", progress
    else:
        state, detail = "not started", (progress or "").removeprefix("not started; ")
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
