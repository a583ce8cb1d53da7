"""The 2-shot ablation (paper §1, 2-shot): the first checkpoint taken before, during and after the
teacher's phase transition, then the final checkpoint; only "during" is expected to work.

Writes under ``RUN_DIR/ablations/two-shot/``: ``<variant>-seed<k>/metrics.jsonl`` (variant = before, during,
after), ``settings.json`` (first steps and checkpoints, so a rerun with other settings is refused rather
than relabelled), ``summary.json`` (the metric whose transition chose the checkpoints: the run's 2-shot-auto
metric, else eval_accuracy; the teacher's accuracy and loss at each checkpoint; per student its steps to the
threshold and its accuracy at the end of the budget) and ``accuracy.png`` (the three student curves, mean
with a min-max band over seeds, and the teacher).
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from progdistill.core.config import ConfigError, check_positive_int
from progdistill.core.distributed import resolve_device
from progdistill.core.files import atomic_write_json, read_metrics
from progdistill.distill.phases import NoTransitionError
from progdistill.distill.schedules import FINAL, KShot, TwoShotAuto
from progdistill.experiment import StudentRun
from progdistill.recipes.runner import train_students
from progdistill.store.lock import RunLock
from progdistill.store.report import caption, curve_style, save_figure, steps_to_threshold
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory

VARIANTS = ("before", "during", "after")
CONVERGED = 0.002


def ablation_checkpoints(trajectory: Trajectory, metric: str = "eval_accuracy") -> dict[str, int]:
    """The checkpoint steps of the three variants on the transition of ``metric`` that 2-shot-auto detects
    (:meth:`progdistill.distill.schedules.TwoShotAuto.window`; start, middle, end):
    before = the last checkpoint before ``start``; during = ``middle``; after = the first checkpoint after
    ``end`` at which the teacher has converged: its metric within ``CONVERGED`` (0.002) of the final level.
    (A checkpoint just past the window, e.g. at accuracy 0.99, can still carry the transition's low-degree
    signal; "after" means the converged teacher, as the paper's accuracy ~1.0.) Raises ``ConfigError`` when
    the teacher has no transition or no checkpoint before it."""
    steps, values = trajectory.curve(metric)
    try:
        window = TwoShotAuto(metric=metric).window(steps, values)
    except NoTransitionError as exc:
        raise ConfigError(f"the 2-shot ablation needs a teacher with a phase transition: {exc}") from None
    earlier = [s for s in steps if s < window.start]
    if not earlier:
        raise ConfigError(
            f"the teacher's transition starts at its first checkpoint (step {steps[0]}); "
            "there is no checkpoint before it"
        )
    sign = 1 if metric == "eval_accuracy" else -1
    later = [s for s, v in zip(steps, values) if s > window.end and sign * (window.after - v) <= CONVERGED]
    return {"before": earlier[-1], "during": window.middle, "after": later[0] if later else steps[-1]}


def ablate_two_shot(
    run_dir: str | Path, first_steps: int | None = None, device: str = "auto", log=print, overwrite: bool = False
) -> dict[str, Any]:
    """Run the 2-shot ablation on the finished teacher of ``run_dir`` with the run's student budget.

    ``first_steps``: student steps on the first checkpoint (default: the run's 2-shot-auto setting, else a
    third of the student steps). Students already trained with the same settings are reused; an ablation
    stored with other settings (first steps or checkpoints) is refused with ``ConfigError`` naming both,
    unless ``overwrite`` (which deletes it first). Returns the content of ``summary.json``.
    """
    rundir = RunDir(run_dir)
    resolve_device(device)  # a bad --device is refused even when every student is already trained
    config = rundir.config()
    trajectory = rundir.verify_teacher()  # a damaged teacher is refused before anything is written
    auto = [s for s in config.schedules if isinstance(s, TwoShotAuto)]
    metric = auto[0].metric if auto else "eval_accuracy"  # where the run's 2-shot-auto finds the transition
    if first_steps is None:
        first_steps = auto[0].first_steps if auto else max(1, config.student.steps // 3)
    check_positive_int("--first-steps", first_steps)
    if first_steps >= config.student.steps:
        raise ConfigError(
            f"--first-steps {first_steps} is invalid: must be smaller than the run's student.steps="
            f"{config.student.steps} (the rest of the budget goes to the final checkpoint)"
        )
    picks = ablation_checkpoints(trajectory, metric)
    log(
        f"2-shot ablation, first checkpoints (transition of the teacher's {metric}): "
        + ", ".join(f"{v} = step {s} (teacher {metric} {trajectory.metrics(s)[metric]:.3f})" for v, s in picks.items())
    )
    directory = rundir.ablations / "two-shot"
    settings = {"first_steps": first_steps, "checkpoints": picks}
    runs = [
        StudentRun(f"{v}-seed{k}", KShot(points=((picks[v], first_steps), (FINAL, 1))), k, None, config.distillation)
        for k in range(config.seeds)
        for v in VARIANTS
    ]
    with RunLock(rundir.path):
        claim_directory(directory, settings, overwrite, legacy=_settings_of_summary)
        train_students(
            config, rundir.path, trajectory, device, log, runs=runs, directory=directory, task=rundir.task(config)
        )

    curves = {name: read_metrics(directory / name / "metrics.jsonl") for name in (run.name for run in runs)}
    summary: dict[str, Any] = {
        "first_steps": first_steps,
        "budget": config.student.steps,
        "threshold": config.threshold,
        "metric": metric,
        "checkpoints": {
            v: {
                "step": s,
                "teacher_eval_accuracy": trajectory.metrics(s)["eval_accuracy"],
                "teacher_eval_loss": trajectory.metrics(s)["eval_loss"],
            }
            for v, s in picks.items()
        },
        "students": [
            {
                "variant": name.split("-seed")[0],
                "seed": seed,
                "steps_to_threshold": steps_to_threshold(curves[name], config.threshold),
                "final_accuracy": curves[name][-1]["eval_accuracy"],
            }
            for name, seed in ((run.name, run.seed) for run in runs)
        ],
    }
    atomic_write_json(directory / "summary.json", summary)
    _plot(curves, trajectory, directory / "accuracy.png", config.preset, summary)
    for v in VARIANTS:
        accs = [s["final_accuracy"] for s in summary["students"] if s["variant"] == v]
        log(f"  {v:>6}: final accuracy {statistics.mean(accs):.4f} (min {min(accs):.4f}, max {max(accs):.4f})")
    return summary


def claim_directory(directory: Path, settings: dict[str, Any], overwrite: bool, legacy=None) -> None:
    """Make ``directory`` hold an ablation with ``settings``: reuse one with the same settings, refuse one
    with others (or with none recorded) unless ``overwrite``. ``legacy``: reads the settings of an ablation
    written before settings.json existed from its ``summary.json`` path (None when it cannot)."""
    path = directory / "settings.json"
    if directory.exists() and any(directory.iterdir()):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = legacy(directory / "summary.json") if legacy else None
        if stored != settings:
            if not overwrite:
                raise ConfigError(
                    f"{directory} holds an ablation with other settings ({stored or 'not recorded'}; "
                    f"now {settings}); its students would be reused under the wrong label. Pass "
                    "--overwrite to delete it and train again, or use the settings it was run with"
                )
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def _settings_of_summary(path: Path) -> dict[str, Any] | None:
    """The settings an ablation written before settings.json existed was run with, read from its summary."""
    try:
        summary = json.loads(path.read_text())
        return {
            "first_steps": summary["first_steps"],
            "checkpoints": {v: summary["checkpoints"][v]["step"] for v in VARIANTS},
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plot(curves, trajectory: Trajectory, path: Path, preset: str, summary: dict) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.6))
    steps, acc = trajectory.curve("eval_accuracy")
    ax.plot(steps, acc, "k--", lw=1, label="teacher")
    seeds = 0
    for i, v in enumerate(VARIANTS):
        runs = [c for name, c in curves.items() if name.startswith(f"{v}-seed")]
        seeds = len(runs)
        x = np.array([r["step"] for r in runs[0]])
        y = np.array([[r["eval_accuracy"] for r in c] for c in runs])  # (seeds, evals)
        ckpt = summary["checkpoints"][v]
        (line,) = ax.plot(
            x,
            y.mean(0),
            label=f"{v}: checkpoint {ckpt['step']} (teacher acc {ckpt['teacher_eval_accuracy']:.2f})",
            **curve_style(i, len(x), len(VARIANTS)),
        )
        ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.axvline(summary["first_steps"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("student steps (switch to the final checkpoint at the dotted line)")
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"{preset}: 2-shot, first checkpoint before / during / after the transition", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    bands = f"shaded bands: min-max over the {seeds} seeds" if seeds > 1 else "one seed, so no band"
    caption(
        fig,
        f"Lines: mean over the seeds of each variant; {bands}. Dashed black: the teacher (teacher "
        "steps on the same axis).",
    )
    save_figure(fig, path)
