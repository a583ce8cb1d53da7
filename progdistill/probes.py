"""Probes over a run directory: read its checkpoints, write JSONL and a figure (files in, files out).

``probe_monomials`` (PAPER.md section 1, "Mechanism") computes the monomial correlations of every teacher
checkpoint (and, when asked, every final student), writes ``probes/monomials.jsonl`` (one line per model),
``probes/monomials-summary.json`` (the detected transition and the degree-1 spike) and
``probes/monomials.png`` (degree-1 in-support lines, the off-support mean with a +/- std band, the teacher's
accuracy on a second axis, the detected transition shaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .experiment import load_config, load_model, student_name
from .lock import RunLock
from .metrics import read_metrics
from .monomials import _check_degrees, mlp_class1_probability, monomial_correlations
from .phases import NoTransitionError, detect_transition
from .report import save_figure
from .trajectory import Trajectory, atomic_write_json, atomic_write_text

PROBE_SEED = 2024  # every checkpoint is probed on the same subsets and inputs


def _record(model, task, num_samples: int, degrees) -> dict[str, Any]:
    result = monomial_correlations(mlp_class1_probability(model, 0), task, num_samples=num_samples,
                                   degrees=degrees, generator=torch.Generator().manual_seed(PROBE_SEED))
    return result.to_dict() | {"summary": result.summary()}


def probe_monomials(run_dir: str | Path, students: bool = False, num_samples: int = 100_000,
                    degrees: list[int] | None = None, log=print) -> dict[str, Any]:
    """Monomial correlations over every teacher checkpoint of ``run_dir`` (and its final students).

    Returns the summary: the transition detected on the teacher's eval accuracy, the checkpoint where the mean
    degree-1 in-support correlation peaks, its value, the off-support mean there, their ratio and whether the
    peak lies inside the transition window. ``degrees`` defaults to 1..k-1 and must include 1. Raises
    ``ConfigError`` for a run that is not sparse parity, ``ValueError`` for a degree outside 1..k and
    :class:`~progdistill.trajectory.TrajectoryError` for a run without teacher checkpoints.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.json")
    if config.task.kind != "parity":
        raise ConfigError(f"the monomial probe needs a sparse parity run; {run_dir} has task {config.task.kind!r}")
    if config.task.k < 2:
        raise ConfigError(f"task.k={config.task.k}: the monomial probe needs k >= 2 (degrees 1..k-1)")
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"--samples {num_samples!r} is invalid: must be a positive integer")
    if degrees is not None:
        _check_degrees(degrees, config.task.k)  # each within 1..k
        if 1 not in degrees:
            raise ValueError(f"degrees={degrees!r} is invalid: must include 1 (the summary and figure are of "
                             "degree 1)")
    with RunLock(run_dir):
        return _probe_monomials(run_dir, config, students, num_samples, degrees, log)


