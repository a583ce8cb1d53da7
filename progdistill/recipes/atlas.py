"""An atlas of tasks: which task structures progressive distillation helps (the question the paper closes on).

Each task of :data:`ATLAS_TASKS` is a preset run into its own run directory ``DIR/<task>`` by
:func:`progdistill.recipes.runner.run` (or as jobs, :func:`progdistill.recipes.launcher.launch`): the teacher, then
the preset's students over the seeds. The atlas reads what the runs wrote (``results.json``, the teacher's
trajectory) and writes, into ``DIR``:

- ``atlas.json``: per task, the teacher's steps to the threshold and its phase transition (the detector of
  :mod:`progdistill.distill.phases`, as 2-shot-auto reads it: plateau length and sharpness), and per schedule of
  :data:`COLUMNS` the steps to the threshold of every seed, the mean ratio to the teacher's steps and the seeds
  reaching the threshold; the environment of the runs;
- ``atlas.md``: the table, one row per task;
- ``atlas.png``: the benefit of progressive over one-shot distillation against the teacher's plateau length and
  transition sharpness, a point per task.

A finished task (its ``results.json`` of the same config) is not run again; an interrupted one resumes as a rerun
of ``run`` does. ``smoke``: every task's smallest version (:attr:`AtlasTask.smoke`); a directory holds a smoke
atlas or a full one, never both (``atlas-settings.json``).
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed, whatever the environment says
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter

from progdistill.core.config import ConfigError, check_positive_int, override, to_dict
from progdistill.core.distributed import resolve_device
from progdistill.core.files import atomic_write_json, atomic_write_text
from progdistill.core.optional import require
from progdistill.core.threads import set_threads
from progdistill.distill.phases import NoTransitionError
from progdistill.distill.schedules import TwoShotAuto
from progdistill.experiment import ExperimentConfig, config_hash, step_size
from progdistill.recipes.launcher import LauncherConfig, launch
from progdistill.recipes.presets import ATLAS_SMOKE, get_preset
from progdistill.recipes.runner import check_run, run
from progdistill.store.environment import environment, environment_markdown
from progdistill.store.report import caption, save_figure
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory

# The student schedules the atlas compares, by schedule kind (each task's preset lists its own settings of them).
COLUMNS = ("ce", "one-shot", "progressive", "2-shot-auto", "noised-teacher")
SETTINGS, JSON, TABLE, FIGURE = "atlas-settings.json", "atlas.json", "atlas.md", "atlas.png"
SEEDS, SMOKE_SEEDS = 3, 1
ARROW = 1.3  # a bound's arrow in the figure spans this factor of the benefit


@dataclass(frozen=True)
class AtlasTask:
    """A task of the atlas: its ``name`` (the run directory ``DIR/<name>``), the ``preset`` it runs, and its
    smallest version: ``smoke``, ``--set``-style overrides (``field.path=value``, value as JSON; :func:`shrink`
    writes the usual ones), and ``smoke_without``, schedule kinds left out of it (2-shot-auto, where a smoke
    teacher is too short for a transition). The teacher's transition is read on ``metric`` (eval_accuracy: a
    rise, eval_loss: a drop); None: the metric of the preset's 2-shot-auto, else eval_accuracy."""

    name: str
    preset: str
    smoke: tuple[str, ...] = ()
    smoke_without: tuple[str, ...] = ()
    metric: str | None = None


def shrink(teacher: int, student: int, every: int, *overrides: str, batch_size: int | None = None) -> tuple[str, ...]:
    """Smoke overrides: ``teacher`` and ``student`` steps, an evaluation (and a teacher checkpoint) every
    ``every`` steps, ``batch_size`` for both when given, then ``overrides``."""
    batch = {} if batch_size is None else {"batch_size": batch_size}
    return (
        "teacher=" + json.dumps({"steps": teacher, "eval_every": every, "checkpoint_every": every, **batch}),
        "student=" + json.dumps({"steps": student, "eval_every": every, **batch}),
        *overrides,
    )


SMOKE_NO_2SHOT = ("2-shot-auto",)  # smoke_without of a task whose smoke teacher has no transition

