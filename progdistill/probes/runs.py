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

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError
from ..experiment import finished_results, load_config, load_model, student_name
from ..lock import RunLock
from ..files import read_metrics
from .monomials import _check_degrees, mlp_class1_probability, monomial_correlations
from ..phases import detect_transition
from ..report import save_figure
from ..trajectory import Trajectory, atomic_write_json, atomic_write_text

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
        _check_run_inputs(run_dir, config)
        summary = _probe_monomials(run_dir, config, students, num_samples, degrees, log)
        _refresh_report(run_dir, log)
        return summary


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
    settings = {"settings": {"num_samples": num_samples, "degrees": degrees, "seed": PROBE_SEED}}

    def compute(name: str, step: int) -> dict[str, Any]:
        model = load_model(config, run_dir, name, step if name == "teacher" else None)
        extra = {"eval_accuracy": trajectory.metrics(step)["eval_accuracy"]} if name == "teacher" else {}
        return {**extra, **_record(model, config.task, num_samples, degrees)}

    done = run_jobs(out / ".monomials.partial.jsonl", settings, jobs, compute, "monomial probe", log)
    records = [done[job] for job in jobs]
    atomic_write_text(out / "monomials.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = _summarize([r for r in records if r["model"] == "teacher"])
    atomic_write_json(out / "monomials-summary.json", summary)
    _plot(records, summary, out / "monomials.png", config.preset)
    (out / ".monomials.partial.jsonl").unlink()
    log(f"wrote {out / 'monomials.jsonl'}, {out / 'monomials-summary.json'}, {out / 'monomials.png'}")
    return summary


def _schedule_of(name: str) -> str:
    """The schedule label of a student name such as "progressive-x2-seed1" (see ``student_name``)."""
    return name.rsplit("-seed", 1)[0]


def run_jobs(partial: Path, settings: dict, jobs: list[tuple[str, int]], compute, desc: str,
             log=print) -> dict[tuple[str, int], dict]:
    """Compute ``compute(name, step)`` for every (model name, step) job, appending each record to the
    ``partial`` JSONL file as it is done, so a killed probe resumes where it stopped (when its first line,
    ``settings``, matches). Returns {job: record}; the caller deletes ``partial`` once its outputs are written."""
    done = {}
    if partial.exists():
        saved = read_metrics(partial)
        if saved and saved[0] == settings:
            done = {(r["model"], r["step"]): r for r in saved[1:]}
            log(f"resuming the {desc}: {len(done)} of {len(jobs)} models already probed")
    with open(partial, "w", encoding="utf-8") as fh:
        for line in [settings, *done.values()]:
            fh.write(json.dumps(line) + "\n")
        for name, step in tqdm(jobs, desc=desc, unit="model", leave=False, disable=None):  # none without a terminal
            if (name, step) in done:
                continue
            done[(name, step)] = {"model": name, "step": step, **compute(name, step)}
            fh.write(json.dumps(done[(name, step)]) + "\n")
            fh.flush()
    return done


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
    except ValueError as exc:  # NoTransitionError, or too few checkpoints to look for one
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


# ----------------------------------------------------------------------------------------------------------
# Masked language models (PCFG and text): n-gram dependence, and non-terminal probes on grammars (PAPER.md 2, 4)

NGRAM_SEQUENCES = 32        # sequences for M_robust / M_close (x up to 8 positions each)
NONTERMINAL_TRAIN = 256     # grammar sentences to fit the non-terminal probe on
NONTERMINAL_TEST = 128      # sentences to score it on
NGRAM_TASKS = ("pcfg-mlm", "text-mlm")


def probe_ngram(run_dir: str | Path, students: bool = True, windows: tuple[int, ...] = (3, 5, 7),
                log=print, hiding: str = "token") -> dict[str, Any]:
    """M_robust / M_close for each window size -- and on grammar tasks the non-terminal probe accuracy per tree
    level -- for every teacher checkpoint of ``run_dir`` (and every final student unless ``students=False``).

    Writes ``probes/ngram.jsonl`` (one line per model), ``probes/ngram-summary.json`` (the teacher's detected
    loss phases, the checkpoint where the median M_robust of the smallest window peaks, whether that peak lies
    in the sharp drop or at a checkpoint next to it, and the students' final scores), ``probes/ngram.png`` and,
    for grammars, ``probes/nonterminals.png``. Every model is probed on the same sequences and positions
    (drawn from ``PROBE_SEED``).

    ``hiding="attention"`` masks tokens as the authors' released probe does (MASK *and* attention mask 0; see
    :mod:`progdistill.probes.ngram`) and writes ``probes/ngram-attention*`` instead, next to the default
    results (the non-terminal probe, which masks nothing, is not repeated). Raises ``ConfigError`` for a run
    that is not masked language modelling and ``ValueError`` for a bad window or ``hiding``.
    """
    from .ngram import check_hiding, check_windows

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.json")
    if config.task.kind not in NGRAM_TASKS:
        raise ConfigError(f"the n-gram probe needs a masked LM run ({', '.join(NGRAM_TASKS)}); {run_dir} has "
                          f"task {config.task.kind!r}")
    check_windows(windows)
    check_hiding(hiding)
    windows = tuple(sorted(windows))  # "7 5 3" is the run's own "3 5 7"
    with RunLock(run_dir):
        _check_run_inputs(run_dir, config)
        summary = _probe_ngram(run_dir, config, students, windows, log, hiding)
        _refresh_report(run_dir, log)
        return summary


def _check_run_inputs(run_dir: Path, config, teacher: bool = True) -> None:
    """Refuse, before any work, a run directory whose config.json or task data (grammar, corpus) changed after
    the run (the probes would describe another config than the one trained), a damaged or unreadable
    results.json, a probe summary the report cannot read, and -- when the probe reads the teacher
    (``teacher``) -- a teacher trajectory that is unfinished (still training, or interrupted: the probe would
    describe part of it) or has lost its metrics."""
    from ..experiment import check_task_data, config_hash
    from ..report import read_probe_summaries

    results = run_dir / "results.json"
    if results.exists() and finished_results(run_dir) is None:
        raise ConfigError(f"{results} is unreadable (empty or not JSON); rerun `progdistill run "
                          f"{run_dir / 'config.json'} --out {run_dir}` to rewrite it (nothing was written)")
    if teacher:
        trajectory = Trajectory(run_dir / "teacher")  # TrajectoryError: no teacher directory or manifest
        if not trajectory.complete:
            raise ConfigError(f"the teacher trajectory {run_dir / 'teacher'} is unfinished (still training, or "
                              f"interrupted at step {max(trajectory.steps, default=0)} of "
                              f"{config.teacher.steps}); finish it with `progdistill run "
                              f"{run_dir / 'config.json'} --out {run_dir}` first (nothing was written)")
    if (teacher or results.exists()) and not (run_dir / "teacher" / "metrics.jsonl").exists():
        raise ConfigError(f"{run_dir} is damaged: its teacher has no metrics.jsonl; rerun the experiment "
                          "(nothing was written)")
    digest = run_dir / "config.sha256"
    if digest.exists() and digest.read_text(encoding="utf-8").strip() != config_hash(config):
        raise ConfigError(f"{run_dir / 'config.json'} was edited after the run (it no longer matches "
                          f"{digest.name}); restore it or rerun the experiment (nothing was written)")
    data = run_dir / "data.sha256"
    if data.exists() and data.read_text(encoding="utf-8").strip() != check_task_data(config):
        raise ConfigError(f"the task data (grammar or corpus) of {run_dir} changed after the run (it no longer "
                          f"matches {data.name}); restore it or rerun the experiment (nothing was written)")
    read_probe_summaries(run_dir)


def _refresh_report(run_dir: Path, log=print) -> None:
    """Rewrite a finished run's results.json / summary.md so their ``probes`` section matches probes/ (the
    run's recorded wall time is kept); for a run that has not finished, say that ``run`` will."""
    from ..report import write_report

    previous = finished_results(run_dir)
    if previous is not None and "wall_time_s" in previous:
        write_report(run_dir, wall_time_s=previous["wall_time_s"])
    else:
        log(f"{run_dir / 'results.json'} is not written yet (the run has not finished): `progdistill run` "
            "adds this probe to it when the run ends")


def _probe_ngram(run_dir: Path, config, students: bool, windows: tuple[int, ...], log,
                 hiding: str = "token") -> dict[str, Any]:
    from .ngram import ngram_dependence_at, nonterminal_probe

    task = config.task
    trajectory = Trajectory(run_dir / "teacher")
    if not trajectory.steps:
        raise ConfigError(f"{run_dir / 'teacher'} has no checkpoints to probe")
    out = run_dir / "probes"
    gen, ids, attention, maskable, mask_id, where = _ngram_inputs(task, windows)
    out.mkdir(exist_ok=True)
    name = _ngram_name("ngram" + ("" if hiding == "token" else f"-{hiding}"), windows)
    # The non-terminal probe masks nothing and ignores the windows: it runs with the run's own settings only, so
    # that probes/nonterminals.png is never replaced by another setting's run.
    grammar = hasattr(task, "load_grammar") and name == "ngram"
    if grammar:
        train_sentences = task.sample_sentences(NONTERMINAL_TRAIN, gen)
        test_sentences = task.sample_sentences(NONTERMINAL_TEST, gen)
        levels = list(range(1, train_sentences.ancestors.shape[0] - 1))  # the root and preterminals are trivial
    jobs = [("teacher", step) for step in trajectory.steps]
    if students:
        jobs += [(student_name(sched, seed), config.student.steps)
                 for seed in range(config.seeds) for sched in config.schedules]
    settings = {"settings": {"windows": list(windows), "sequences": NGRAM_SEQUENCES, "seed": PROBE_SEED,
                             "hiding": hiding,
                             **({"probe_train": NONTERMINAL_TRAIN, "probe_test": NONTERMINAL_TEST} if grammar
                                else {})}}

    def compute(name: str, step: int) -> dict[str, Any]:
        model = load_model(config, run_dir, name, step if name == "teacher" else None)
        extra = trajectory.metrics(step) if name == "teacher" else {}
        record = {**{k: extra[k] for k in ("eval_loss", "eval_accuracy") if k in extra},
                  "ngram": ngram_dependence_at(model, ids, attention, maskable, mask_id, where, windows,
                                               hiding=hiding)}
        if grammar:
            accuracy = nonterminal_probe(model, train_sentences, test_sentences, task.vocabulary, levels)
            record["nonterminal_accuracy"] = {str(lv): acc for lv, acc in accuracy.items()}
        return record

    partial = out / f".{name}.partial.jsonl"
    done = run_jobs(partial, settings, jobs, compute, "n-gram probe", log)
    records = [done[job] for job in jobs]
    if not students and (out / f"{name}.jsonl").exists():  # keep the students' records (same name: same settings)
        records += [r for r in _read_records(out / f"{name}.jsonl") if r["model"] != "teacher"]
    atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = {**_summarize_ngram(records, windows, config), "hiding": hiding}
    atomic_write_json(out / f"{name}-summary.json", summary)
    _plot_ngram(records, summary, windows, out / f"{name}.png", config.preset, _oracle_scores(out, windows))
    written = [out / f"{name}.jsonl", out / f"{name}-summary.json", out / f"{name}.png"]
    if grammar:
        _plot_nonterminals(records, config, out / "nonterminals.png")
        written.append(out / "nonterminals.png")
    partial.unlink()
    log(f"wrote {', '.join(map(str, written))}")
    return summary


def _ngram_inputs(task, windows: tuple[int, ...]):
    """The probe's sequences and positions, the same for every model and for the oracle: (generator, ids,
    attention, maskable, mask id, positions); the generator continues to the non-terminal probe's sentences.
    Raises ``ValueError`` for a window longer than every sequence."""
    from .ngram import probe_positions

    gen = torch.Generator().manual_seed(PROBE_SEED)
    ids, attention, maskable, mask_id = task.ngram_inputs(NGRAM_SEQUENCES, gen)
    longest = int(attention.sum(dim=1).max())
    for w in windows:
        if w > longest:
            raise ValueError(f"window {w} is longer than every probed sequence (at most {longest} tokens); allowed: "
                             f"odd sizes from 3 to {longest - 1 + longest % 2}")
    return gen, ids, attention, maskable, mask_id, probe_positions(maskable)


def _ngram_name(stem: str, windows: tuple[int, ...]) -> str:
    """The run's own results (windows 3 5 7) are probes/<stem>.*; other windows get their own name beside them
    instead of replacing them."""
    from .ngram import WINDOWS

    return stem + ("" if tuple(windows) == WINDOWS else "-windows-" + "-".join(map(str, windows)))


def _read_records(path: Path) -> list[dict[str, Any]]:
    """A probe's JSONL file: one record per model."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _oracle_scores(out: Path, windows: tuple[int, ...]) -> dict[str, Any] | None:
    """The Bayes-optimal predictor's scores for these windows (``probe_oracle``), when they were computed."""
    path = out / f"{_ngram_name('ngram-oracle', windows)}-summary.json"
    return json.loads(path.read_text(encoding="utf-8"))["scores"] if path.exists() else None


def probe_oracle(run_dir: str | Path, windows: tuple[int, ...] = (3, 5, 7), log=print) -> dict[str, Any]:
    """M_robust / M_close of the Bayes-optimal masked LM of a PCFG run's grammar, on the sentences and
    positions ``probe_ngram`` uses: the exact posterior of the token at p given the visible tokens, by the
    inside algorithm (:func:`progdistill.probes.ngram.oracle_ngram_dependence_at`). This is where a teacher's
    n-gram probes end as its loss reaches the grammar's entropy (PAPER.md section 2: the fall of M_robust after
    the sharp drop is the model moving towards it).

    Writes ``probes/ngram-oracle-summary.json`` (scores per window, the cross-entropy of the optimal
    prediction with one token hidden, its masked-token loss at the task's mask rate -- the floor of the
    teacher's validation loss -- and the settings), which the run's results.json / summary.md and the n-gram
    figure pick up (the figure is redrawn when the n-gram probe has run). Takes ~15 s for ``pcfg-mlm``
    (~42-token sentences) and ~10 minutes for cfg3b (~300 tokens). Raises ``ConfigError`` for a run that is
    not ``pcfg-mlm`` or was changed after it ran, and ``ValueError`` for a bad window.
    """
    from .ngram import check_windows, oracle_masked_lm_loss, oracle_ngram_dependence_at

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.json")
    if config.task.kind != "pcfg-mlm":
        raise ConfigError(f"the oracle n-gram probe needs a PCFG masked LM run (pcfg-mlm), whose grammar defines "
                          f"the optimal predictor; {run_dir} has task {config.task.kind!r}")
    check_windows(windows)
    windows = tuple(sorted(windows))  # "7 5 3" is the run's own "3 5 7"
    with RunLock(run_dir):
        _check_run_inputs(run_dir, config, teacher=False)
        out = run_dir / "probes"
        _, ids, _, maskable, _, where = _ngram_inputs(config.task, windows)
        out.mkdir(exist_ok=True)
        grammar = config.task.load_grammar()
        scores = oracle_ngram_dependence_at(grammar, ids, maskable, where, windows, progress=True)
        log("scoring the optimal predictor's masked-token loss ...")
        sentences = [row[m].numpy() for row, m in zip(ids, maskable)]
        loss = oracle_masked_lm_loss(grammar, sentences, config.task.mask_rate, np.random.default_rng(PROBE_SEED))
        key = f"M_robust/{min(windows)}"
        summary = {"metric": key, "median": scores[key]["median"], "scores": scores, "masked_lm_loss": loss,
                   "settings": {"windows": list(windows), "sequences": NGRAM_SEQUENCES, "seed": PROBE_SEED,
                                "positions": len(where.sentence)}}
        name = _ngram_name("ngram-oracle", windows)
        atomic_write_json(out / f"{name}-summary.json", summary)
        written = [out / f"{name}-summary.json"]
        for stem in ("ngram", "ngram-attention"):  # redraw the model probes' figures with the oracle in them
            model_name = _ngram_name(stem, windows)
            if (out / f"{model_name}.jsonl").exists() and (out / f"{model_name}-summary.json").exists():
                records = _read_records(out / f"{model_name}.jsonl")
                model_summary = json.loads((out / f"{model_name}-summary.json").read_text(encoding="utf-8"))
                _plot_ngram(records, model_summary, windows, out / f"{model_name}.png", config.preset, scores)
                written.append(out / f"{model_name}.png")
        _refresh_report(run_dir, log)
        log(f"wrote {', '.join(map(str, written))}")
        return summary


def _summarize_ngram(records: list[dict], windows: tuple[int, ...], config) -> dict[str, Any]:
    from ..phases import detect_phases

    teacher = [r for r in records if r["model"] == "teacher"]
    steps = [r["step"] for r in teacher]
    key = f"M_robust/{min(windows)}"
    robust = [r["ngram"][key]["median"] for r in teacher]
    peak = max(range(len(teacher)), key=lambda i: robust[i])
    summary: dict[str, Any] = {"metric": key, "peak_step": steps[peak], "peak_median": robust[peak],
                               "final_median": robust[-1]}
    try:
        phases = detect_phases(steps, [r["eval_loss"] for r in teacher])
        summary["phases"] = phases.to_dict()
        start, end = phases.sharp_drop
        i0, i1 = steps.index(start), steps.index(end)
        summary["peak_in_sharp_drop"] = start <= steps[peak] <= end
        summary["peak_in_or_next_to_sharp_drop"] = max(0, i0 - 1) <= peak <= min(len(steps) - 1, i1 + 1)
    except ValueError as exc:  # NoTransitionError, or too few checkpoints to look for one
        summary["phases"] = None
        summary["no_transition"] = str(exc)
    by_schedule: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r["model"] == "teacher":
            continue
        label = _schedule_of(r["model"])
        entry = by_schedule.setdefault(label, {})
        entry.setdefault(f"{key} median", []).append(r["ngram"][key]["median"])
        for lv, acc in r.get("nonterminal_accuracy", {}).items():
            entry.setdefault(f"nonterminal level {lv}", []).append(acc)
    summary["students"] = {label: {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                                       else 0.0} for k, v in entry.items()}
                           for label, entry in by_schedule.items()}
    if "nonterminal_accuracy" in teacher[-1]:
        summary["teacher_final_nonterminal_accuracy"] = teacher[-1]["nonterminal_accuracy"]
    return summary


