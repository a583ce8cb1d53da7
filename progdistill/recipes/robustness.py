"""A robustness map of the headline claim (paper §1: progressive distillation reaches the threshold about when
the teacher does, where CE and one-shot distillation do not): the run's student settings varied over the
student learning-rate schedule (constant; linear warmup over 6% of the steps then cosine decay, as the
authors' student scripts) x the distillation temperature T (0 = the teacher's argmax), for CE, one-shot,
progressive (speed 1) and 2-shot-auto (or a subset of them, to spend less CPU on a slow model), each over the
seeds.

Writes under ``RUN_DIR/ablations/robustness/``: ``<lr schedule>-T<T>-<schedule>-seed<k>/metrics.jsonl`` (CE does
not depend on T and is trained once per learning-rate schedule, as ``<lr schedule>-ce-seed<k>``),
``settings.json`` (a rerun with other settings is refused rather than relabelled), ``summary.json`` (per cell:
steps to the run's threshold per seed, seeds reaching it, mean ratio of those steps to the teacher's, mean
final accuracy), ``summary.md`` (the table) and ``heatmap.png``. The schedules trained are not part of
``settings.json``: a student's name says its schedule, so a map of a subset reuses its students in a later map
of more schedules.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from progdistill.core.config import ConfigError, check_positive_int, to_dict
from progdistill.core.distributed import resolve_device
from progdistill.core.files import atomic_write_json, atomic_write_text, read_metrics
from progdistill.distill.schedules import CE, OneShot, Progressive, TwoShotAuto
from progdistill.experiment import StudentRun
from progdistill.recipes.ablation import claim_directory
from progdistill.recipes.runner import train_students
from progdistill.store.lock import RunLock
from progdistill.store.report import caption, save_figure, steps_to_threshold
from progdistill.store.rundir import RunDir

LR_SCHEDULES = ("constant", "cosine")
TEMPERATURES = (0.0, 0.5, 1.0)
WARMUP_FRACTION = 0.06  # the authors' student scripts: 6% linear warmup, then cosine decay to 0
COLUMNS = ("ce", "one-shot", "progressive", "2-shot-auto")


def ablate_robustness(
    run_dir: str | Path,
    seeds: int | None = None,
    temperatures=TEMPERATURES,
    lr_schedules=LR_SCHEDULES,
    schedules=COLUMNS,
    device: str = "auto",
    log=print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the grid lr schedule x temperature x {CE, one-shot, progressive, 2-shot-auto} x seeds on the
    finished teacher of ``run_dir`` with the run's student budget; return the content of ``summary.json``
    (per cell: steps to the run's threshold per seed, in student optimizer steps, seeds reaching it, the mean
    ratio to the teacher's steps, the mean final eval accuracy). Paper §1: does the headline hold under the
    authors' student schedule (6% warmup + cosine) and temperatures?

    ``seeds``: students per cell (default: the run's seeds). ``temperatures``: distillation temperatures, each
    >= 0. ``lr_schedules``: a subset of ``LR_SCHEDULES``. ``schedules``: a subset of ``COLUMNS`` (the table keeps
    the order of ``COLUMNS``). 2-shot-auto keeps the run's ``first_steps`` when the
    run has one, else a third of the student steps. Bad options raise ``ConfigError`` before anything is
    written; students already trained with the same settings are reused; an ablation stored with other
    settings is refused unless ``overwrite`` (which deletes it first).
    """
    temperatures = [_temperature(t) for t in temperatures]
    lr_schedules = list(lr_schedules)
    columns = list(schedules)
    for name, values in (("--temperatures", temperatures), ("--lr-schedules", lr_schedules), ("--schedules", columns)):
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"{name} {values} is invalid: give one or more values, each once")
    for lr in lr_schedules:
        if lr not in LR_SCHEDULES:
            raise ConfigError(
                f"--lr-schedules: unknown learning-rate schedule {lr!r}; valid: {', '.join(LR_SCHEDULES)}"
            )
    for column in columns:
        if column not in COLUMNS:
            raise ConfigError(f"--schedules: unknown schedule {column!r}; valid: {', '.join(COLUMNS)}")
    columns = [c for c in COLUMNS if c in columns]
    rundir = RunDir(run_dir)
    resolve_device(device)  # a bad --device is refused even when every student is already trained
    config = rundir.config()
    seeds = config.seeds if seeds is None else seeds
    check_positive_int("--seeds", seeds)
    trajectory = rundir.verify_teacher()  # a damaged teacher is refused before anything is written
    auto = [s for s in config.schedules if isinstance(s, TwoShotAuto)]
    two_shot = auto[0] if auto else TwoShotAuto(first_steps=max(1, config.student.steps // 3))
    distilled = {"one-shot": OneShot(), "progressive": Progressive(speed=1.0), "2-shot-auto": two_shot}
    distilled = {col: s for col, s in distilled.items() if col in columns}
    directory = rundir.ablations / "robustness"
    settings = {
        "seeds": seeds,
        "temperatures": temperatures,
        "lr_schedules": lr_schedules,
        "warmup_fraction": WARMUP_FRACTION,
        "two_shot_auto": to_dict(two_shot),
    }

    cells = []  # (lr, temperature or None for CE, column, [student names])
    with RunLock(rundir.path):
        claim_directory(directory, settings, overwrite)
        for lr in lr_schedules:
            optimizer = replace(config.student.optimizer, lr_schedule=lr, warmup_fraction=WARMUP_FRACTION)
            for i, t in enumerate(temperatures):
                cell_config = replace(
                    config,
                    student=replace(config.student, optimizer=optimizer),
                    distillation=replace(config.distillation, temperature=t),
                )
                d = cell_config.distillation
                runs = [
                    StudentRun(f"{lr}-T{t:g}-{col}-seed{k}", s, k, None, d)
                    for col, s in distilled.items()
                    for k in range(seeds)
                ]
                cells += [(lr, t, col, [f"{lr}-T{t:g}-{col}-seed{k}" for k in range(seeds)]) for col in distilled]
                # CE ignores the teacher: trained once per lr schedule, in the first stack
                if i == 0 and "ce" in columns:
                    runs += [StudentRun(f"{lr}-ce-seed{k}", CE(), k, None, d) for k in range(seeds)]
                    cells.append((lr, None, "ce", [f"{lr}-ce-seed{k}" for k in range(seeds)]))
                log(f"robustness map: student lr {lr}, temperature {t:g}")
                train_students(
                    cell_config,
                    rundir.path,
                    trajectory,
                    device,
                    log,
                    runs=runs,
                    directory=directory,
                    task=rundir.task(config),
                )

    teacher_steps = steps_to_threshold(rundir.teacher_metrics(), config.threshold)
    summary = {
        "preset": config.preset,
        "threshold": config.threshold,
        "budget": config.student.steps,
        **settings,
        "schedules": columns,
        "teacher_steps_to_threshold": teacher_steps,
        "cells": [_cell(directory, lr, t, col, names, config.threshold, teacher_steps) for lr, t, col, names in cells],
    }
    atomic_write_json(directory / "summary.json", summary)
    atomic_write_text(directory / "summary.md", summary_markdown(summary))
    _plot(summary, directory / "heatmap.png")
    log(summary_markdown(summary))
    return summary


def _temperature(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"--temperatures: {value!r} is invalid: each temperature must be a number >= 0 (0 = the teacher's argmax)"
        )
    return float(value)


def _cell(
    directory: Path,
    lr: str,
    t: float | None,
    column: str,
    names: list[str],
    threshold: float,
    teacher_steps: int | None,
) -> dict[str, Any]:
    curves = [read_metrics(directory / name / "metrics.jsonl") for name in names]
    steps = [steps_to_threshold(c, threshold) for c in curves]
    reached = [s for s in steps if s is not None]
    ratio = statistics.mean(s / teacher_steps for s in reached) if reached and teacher_steps else None
    cell = {
        "lr_schedule": lr,
        "temperature": t,
        "schedule": column,
        "students": names,
        "steps_to_threshold": steps,
        "seeds_reaching": len(reached),
        "mean_ratio_to_teacher": ratio,
        "final_accuracy_mean": statistics.mean(c[-1]["eval_accuracy"] for c in curves),
    }
    cell["text"] = cell_text(cell)
    return cell


def cell_text(cell: dict[str, Any]) -> str:
    """ "36k (3/3, 1.05x)": mean steps to the threshold over the seeds that reach it, seeds reaching it, mean
    ratio to the teacher's steps; "never (0.50)": no seed reaches it, mean final accuracy."""
    reached = [s for s in cell["steps_to_threshold"] if s is not None]
    if not reached:
        return f"never ({cell['final_accuracy_mean']:.2f})"
    mean = statistics.mean(reached)
    steps = f"{mean / 1000:.0f}k" if mean >= 10_000 else f"{mean:.0f}"
    ratio = "" if cell["mean_ratio_to_teacher"] is None else f", {cell['mean_ratio_to_teacher']:.2f}x"
    return f"{steps} ({len(reached)}/{len(cell['steps_to_threshold'])}{ratio})"


def _grid(summary: dict[str, Any]) -> tuple[list[tuple[str, float]], dict[tuple[str, float, str], dict]]:
    """Rows (lr schedule, temperature) and the cell of each (row, column); CE's one cell per lr schedule
    stands in every temperature's row."""
    rows = [(lr, t) for lr in summary["lr_schedules"] for t in summary["temperatures"]]
    by = {(c["lr_schedule"], c["temperature"], c["schedule"]): c for c in summary["cells"]}
    return rows, {
        (lr, t, col): by[(lr, None if col == "ce" else t, col)] for lr, t in rows for col in _columns(summary)
    }


def _columns(summary: dict[str, Any]) -> list[str]:
    return summary.get("schedules", list(COLUMNS))  # a summary written before --schedules has every column


def _header(column: str) -> str:
    return "CE" if column == "ce" else column


def summary_markdown(summary: dict[str, Any]) -> str:
    """The map as a table: rows student lr schedule x temperature, columns the schedules."""
    thr, t_steps = summary["threshold"], summary["teacher_steps_to_threshold"]
    rows, cells = _grid(summary)
    columns = _columns(summary)
    teacher = "never reached it" if t_steps is None else f"reached it at step {t_steps}"
    lines = [
        f"# {summary['preset']}: robustness of the headline",
        "",
        f"Steps to {thr:.0%} eval accuracy (mean over the seeds that reach it), seeds reaching it, and the "
        f'mean ratio to the teacher\'s steps; "never (acc)": no seed reaches it, mean final accuracy. '
        f"{summary['seeds']} seed(s) per cell, {summary['budget']} student steps; the teacher {teacher}. "
        f"CE does not use the teacher: one cell per lr schedule, repeated in each temperature's row. "
        f"Cosine: {summary['warmup_fraction']:.0%} linear warmup, then cosine decay to 0.",
        "",
        "| student lr schedule | temperature | " + " | ".join(_header(c) for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for lr, t in rows:
        lines.append(f"| {lr} | {t:g} | " + " | ".join(cells[(lr, t, col)]["text"] for col in columns) + " |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    rows, cells = _grid(summary)
    columns = _columns(summary)
    frac = np.array(
        [[cells[(lr, t, col)]["seeds_reaching"] / summary["seeds"] for col in columns] for lr, t in rows]
    )  # (rows, columns)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.55 * len(rows)))
    image = ax.imshow(frac, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", alpha=0.7)  # light: text stays legible
    for i, (lr, t) in enumerate(rows):
        for j, col in enumerate(columns):
            ax.text(j, i, cells[(lr, t, col)]["text"], ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(columns)), [_header(c) for c in columns])
    ax.set_yticks(range(len(rows)), [f"{lr}, T = {t:g}" for lr, t in rows])
    ax.set_xlabel("student schedule")
    ax.set_ylabel("student learning-rate schedule,\ndistillation temperature T")
    for i in range(1, len(summary["lr_schedules"])):
        ax.axhline(i * len(summary["temperatures"]) - 0.5, color="k", lw=1.5)
    thr, t_steps = summary["threshold"], summary["teacher_steps_to_threshold"]
    teacher = "never" if t_steps is None else f"at step {t_steps}"
    ax.set_title(f"{summary['preset']}: steps to {thr:.0%} eval accuracy (teacher: {teacher})", fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of seeds reaching it", fraction=0.04)
    caption(
        fig,
        f"Cell: mean steps to {thr:.0%} over the seeds that reach it (seeds reaching it / "
        f'{summary["seeds"]}, mean ratio to the teacher\'s steps), or "never (mean final accuracy)". '
        f"Cosine: {summary['warmup_fraction']:.0%} warmup then cosine decay; T = 0: teacher argmax; "
        "CE uses no teacher.",
    )
    save_figure(fig, path)