# One line per task (a preset and its smoke version, seconds to run).
ATLAS_TASKS: dict[str, AtlasTask] = {
    t.name: t
    for t in (
        AtlasTask(
            "parity",
            "parity-mlp",
            smoke=shrink(
                2000,
                2000,
                250,
                "task.n=10",
                "task.k=3",
                "task.eval_size=1024",
                "teacher.model.width=256",
                "schedules.3.points=[[500,500],[-1,1500]]",
                "schedules.4.first_steps=500",
            ),
        ),
        AtlasTask(
            "parity-n30",
            "atlas-parity",
            shrink(
                600,
                600,
                20,
                "task.n=12",
                "task.eval_size=1024",
                "teacher.model.width=256",
                "schedules.3.first_steps=200",
            ),
        ),
        AtlasTask("staircase", "atlas-staircase", ATLAS_SMOKE["atlas-staircase"]),
        AtlasTask("leap", "atlas-leap", ATLAS_SMOKE["atlas-leap"]),
        AtlasTask("majority", "atlas-majority", ATLAS_SMOKE["atlas-majority"]),
        AtlasTask("modular-addition", "atlas-modular-addition", ATLAS_SMOKE["atlas-modular-addition"]),
        AtlasTask("pointer-chasing", "atlas-pointer-chasing", ATLAS_SMOKE["atlas-pointer-chasing"]),
        AtlasTask("induction", "induction-lm", shrink(40, 20, 10, "task.eval_size=64"), SMOKE_NO_2SHOT),
        AtlasTask("pcfg-mlm", "atlas-pcfg-mlm", shrink(40, 20, 10, "task.eval_size=16", batch_size=8), SMOKE_NO_2SHOT),
    )
}


class AtlasFailedError(RuntimeError):
    """Tasks of an atlas failed; the others were run and the atlas of the finished ones written."""


def task_config(task: AtlasTask, smoke: bool = False, seeds: int | None = None) -> ExperimentConfig:
    """The config of ``task``: its preset, its smoke version when ``smoke``, and ``seeds`` students per
    schedule (default: the preset's). Raises ``ConfigError`` naming the task for an override that does not apply."""
    data = to_dict(get_preset(task.preset), complete=True)  # every field, so that an override can set a default
    try:
        for assignment in task.smoke if smoke else ():
            data = override(data, assignment)
        if seeds is not None:
            data["seeds"] = seeds
        if smoke and task.smoke_without:
            data["schedules"] = [s for s in data["schedules"] if s["type"] not in task.smoke_without]
        return ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"atlas task {task.name!r} (preset {task.preset}): {exc}") from None


def select_tasks(names: Sequence[str] | None) -> list[str]:
    """``names`` in registry order (all of :data:`ATLAS_TASKS` for None); an unknown or repeated name raises
    ``ConfigError`` listing the valid ones."""
    if names is None:
        return list(ATLAS_TASKS)
    unknown = [n for n in names if n not in ATLAS_TASKS]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {', '.join(map(repr, unknown))}; valid: {', '.join(ATLAS_TASKS)}")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--tasks {list(names)} is invalid: give one or more of {', '.join(ATLAS_TASKS)}, each once")
    return [n for n in ATLAS_TASKS if n in names]


def transition_metric(task: AtlasTask) -> str:
    """The teacher metric whose transition the atlas measures (:attr:`AtlasTask.metric`)."""
    if task.metric is not None:
        return task.metric
    auto = [s for s in get_preset(task.preset).schedules if isinstance(s, TwoShotAuto)]
    return auto[0].metric if auto else "eval_accuracy"


def teacher_phases(steps: Sequence[int], values: Sequence[float], metric: str, teacher_steps: int) -> dict[str, Any]:
    """The teacher's phase transition on the curve (``steps``, ``values``) of ``metric``, found as 2-shot-auto finds
    it (paper §1; :meth:`progdistill.distill.schedules.TwoShotAuto.window`): ``transition`` (start, middle, end,
    levels, size, width; steps), ``plateau_steps`` = start (teacher steps on the early plateau, from step 0),
    ``plateau_fraction`` = plateau_steps / ``teacher_steps`` (share of the teacher's run), and ``sharpness`` =
    ``teacher_steps`` / width (the inverse of the transition's share of the run; a width below one checkpoint
    interval counts as one interval). Without a transition these are None and ``no_transition`` says why."""
    out: dict[str, Any] = {"metric": metric}
    try:
        window = TwoShotAuto(metric=metric).window(steps, values)
    except ValueError as exc:  # NoTransitionError, or too few checkpoints to locate one
        why = exc.reason if isinstance(exc, NoTransitionError) else str(exc)
        unknown = dict.fromkeys(("transition", "plateau_steps", "plateau_fraction", "sharpness"))
        return {**out, **unknown, "no_transition": why}
    interval = min(b - a for a, b in itertools.pairwise(steps))
    plateau = window.start  # training starts at step 0, whether or not a checkpoint was saved there
    return {
        **out,
        "transition": window.to_dict(),
        "plateau_steps": plateau,
        "plateau_fraction": plateau / teacher_steps,
        "sharpness": teacher_steps / max(window.width, interval),
    }