def _plot_ngram(records: list[dict], summary: dict, windows, path: Path, preset: str,
                oracle: dict[str, Any] | None = None) -> None:
    """Left: the teacher's validation loss with its detected phases shaded. Right: median M_robust (solid) and
    M_close (dashed) over the teacher's checkpoints, one colour per window size, log scale; with ``oracle``
    (``probe_oracle``'s scores) the Bayes-optimal predictor's medians as dotted levels and in a note (a median
    of 0 cannot be drawn on the log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = [r for r in records if r["model"] == "teacher"]
    steps = [r["step"] for r in teacher]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(steps, [r["eval_loss"] for r in teacher], "k.-", lw=1.2, label="teacher validation loss")
    phases = summary.get("phases")
    for axis in (left, right):
        if phases:
            for (a, b), colour, name in ((phases["plateau"], "tab:gray", "plateau"),
                                         (phases["sharp_drop"], "tab:orange", "sharp drop"),
                                         (phases["slow_decay"], "tab:green", "slow decay")):
                axis.axvspan(a, b, color=colour, alpha=0.15, label=name if axis is left else None)
        axis.set_xlabel("teacher training steps")
    left.set_ylabel("masked-token cross-entropy (nats)")
    left.set_title(f"{preset}: teacher loss and detected phases")
    left.legend(fontsize=8)
    for w in windows:
        line, = right.plot(steps, [max(r["ngram"][f"M_robust/{w}"]["median"], 1e-6) for r in teacher], lw=1.5,
                           label=f"M_robust, {w}-gram")
        right.plot(steps, [max(r["ngram"][f"M_close/{w}"]["median"], 1e-6) for r in teacher], ls="--",
                   color=line.get_color(), label=f"M_close, {w}-gram")
        for score in ("M_robust", "M_close") if oracle else ():
            if oracle[f"{score}/{w}"]["median"] > 1e-6:
                right.axhline(oracle[f"{score}/{w}"]["median"], ls=":", lw=1, color=line.get_color())
    if oracle:
        note = "\n".join(f"{score}: " + " / ".join(f"{oracle[f'{score}/{w}']['median']:.3g}" for w in windows)
                         for score in ("M_robust", "M_close"))
        right.text(0.28, 0.03, f"Bayes-optimal predictor (dotted, same colour\nas its window), median for "
                   f"{' / '.join(map(str, windows))}-grams:\n"
                   + note, transform=right.transAxes, fontsize=7, va="bottom",
                   bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    right.set_yscale("log")
    right.set_ylabel("median total-variation distance")
    right.set_title("n-gram dependence of the teacher's predictions" if summary.get("hiding") != "attention"
                    else "n-gram dependence (masked tokens hidden from attention)")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_nonterminals(records: list[dict], config, path: Path) -> None:
    """Left: non-terminal probe accuracy per tree level over the teacher's checkpoints. Right: final students'
    accuracy per level, mean over seeds with the seed std as error bars, one group of bars per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = [r for r in records if r["model"] == "teacher"]
    levels = list(teacher[0]["nonterminal_accuracy"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for lv in levels:
        left.plot([r["step"] for r in teacher], [r["nonterminal_accuracy"][lv] for r in teacher], lw=1.4,
                  label=f"level {lv}")
    left.set_xlabel("teacher training steps")
    left.set_ylabel("linear probe accuracy")
    left.set_title(f"{config.preset}: non-terminal probe of the teacher")
    left.legend(fontsize=8)
    labels = [s.label for s in config.schedules]
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        runs = [r for r in records if _schedule_of(r["model"]) == label and r["model"] != "teacher"]
        if not runs:
            continue
        values = np.array([[r["nonterminal_accuracy"][lv] for lv in levels] for r in runs])
        right.bar(np.arange(len(levels)) + j * width, values.mean(0), width,
                  yerr=values.std(0, ddof=1) if len(runs) > 1 else None, label=label)
    right.set_xticks(np.arange(len(levels)) + 0.4 - width / 2, [f"level {lv}" for lv in levels])
    right.set_ylabel("linear probe accuracy (final students)")
    right.set_ylim(0, 1)
    if right.get_legend_handles_labels()[0]:  # no bars when only the teacher was probed
        right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Autoregressive PCFG: how many of a model's sampled sentences the grammar accepts (PAPER.md section 3)

GENERATION_SAMPLES = 200


def generation_acceptance(model, task, count: int = GENERATION_SAMPLES, seed: int = PROBE_SEED) -> dict[str, float]:
    """Sample ``count`` sentences from ``model`` (a :class:`~progdistill.models.language.CausalLM`) starting at BOS, at
    temperature 1 over the terminals and EOS, up to twice the longest held-out sentence (at most
    ``task.max_length``) tokens; a sentence is *accepted* when it ends with EOS within that length and the
    grammar's inside algorithm gives it a positive probability. Returns
    ``{"acceptance": fraction accepted, "finished": fraction that produced EOS, "mean_length": tokens}``."""
    from ..tasks.pcfg_parser import inside_log_probability

    vocab, grammar = task.vocabulary, task.load_grammar()
    allowed = torch.tensor(list(range(len(vocab.terminals))) + [vocab.eos])
    device = next(model.parameters()).device
    prompt = torch.full((count, 1), vocab.bos, dtype=torch.long, device=device)
    limit = min(task.max_length, 2 * int(task.eval_sentences().lengths.max()))
    outputs = model.sample(prompt, allowed, vocab.eos, limit + 1, torch.Generator().manual_seed(seed))
    finished = [o[:-1] for o in outputs if o and o[-1] == vocab.eos]
    accepted = sum(1 for tokens in finished if tokens and inside_log_probability(grammar, tokens) > float("-inf"))
    return {"acceptance": accepted / count, "finished": len(finished) / count,
            "mean_length": float(np.mean([len(o) for o in outputs]))}


def probe_generation(run_dir: Path, config, log=print) -> dict[str, Any]:
    """:func:`generation_acceptance` of the final teacher and every final student of a pcfg-lm run; writes
    ``probes/generation-summary.json`` ({"teacher": ..., "students": {schedule: {mean, std}}, "runs": ...})."""
    run_dir = Path(run_dir)
    out = run_dir / "probes"
    out.mkdir(exist_ok=True)
    runs = {"teacher": generation_acceptance(load_model(config, run_dir, "teacher"), config.task)}
    for seed in range(config.seeds):
        for sched in config.schedules:
            name = student_name(sched, seed)
            runs[name] = generation_acceptance(load_model(config, run_dir, name), config.task)
    by_schedule: dict[str, list[float]] = {}
    for name, r in runs.items():
        if name != "teacher":
            by_schedule.setdefault(_schedule_of(name), []).append(r["acceptance"])
    summary = {"samples": GENERATION_SAMPLES, "teacher": runs["teacher"],
               "students": {label: {"acceptance mean": float(np.mean(v)),
                                    "acceptance std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                            for label, v in by_schedule.items()},
               "runs": runs}
    atomic_write_json(out / "generation-summary.json", summary)
    log(f"wrote {out / 'generation-summary.json'}")
    return summary
