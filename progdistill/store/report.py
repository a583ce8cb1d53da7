"""Reports built from a run directory's files alone: ``results.json``, ``summary.md``, ``accuracy.png``."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed, whatever the environment says
import matplotlib.pyplot as plt
import numpy as np

from progdistill.core.config import to_dict
from progdistill.core.files import atomic_write_json, atomic_write_text, naming_disk_full, read_metrics
from progdistill.core.settings import DistillationConfig
from progdistill.experiment import config_hash, student_runs
from progdistill.store.environment import environment_markdown
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory

# Line styles and markers of the schedules' curves, in turn: two schedules with identical curves (2-shot and
# 2-shot-auto on the same checkpoint) stay distinguishable.
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def steps_to_threshold(records: Sequence[dict], threshold: float) -> int | None:
    """The first evaluated step whose eval accuracy is >= ``threshold``; None if never."""
    for rec in records:
        if rec["eval_accuracy"] >= threshold:
            return rec["step"]
    return None


def picked_checkpoints(config, trajectory: Trajectory) -> dict[str, dict[str, Any]]:
    """Per schedule that picks its checkpoints from the teacher's curve (by label), what it picks on the teacher
    ``trajectory`` (``schedule.resolution``; 2-shot-auto, paper §1: the first ``checkpoint``, the middle of the
    detected transition, the teacher's ``value`` of ``metric`` there, ``first_steps``, and the ``transition``)."""
    picks = {}
    for sched in config.schedules:
        picked = sched.resolution(trajectory)  # None: a schedule that does not depend on the teacher's curve
        if picked is not None:
            picks[sched.label] = picked
    return picks


def _run_summary(records: list[dict], threshold: float) -> dict[str, Any]:
    return {
        "steps_to_threshold": steps_to_threshold(records, threshold),
        "final_accuracy": records[-1]["eval_accuracy"],
        "final_loss": records[-1]["eval_loss"],
        "steps": records[-1]["step"],
    }


def build_results(out: Path, wall_time_s: float, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json`` content from the files of run directory ``out``; ``env``: where the run was measured
    (:func:`progdistill.store.environment.environment`), recorded as ``environment``."""
    rundir = RunDir(out)
    config = rundir.config()
    teacher = rundir.teacher_metrics()
    students = []
    for run in student_runs(config):
        records = read_metrics(rundir.student_metrics(run.name))
        way = {"way": run.way or "distillation"} if config.ways else {}
        students.append(
            {"schedule": run.schedule.label, **way, "seed": run.seed, **_run_summary(records, config.threshold)}
        )
    results = {
        "preset": config.preset,
        "config_sha256": config_hash(config),
        "threshold": config.threshold,
        "wall_time_s": round(wall_time_s, 2),
        "teacher": _run_summary(teacher, config.threshold),
        "students": students,
    }
    if config.ways:  # each student's "way": "distillation" (the experiment's own settings) or a way's name
        results["ways"] = {
            "distillation": to_dict(config.distillation, complete=True),
            **{w.name: to_dict(w.distillation, complete=True) for w in config.ways},
        }
    picks = picked_checkpoints(config, Trajectory(rundir.teacher))
    if picks:
        results["picked_checkpoints"] = picks
    if env is not None:
        results["environment"] = env
    probes = rundir.probe_summaries()
    if probes:
        results["probes"] = probes
    return results


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} +/- {format(statistics.stdev(values), fmt)}"


def summary_markdown(results: dict[str, Any]) -> str:
    """Per schedule: steps to threshold (mean +/- std over the seeds that got there) and final accuracy."""
    thr = results["threshold"]
    teacher = results["teacher"]
    t_steps = teacher["steps_to_threshold"]
    modified = results.get("modified")
    ways = results.get("ways")
    lines = [
        f"# Derived from {results['preset']} (modified: {', '.join(modified)})"
        if modified
        else f"# {results['preset']}",
        "",
        f"Teacher: {'never reached' if t_steps is None else f'reached {thr:.0%} at step {t_steps}'}, "
        f"final accuracy {teacher['final_accuracy']:.4f} after {teacher['steps']} steps.",
        "",
        f"|{' way |' if ways else ''} schedule | steps to {thr:.0%} (mean +/- std) | seeds reaching {thr:.0%} | "
        f"ratio to teacher | final accuracy | final loss (nats) |",
        "|---" * (7 if ways else 6) + "|",
    ]
    order = list(dict.fromkeys((s.get("way"), s["schedule"]) for s in results["students"]))
    for way, label in order:
        runs = [s for s in results["students"] if (s.get("way"), s["schedule"]) == (way, label)]
        reached = [s["steps_to_threshold"] for s in runs if s["steps_to_threshold"] is not None]
        ratio = "-"
        if reached and t_steps:
            ratio = _mean_std([r / t_steps for r in reached], ".2f")
        lines.append(
            f"|{f' {way} |' if ways else ''} {label} | {_mean_std(reached, '.0f') if reached else 'not reached'} | "
            f"{len(reached)}/{len(runs)} | {ratio} | "
            f"{_mean_std([s['final_accuracy'] for s in runs], '.4f')} | "
            f"{_mean_std([s['final_loss'] for s in runs], '.4f')} |"
        )
    lines += ["", f"Mean +/- sample std over seeds. Wall time: {results['wall_time_s']:.1f} s.", ""]
    if ways:
        lines += [
            "Ways of distilling (the `distillation` settings that differ from the defaults; `distillation` is the "
            "experiment's own):",
            "",
            *[f"- {name}: {_settings(d)}" for name, d in ways.items()],
            "",
        ]
    for label, pick in results.get("picked_checkpoints", {}).items():
        window, metric = pick["transition"], pick["metric"]
        lines += [
            f"{label}: the first checkpoint is step {pick['checkpoint']} (teacher {metric} "
            f"{pick['value']:.4f}), the middle of the transition detected at steps {window['start']}-"
            f"{window['end']} ({metric} {window['before']:.4f} -> {window['after']:.4f}), for "
            f"{pick['first_steps']} student steps; then the final checkpoint.",
            "",
        ]
    if "environment" in results:
        lines += [environment_markdown(results["environment"]), ""]
    ngram = results.get("probes", {}).get("ngram")
    if ngram:
        lines += _ngram_lines(ngram, seeds=len({s["seed"] for s in results["students"]}))
    hidden = results.get("probes", {}).get("ngram-attention")
    if hidden:
        lines += [
            f"With masked tokens also hidden from attention (`--hiding attention`, the authors' probe), the "
            f"teacher's median {hidden['metric']} peaks at step {hidden['peak_step']} "
            f"({hidden['peak_median']:.4f}); final checkpoint {hidden['final_median']:.4f}.",
            "",
        ]
    oracle = results.get("probes", {}).get("ngram-oracle")
    if oracle:
        scores, loss = oracle["scores"], oracle["masked_lm_loss"]
        floor = (
            "not scored (no token was hidden)"
            if loss["mean"] is None
            else f"{loss['mean']:.4f}"
            + ("" if loss["std_error"] is None else f" +/- {loss['std_error']:.4f}")
            + " nats"
        )
        lines += [
            "The grammar's Bayes-optimal masked LM (exact posterior by the inside algorithm, same sentences "
            "and positions; `progdistill probe oracle`): median "
            + ", ".join(f"{k} {v['median']:.4f}" for k, v in scores.items() if k.startswith("M_"))
            + f"; its cross-entropy with one token hidden is {scores['cross_entropy']['mean']:.4f} nats "
            f"(mean), and with {loss['mask_rate']:.0%} of the tokens hidden {floor} (the floor of the "
            "validation loss). A converged teacher's probes end there.",
            "",
        ]
    generation = results.get("probes", {}).get("generation")
    if generation:
        lines += [
            "## Generations the grammar accepts",
            "",
            f"{generation['samples']} sentences sampled per model at temperature 1 from BOS. Teacher: "
            f"{generation['teacher']['acceptance']:.3f}"
            + (
                f" (grammatical prefix {generation['teacher']['grammatical_prefix']:.3f})"
                if "grammatical_prefix" in generation["teacher"]
                else ""
            )
            + ".",
            "",
            "| schedule | acceptance (mean +/- std) | grammatical prefix (mean +/- std) |",
            "|---|---|---|",
        ]

        def prefix(v):
            return (
                f"{v['grammatical_prefix mean']:.3f} +/- {v['grammatical_prefix std']:.3f}"
                if "grammatical_prefix mean" in v
                else "-"
            )  # runs written before the measure: -

        lines += [
            f"| {label} | {v['acceptance mean']:.3f} +/- {v['acceptance std']:.3f} | {prefix(v)} |"
            for label, v in generation["students"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def _settings(distillation: dict[str, Any]) -> str:
    """A way's distillation settings (a complete JSON form) as the fields that differ from the defaults."""
    defaults = to_dict(DistillationConfig(), complete=True)
    changed = [f"{k}={v}" for k, v in distillation.items() if defaults.get(k) != v]
    return ", ".join(changed) or "the defaults (token-level forward KL)"


def _ngram_lines(summary: dict[str, Any], seeds: int) -> list[str]:
    """The n-gram probe summary (probes/ngram-summary.json) as markdown."""
    lines = ["## Probes", ""]
    phases = summary.get("phases")
    if phases:
        lines.append(
            f"Teacher loss phases: plateau {phases['plateau'][0]}-{phases['plateau'][1]}, sharp drop "
            f"{phases['sharp_drop'][0]}-{phases['sharp_drop'][1]}, slow decay "
            f"{phases['slow_decay'][0]}-{phases['slow_decay'][1]} (steps)."
        )
    else:
        lines.append(f"No sharp drop detected in the teacher's loss: {summary.get('no_transition')}")
    where = (
        "inside the sharp drop"
        if summary.get("peak_in_sharp_drop")
        else "next to the sharp drop"
        if summary.get("peak_in_or_next_to_sharp_drop")
        else "outside the sharp drop"
    )
    lines += [
        f"Median {summary['metric']} of the teacher peaks at step {summary['peak_step']} "
        f"({summary['peak_median']:.4f}; {where if phases else 'no phases to compare'}); final checkpoint "
        f"{summary['final_median']:.4f}.",
        "",
    ]
    columns = sorted({k for entry in summary["students"].values() for k in entry})
    if columns:
        lines += ["| schedule | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for label, entry in summary["students"].items():
            cells = [
                (
                    "-"
                    if c not in entry
                    else f"{entry[c]['mean']:.4f}"
                    if seeds == 1
                    else f"{entry[c]['mean']:.4f} +/- {entry[c]['std']:.4f}"
                )
                for c in columns
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def accuracy_figure(out: Path):
    """Eval accuracy vs steps: one line per schedule (mean over seeds; its own line style and markers) with a
    min-max band over seeds, the teacher dashed black (the layout of the paper's Figure 1); the legend right
    of the data and a caption saying what lines and bands are. Returns the matplotlib figure."""
    rundir = RunDir(out)
    config = rundir.config()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    teacher = rundir.teacher_metrics()
    ax.plot([r["step"] for r in teacher], [r["eval_accuracy"] for r in teacher], "k--", lw=1, label="teacher")
    groups: dict[str, list[str]] = {}  # label ("progressive", "seq-kd-progressive") -> its students, by seed
    for run in student_runs(config):
        groups.setdefault(run.label, []).append(run.name)
    for i, (label, names) in enumerate(groups.items()):
        curves = [read_metrics(rundir.student_metrics(name)) for name in names]
        steps = np.array([r["step"] for r in curves[0]])
        acc = np.array([[r["eval_accuracy"] for r in c] for c in curves])  # (seeds, evals)
        style = curve_style(i, len(steps), len(groups))
        (line,) = ax.plot(steps, acc.mean(0), label=f"{label} (n={len(curves)})", **style)
        ax.fill_between(steps, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(config.threshold, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training steps")
    ax.set_ylabel(config.task.accuracy_label)
    ax.set_title(f"{config.preset}: student accuracy by schedule")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    bands = f"shaded bands: min-max over the {config.seeds} seeds" if config.seeds > 1 else "one seed, so no band"
    caption(
        fig,
        f"Lines: mean over the seeds of each schedule (n = seeds); {bands}. Dashed black: the teacher; "
        f"dotted grey: the threshold {config.threshold:.0%}.",
    )
    return fig


def plot_accuracy(out: Path, path: Path) -> None:
    """Save :func:`accuracy_figure` of run directory ``out`` as PNG at ``path``."""
    save_figure(accuracy_figure(out), path)


def curve_style(i: int, points: int, curves: int = 10) -> dict[str, Any]:
    """Line style, colour and open markers of the ``i``-th of ``curves`` curves of ``points`` points: about 10
    markers per curve, at positions offset per curve, so that identical curves still show each line and marker.
    No two curves of a figure share a colour: matplotlib's 10 default colours, then their light tints (tab20)
    up to 20 curves, and evenly spaced colours of a colormap beyond."""
    every = max(1, points // 10)
    if curves <= 20:
        color: Any = f"C{i}" if i < 10 else plt.get_cmap("tab20")(2 * (i - 10) + 1)
    else:
        color = plt.get_cmap("turbo")(i / (curves - 1))
    return {
        "ls": LINESTYLES[i % len(LINESTYLES)],
        "color": color,
        "marker": MARKERS[i % len(MARKERS)],
        "markersize": 5,
        "markerfacecolor": "none",
        "markevery": (i % every, every),
        "lw": 1.4,
    }


def caption(fig, text: str) -> None:
    """Lay out ``fig`` (its legends outside the axes included) above a caption line ``text``."""
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.text(0.01, 0.015, text, fontsize=7.5, ha="left", va="bottom", wrap=True)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG through a temporary file and a rename, then close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with naming_disk_full(path):
            fig.savefig(tmp, dpi=120)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def write_report(
    out: str | Path, wall_time_s: float, env: dict[str, Any] | None = None, modified: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write results.json, summary.md and accuracy.png into run directory ``out``; return the results.
    ``env``: the training run's environment (a probe rewriting the report passes the recorded one on).
    ``modified``: the config fields in which the run differs from the preset it names (``--set``; from
    :func:`progdistill.recipes.presets.preset_changes`), recorded as ``modified`` beside ``preset``."""
    rundir = RunDir(out)
    results = build_results(rundir.path, wall_time_s, env)
    if modified:
        results["modified"] = list(modified)
    atomic_write_json(rundir.results_file, results)
    atomic_write_text(rundir.summary_file, summary_markdown(results))
    plot_accuracy(rundir.path, rundir.accuracy_figure)
    return results