def _probe_monomials(run_dir: Path, config, students: bool, num_samples: int, degrees, log) -> dict[str, Any]:
    trajectory = Trajectory(run_dir / "teacher")
    if not trajectory.steps:
        raise ConfigError(f"{run_dir / 'teacher'} has no checkpoints to probe")
    out = run_dir / "probes"
    out.mkdir(exist_ok=True)
    jobs = [("teacher", step) for step in trajectory.steps]
    if students:
        jobs += [(student_name(sched, seed), config.student.steps)
                 for seed in range(config.seeds) for sched in config.schedules]
    # Records go to a partial file as they are computed, so a killed probe resumes where it stopped.
    settings = {"settings": {"num_samples": num_samples, "degrees": degrees, "seed": PROBE_SEED}}
    partial = out / ".monomials.partial.jsonl"
    done = {}
    if partial.exists():
        saved = read_metrics(partial)
        if saved and saved[0] == settings:
            done = {(r["model"], r["step"]): r for r in saved[1:]}
            log(f"resuming the monomial probe: {len(done)} of {len(jobs)} models already probed")
    with open(partial, "w", encoding="utf-8") as fh:
        for line in [settings, *done.values()]:
            fh.write(json.dumps(line) + "\n")
        for name, step in tqdm(jobs, desc="monomial probe", unit="model", leave=False):
            if (name, step) in done:
                continue
            model = load_model(config, run_dir, name, step if name == "teacher" else None)
            extra = {"eval_accuracy": trajectory.metrics(step)["eval_accuracy"]} if name == "teacher" else {}
            done[(name, step)] = {"model": name, "step": step, **extra,
                                  **_record(model, config.task, num_samples, degrees)}
            fh.write(json.dumps(done[(name, step)]) + "\n")
            fh.flush()
    records = [done[job] for job in jobs]
    atomic_write_text(out / "monomials.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = _summarize([r for r in records if r["model"] == "teacher"])
    atomic_write_json(out / "monomials-summary.json", summary)
    _plot(records, summary, out / "monomials.png", config.preset)
    partial.unlink()
    log(f"wrote {out / 'monomials.jsonl'}, {out / 'monomials-summary.json'}, {out / 'monomials.png'}")
    return summary


def _summarize(teacher: list[dict]) -> dict[str, Any]:
    steps = [r["step"] for r in teacher]
    degree1 = [r["summary"]["degree1/in_support_mean"] for r in teacher]
    peak = max(range(len(teacher)), key=lambda i: degree1[i])
    off = teacher[peak]["summary"]["degree1/off_support_mean"]
    summary: dict[str, Any] = {"peak_step": steps[peak], "peak_degree1_in_support_mean": degree1[peak],
                               "degree1_off_support_mean_at_peak": off,
                               "ratio": degree1[peak] / off if off else None}
    try:
        window = detect_transition(steps, [r["eval_accuracy"] for r in teacher], "rise")
        summary["transition"] = window.to_dict()
        summary["peak_inside_transition"] = window.start <= steps[peak] <= window.end
    except NoTransitionError as exc:
        summary["transition"] = None
        summary["no_transition"] = str(exc)
    return summary


def _plot(records: list[dict], summary: dict, path: Path, preset: str) -> None:
    """Left: degree-1 in-support correlations, one line per support coordinate, the off-support mean with a
    +/- std band and the teacher's accuracy (second axis). Right: in-support mean (solid) and off-support
    mean (dotted) of every probed degree. The detected transition is shaded in both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    teacher = [r for r in records if r["model"] == "teacher"]
    steps = np.array([r["step"] for r in teacher])
    degrees = [d["degree"] for d in teacher[0]["degrees"]]
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for j, entry in enumerate(next(d for d in teacher[0]["degrees"] if d["degree"] == 1)["in_support"]):
        values = [next(d for d in r["degrees"] if d["degree"] == 1)["in_support"][j]["correlation"]
                  for r in teacher]
        ax.plot(steps, values, lw=1.2, label=f"in-support x_{entry['subset'][0]}")
    off_mean = np.array([r["summary"]["degree1/off_support_mean"] for r in teacher])
    off_std = np.array([r["summary"]["degree1/off_support_std"] for r in teacher])
    ax.plot(steps, off_mean, "k-", lw=1.5, label="off-support mean (+/- std)")
    ax.fill_between(steps, off_mean - off_std, off_mean + off_std, color="k", alpha=0.15)
    for d in degrees:
        line, = right.plot(steps, [r["summary"][f"degree{d}/in_support_mean"] for r in teacher], lw=1.4,
                           label=f"degree {d} in-support")
        right.plot(steps, [r["summary"][f"degree{d}/off_support_mean"] for r in teacher], ls=":",
                   color=line.get_color(), label=f"degree {d} off-support")
    for axis in (ax, right):
        if summary.get("transition"):
            axis.axvspan(summary["transition"]["start"], summary["transition"]["end"], color="orange",
                         alpha=0.15, label="detected transition" if axis is ax else None)
        axis.set_xlabel("teacher training steps")
        axis.set_ylabel("monomial correlation")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["eval_accuracy"] for r in teacher], "b--", lw=1, label="teacher accuracy")
    ax2.set_ylabel("teacher eval accuracy", color="b")
    ax2.set_ylim(0.4, 1.02)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    right.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title(f"{preset}: degree-1 correlations of the teacher")
    right.set_title("mean correlation by degree")
    fig.tight_layout()
    save_figure(fig, path)