def _mean(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def schedule_summary(students: Sequence[dict[str, Any]], teacher_steps: int | None) -> dict[str, Any]:
    """One schedule's students (``results.json`` entries of one label, any seed order): ``steps_to_threshold``
    per seed (None: never), ``seeds``, ``seeds_reaching``, ``mean_steps`` and ``ratio_to_teacher`` (means over
    the seeds that reach the threshold of their steps and of steps / the teacher's; None when none does or
    the teacher never does)."""
    students = sorted(students, key=lambda s: s["seed"])
    steps = [s["steps_to_threshold"] for s in students]
    reached = [s for s in steps if s is not None]
    return {
        "schedule": students[0]["schedule"],
        "steps_to_threshold": steps,
        "seeds": len(steps),
        "seeds_reaching": len(reached),
        "mean_steps": _mean(reached),
        "ratio_to_teacher": _mean([s / teacher_steps for s in reached]) if reached and teacher_steps else None,
    }


def benefit(one_shot: dict[str, Any], progressive: dict[str, Any], budget: int) -> dict[str, Any]:
    """Benefit of progressive over one-shot distillation: mean steps to the threshold of one-shot / of
    progressive, a seed that never reaches it counted at the student ``budget`` (> 1: progressive is faster).
    ``bound``: None when every seed of both reached it (exact), "lower" / "upper" when only one-shot's / only
    progressive's steps were counted at the budget, "unknown" when both were; ``value`` None when no seed of
    either reached it."""
    if not one_shot["seeds_reaching"] and not progressive["seeds_reaching"]:
        return {"value": None, "bound": None, "why": "no one-shot or progressive student reached the threshold"}

    def mean_at_budget(entry: dict[str, Any]) -> float:
        return statistics.mean(budget if s is None else s for s in entry["steps_to_threshold"])

    censored = (one_shot["seeds_reaching"] < one_shot["seeds"], progressive["seeds_reaching"] < progressive["seeds"])
    bound = {(False, False): None, (True, False): "lower", (False, True): "upper", (True, True): "unknown"}[censored]
    return {"value": mean_at_budget(one_shot) / mean_at_budget(progressive), "bound": bound}


def task_summary(
    task: AtlasTask, config: ExperimentConfig, results: dict[str, Any], phases: dict[str, Any], smoke: bool = False
) -> dict[str, Any]:
    """A task's entry of ``atlas.json`` from its run's ``config`` and ``results`` (``results.json``) and the
    teacher's ``phases`` (:func:`teacher_phases`). A schedule of :data:`COLUMNS` that the config lacks is
    ``{"missing": why}``: not in the preset, or left out of the smoke version."""
    teacher_steps = results["teacher"]["steps_to_threshold"]
    preset_kinds = {s.kind for s in get_preset(task.preset).schedules}
    schedules: dict[str, Any] = {}
    for column in COLUMNS:
        sched = next((s for s in config.schedules if s.kind == column), None)
        if sched is None:
            where = f"not in preset {task.preset}" if column not in preset_kinds else "left out of the smoke version"
            schedules[column] = {"missing": where}
            continue
        students = [s for s in results["students"] if s["schedule"] == sched.label]
        schedules[column] = schedule_summary(students, teacher_steps)
    entry: dict[str, Any] = {
        "task": task.name,
        "preset": task.preset,
        "smoke": smoke,
        "threshold": results["threshold"],
        "student_steps": config.student.steps,
        "seeds": config.seeds,
        "wall_time_s": results["wall_time_s"],
        "teacher": {
            "steps_to_threshold": teacher_steps,
            "final_accuracy": results["teacher"]["final_accuracy"],
            "steps": config.teacher.steps,
            **phases,
        },
        "schedules": schedules,
    }
    if "missing" in schedules["one-shot"] or "missing" in schedules["progressive"]:
        entry["benefit"] = {"value": None, "bound": None, "why": "no one-shot or no progressive schedule"}
    else:
        entry["benefit"] = benefit(schedules["one-shot"], schedules["progressive"], config.student.steps)
    return entry


# -- files ------------------------------------------------------------------------------------------------------
def _cell(entry: dict[str, Any]) -> str:
    """ "1.05x (3/3)": mean ratio to the teacher's steps, seeds reaching the threshold; "never (0/3)"."""
    if "missing" in entry:
        return entry["missing"]
    reach = f"({entry['seeds_reaching']}/{entry['seeds']})"
    if not entry["seeds_reaching"]:
        return f"never {reach}"
    if entry["ratio_to_teacher"] is None:
        return f"{entry['mean_steps']:.0f} steps {reach}"
    return f"{entry['ratio_to_teacher']:.2f}x {reach}"


def benefit_text(b: dict[str, Any]) -> str:
    """ "3.10x", ">= 2.00x" (a lower bound), "<= 0.80x" (an upper bound), "~1.20x" (both censored), "-"."""
    if b["value"] is None:
        return "-"
    prefix = {None: "", "lower": ">= ", "upper": "<= ", "unknown": "~"}[b["bound"]]
    return f"{prefix}{b['value']:.2f}x"


def _measure(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_row(entry: dict[str, Any]) -> str:
    """A task's row of ``atlas.md``."""
    teacher = entry["teacher"]
    steps = "never" if teacher["steps_to_threshold"] is None else str(teacher["steps_to_threshold"])
    cells = [
        entry["task"],
        entry["preset"],
        f"{steps} / {teacher['steps']}",
        _measure(teacher["plateau_fraction"], ".2f"),
        _measure(teacher["sharpness"], ".1f"),
        *(_cell(entry["schedules"][c]) for c in COLUMNS),
        benefit_text(entry["benefit"]),
    ]
    return "| " + " | ".join(cells) + " |"


def atlas_markdown(atlas: dict[str, Any]) -> str:
    """``atlas.md``: one row per task, then what is missing, failed or pending, and the environment."""
    kind = "smoke versions (`--smoke`)" if atlas["smoke"] else "full versions"
    lines = [
        f"# Atlas of progressive distillation: {len(atlas['tasks'])} task(s), {kind}",
        "",
        "Teacher: steps to the threshold / its steps; plateau: share of the teacher's run before its transition "
        "starts; sharpness: the teacher's steps / the transition's width (the phase detector, as 2-shot-auto "
        "reads it; `-`: no transition). Schedules: mean ratio of the students' steps to the threshold to the "
        "teacher's, over the seeds that reach it (seeds reaching / seeds). Benefit: one-shot's mean steps / "
        "progressive's (a seed that never reaches the threshold counted at the student budget: >= a lower "
        "bound, <= an upper bound).",
        "",
        "| task | preset | teacher steps | plateau | sharpness | "
        + " | ".join(_header(c) for c in COLUMNS)
        + " | benefit of progressive |",
        "|---" * (6 + len(COLUMNS)) + "|",
    ]
    lines += [table_row(entry) for entry in atlas["tasks"]]
    lines.append("")
    for entry in atlas["tasks"]:
        thr = entry["threshold"]
        notes = [f"threshold {thr:.0%} eval accuracy, {entry['seeds']} seed(s), {entry['student_steps']} student steps"]
        notes += [f"{c}: {entry['schedules'][c]['missing']}" for c in COLUMNS if "missing" in entry["schedules"][c]]
        if entry["teacher"]["transition"] is None:
            notes.append(f"no teacher transition on {entry['teacher']['metric']}: {entry['teacher']['no_transition']}")
        notes.append(f"wall time {entry['wall_time_s'] / 60:.1f} min")
        lines.append(f"- {entry['task']}: " + "; ".join(notes) + ".")
    for what in ("failed", "pending"):
        for name, why in atlas[what].items():
            lines.append(f"- {name}: {what} ({why}).")
    lines += ["", environment_markdown(atlas["environment"]), ""]
    return "\n".join(lines)


def _header(column: str) -> str:
    return "CE" if column == "ce" else column


def atlas_figure(atlas: dict[str, Any]):
    """Benefit of progressive over one-shot (log axis; 1 = none) against the teacher's plateau share (left) and
    transition sharpness (right), a labelled point per task; a bound is an open marker with an arrow. Tasks
    without a benefit or a transition are named in the caption. Returns the matplotlib figure."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    drawn, left_out = [], []
    for entry in atlas["tasks"]:
        b, teacher = entry["benefit"], entry["teacher"]
        if b["value"] is None or teacher["transition"] is None:
            why = b.get("why") if b["value"] is None else "no teacher transition"
            left_out.append(f"{entry['task']} ({why})")
            continue
        drawn.append(entry)
    for ax, measure, label in (
        (axes[0], "plateau_fraction", "teacher's plateau (share of its run before the transition)"),
        (axes[1], "sharpness", "teacher's transition sharpness (its steps / transition width)"),
    ):
        ys = [1.0]  # what the y axis must show: the line of no benefit, every point and every arrow's tip
        for entry in drawn:
            x, b = entry["teacher"][measure], entry["benefit"]
            exact = b["bound"] is None
            ax.plot([x], [b["value"]], "o", color="C0", markerfacecolor="C0" if exact else "none", markersize=8)
            ys.append(b["value"])
            if b["bound"] in ("lower", "upper"):
                tip = b["value"] * (ARROW if b["bound"] == "lower" else 1 / ARROW)
                ax.annotate("", (x, tip), (x, b["value"]), arrowprops={"arrowstyle": "->", "color": "C0"})
                ys.append(tip)
            ax.annotate(entry["task"], (x, b["value"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_ylim(min(ys) / 1.15, max(ys) * 1.15)
        ax.axhline(1.0, color="0.5", ls="--", lw=1)
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.2g"))  # 0.6, 2, 30: not 6 x 10^-1
        if measure == "plateau_fraction":
            ax.set_xlim(-0.05, 1.05)
        if measure == "sharpness" and drawn:
            ax.set_xscale("log")
            for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
                axis(FormatStrFormatter("%.2g"))
        ax.set_xlabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no task to place", transform=ax.transAxes, ha="center", va="center", color="0.3")
    axes[0].set_ylabel("benefit: one-shot steps / progressive steps")
    kind = "smoke versions" if atlas["smoke"] else "full versions"
    fig.suptitle(f"Where progressive distillation helps: {len(drawn)} task(s), {kind}")
    caption(
        fig,
        "A point per task: mean steps to the threshold of one-shot students / of progressive students (a seed "
        "that never reaches it counted at the budget: open marker, arrow towards the true value); above the "
        "dashed line progressive is faster." + (f" Not placed: {'; '.join(left_out)}." if left_out else ""),
    )
    return fig


# -- the command ------------------------------------------------------------------------------------------------
def claim_atlas(out: Path, smoke: bool) -> None:
    """Refuse (``ConfigError``) an ``out`` that is a file, a non-empty directory that is not an atlas, or an atlas
    of the other kind (smoke or full); checks only, writes nothing."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose a directory (nothing was written)")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        stored = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(
            f"--out {out} is a directory that is not empty and holds no atlas ({SETTINGS} missing or unreadable); "
            "choose a new or empty directory (nothing was written)"
        ) from None
    if stored.get("smoke") != smoke:
        held, asked = ("smoke", "full") if stored.get("smoke") else ("full", "smoke")
        raise ConfigError(
            f"--out {out} holds a {held} atlas; a {asked} atlas{' (--smoke)' if smoke else ''} goes into "
            "another directory, so that smoke and full results never mix (nothing was written)"
        )


def finished(rundir: RunDir, config: ExperimentConfig) -> dict[str, Any] | None:
    """The ``results.json`` of the run of ``config`` in ``rundir`` when it has finished, else None."""
    results = rundir.finished_results()
    return results if results is not None and results.get("config_sha256") == config_hash(config) else None


def atlas(
    out: str | Path,
    tasks: Sequence[str] | None = None,
    seeds: int | None = None,
    smoke: bool = False,
    device: str = "auto",
    launcher: LauncherConfig | None = None,
    overwrite: bool = False,
    wait: bool = False,
    log=print,
    report_to: str | Sequence[str] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the atlas into directory ``out`` and return ``atlas.json``'s content (see the module docstring).

    ``tasks``: names of :data:`ATLAS_TASKS` (default all); ``seeds``: students per schedule (default 3, smoke 1);
    ``smoke``: the tasks' smallest versions. ``launcher``: run each task as jobs (default: in this process);
    ``wait``: with Slurm, wait for each task's jobs (submitit-local always waits); a task whose jobs have not
    ended is ``pending`` and a rerun adds it. ``overwrite``, ``device``, ``report_to``: as for
    :func:`~progdistill.recipes.runner.run`, for every task; ``threads``: ``--threads``, else each task's
    count from its config (:func:`~progdistill.core.threads.set_threads`). The tables cover the tasks asked
    for and every other registered task already finished in ``out`` with the same settings.

    Bad input (an unknown task, a bad seed count, a directory that is not an atlas or is one of the other kind,
    a task config that ``run`` would refuse) raises ``ConfigError`` before anything is written, and so does a
    launcher whose package is missing (``MissingExtraError``). A task that fails
    is recorded and the others still run; then ``AtlasFailedError`` names the failed tasks (after the atlas
    of the finished ones is written)."""
    names = select_tasks(tasks)
    seeds = (SMOKE_SEEDS if smoke else SEEDS) if seeds is None else seeds
    check_positive_int("--seeds", seeds)
    if threads is not None:
        check_positive_int("--threads", threads)
    launcher = launcher or LauncherConfig()
    out = Path(out)
    configs = {name: task_config(ATLAS_TASKS[name], smoke, seeds) for name in ATLAS_TASKS}
    claim_atlas(out, smoke)
    resolve_device(device)
    if launcher.kind != "local":  # not once per task, after the first ones ran
        require("submitit", "launch", f"--launcher {launcher.kind}")
    for name in names:  # everything run() refuses from a config alone, for every task before the first trains
        if finished(RunDir(out / name), configs[name]) is None:
            try:
                check_run(configs[name], device, log=lambda *a: None)
            except ConfigError as exc:
                raise ConfigError(f"atlas task {name!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SETTINGS, {"smoke": smoke})
    failed: dict[str, str] = {}
    for i, name in enumerate(names):
        config, rundir = configs[name], RunDir(out / name)
        if finished(rundir, config) is not None:
            log(f"atlas: task {i + 1}/{len(names)} {name}: finished before, not rerun ({rundir.path})")
            continue
        log(f"atlas: task {i + 1}/{len(names)} {name} (preset {config.preset}) into {rundir.path}")
        try:
            if launcher.kind == "local":
                set_threads(threads, step_size(config))  # per task: from its config and the cores
                run(config, rundir.path, overwrite=overwrite, device=device, log=log, report_to=report_to)
            else:
                launch(
                    config,
                    rundir.path,
                    launcher,
                    overwrite=overwrite,
                    device=device,
                    wait=wait or launcher.kind == "submitit-local",
                    log=log,
                    report_to=report_to,
                )
        except Exception as exc:  # the other tasks still run; the error is named at the end
            failed[name] = f"{type(exc).__name__}: {exc}"
            log(f"atlas: task {name} failed: {failed[name]}")
    summary = aggregate(out, names, configs, smoke, failed, device)
    log(atlas_markdown(summary))
    if failed:
        raise AtlasFailedError(
            f"{len(failed)} atlas task(s) failed: "
            + "; ".join(f"{n} ({why.splitlines()[0]})" for n, why in failed.items())
            + f". The atlas of the others is in {out / TABLE}; rerun the same command to resume the failed ones"
        )
    return summary


def aggregate(
    out: Path,
    names: Sequence[str],
    configs: dict[str, ExperimentConfig],
    smoke: bool,
    failed: dict[str, str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Write ``atlas.json``, ``atlas.md`` and ``atlas.png`` into ``out`` from the finished task runs (``names`` and
    every other task of ``configs`` finished there) and return ``atlas.json``'s content; ``names`` not finished
    and not ``failed`` are ``pending``."""
    failed = dict(failed or {})
    entries, pending, environments = [], {}, {}
    for name, config in configs.items():
        rundir = RunDir(out / name)
        results = finished(rundir, config)
        if results is None:
            if name in names and name not in failed:
                pending[name] = f"not finished: its jobs have not ended; see `progdistill status {rundir.path}`"
            continue
        task = ATLAS_TASKS[name]
        metric = transition_metric(task)
        steps, values = Trajectory(rundir.teacher).curve(metric)
        phases = teacher_phases(steps, values, metric, config.teacher.steps)
        entries.append(task_summary(task, config, results, phases, smoke))
        if "environment" in results:
            environments[name] = results["environment"]
    summary = {
        "smoke": smoke,
        "columns": list(COLUMNS),
        "tasks": entries,
        "failed": failed,
        "pending": pending,
        # the runs' own environment (where their numbers were measured), else this machine's
        "environment": next(iter(environments.values()), None) or environment(resolve_device(device)),
        "wall_time_s": round(sum(e["wall_time_s"] for e in entries), 2),
    }
    if any(env != summary["environment"] for env in environments.values()):  # tasks measured on other machines
        summary["environments"] = environments
    atomic_write_json(out / JSON, summary)
    atomic_write_text(out / TABLE, atlas_markdown(summary))
    save_figure(atlas_figure(summary), out / FIGURE)
    return summary
