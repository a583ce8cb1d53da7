"""The n-gram probes of masked language models (paper §2, "n-gram probes"; paper §4 on text), as pure functions
of a model and data, and :func:`probe_ngram`, which runs them (with the non-terminal probe on grammars) over
every checkpoint of a run directory.

n-gram dependence, for a selected position p of a sentence and a window of w = 2r + 1 tokens centred on p:

- *base*: the sentence with p alone replaced by MASK;
- ``M_robust``: also mask the whole window (p - r .. p + r): how much the prediction at p depends on the
  window (large = the model leans on the local n-gram);
- ``M_close``: keep only the window visible (every other terminal masked): how far the window alone is from
  the full context (small = the window suffices).

Each score is a distance between the model's output distributions at p in the base and the perturbed input
(``distance``): ``"tv"``, the total variation ``0.5 * sum_v |P_base(v) - P_perturbed(v)|`` in [0, 1] (the
default), or ``"l1"``, the full L1 norm ``sum_v |P_base(v) - P_perturbed(v)|`` in [0, 2] -- exactly twice the
TV, and the quantity on the paper's n-gram axis (paper §2; the authors' released probe takes the L1 norm of the
difference of the two probability vectors). We report the median and quartiles over (sentence, position).

How a token is masked (``hiding``): ``"token"`` replaces it by MASK, as in training; ``"attention"`` also sets
its attention-mask entry to 0, so no other position can attend to it -- what the authors' released probe
does. ``hiding="attention", distance="l1"`` is the authors' probe on our windows; their two widest "levels"
are not the 7- and 9-grams their labels say but windows of 4 and 2 tokens (docs/pcfg-cpu-preset.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json, atomic_write_text
from progdistill.distill.phases import detect_phases
from progdistill.experiment import ExperimentConfig
from progdistill.probes.jobs import (
    FORWARD_BATCH,
    PROBE_SEED,
    model_jobs,
    read_records,
    refresh_report,
    run_jobs,
    schedule_of,
)
from progdistill.probes.ngram_figure import plot_ngram
from progdistill.probes.nonterminal import NONTERMINAL_TEST, NONTERMINAL_TRAIN, nonterminal_probe, plot_nonterminals
from progdistill.store.lock import RunLock
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory
from progdistill.tasks.base import Task
from progdistill.tasks.pcfg.task import Vocabulary, pad_sentences

WINDOWS = (3, 5, 7)
HIDING = ("token", "attention")
DISTANCE = ("tv", "l1")


@dataclass(frozen=True)
class NgramPositions:
    """Which (sentence, position) pairs are probed: ``sentence`` and ``position`` (index in the padded ids,
    BOS at 0), both (P,) int64."""

    sentence: np.ndarray
    position: np.ndarray


def probe_positions(maskable: torch.Tensor, per_sentence: int = 8) -> NgramPositions:
    """Up to ``per_sentence`` evenly spaced positions per row among the ``maskable`` ones ((B, L) bool: ordinary
    tokens, never BOS / EOS / [CLS] / [SEP] / PAD). The paper uses every 30th position of cfg3b's ~300-token
    sentences: ~10 per sentence."""
    if not (isinstance(per_sentence, int) and per_sentence >= 1):
        raise ValueError(f"per_sentence={per_sentence!r} is invalid: must be a positive integer")
    sentence, position = [], []
    for i, row in enumerate(maskable):
        candidates = row.nonzero().flatten().numpy()
        n = len(candidates)
        if n == 0:
            continue
        picks = np.unique(np.linspace(0, n - 1, num=min(per_sentence, n) + 2)[1:-1].round().astype(int))
        sentence += [i] * len(picks)
        position += candidates[picks].tolist()
    return NgramPositions(np.array(sentence, dtype=np.int64), np.array(position, dtype=np.int64))


@torch.no_grad()
def _distributions(model, inputs: torch.Tensor, attention: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Softmax outputs (N, V) of ``model`` at position ``at[i]`` of row i of ``inputs`` (N, L)."""
    out = []
    for j in range(0, len(inputs), FORWARD_BATCH):
        logits = model(inputs[j : j + FORWARD_BATCH], attention[j : j + FORWARD_BATCH])
        rows = torch.arange(len(logits))
        out.append(torch.softmax(logits[rows, at[j : j + FORWARD_BATCH]].float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def ngram_dependence(
    model,
    sentences: Sequence[Sequence[int]],
    vocab: Vocabulary,
    windows: Sequence[int] = WINDOWS,
    per_sentence: int = 8,
    device: str | torch.device = "cpu",
    hiding: str = "token",
    distance: str = "tv",
) -> dict[str, dict[str, float]]:
    """M_robust and M_close of ``model`` (a masked LM: ids (B, L), mask (B, L) -> logits (B, L, V)) on
    grammar sentences.

    ``sentences``: token-id sequences (terminals only); ``windows``: odd window sizes >= 3. Returns
    ``{"M_robust/3": {"median", "q25", "q75", "mean"}, "M_close/3": {...}, ...}`` -- total-variation distances
    in [0, 1], or L1 distances in [0, 2] with ``distance="l1"`` -- and ``"cross_entropy"``, the same quantiles of
    the base prediction's cross-entropy (nats) on the true token. ``hiding``: "token" or "attention";
    ``distance``: "tv" or "l1" (module docstring). Raises ``ValueError`` for an even or too small window, an
    unknown ``hiding`` or ``distance``, or no sentences.
    """
    check_windows(windows)
    ids, attention = pad_sentences(list(sentences), vocab)
    maskable = ids < len(vocab.terminals)
    return ngram_dependence_at(
        model,
        ids,
        attention,
        maskable,
        vocab.mask,
        probe_positions(maskable, per_sentence),
        windows,
        device,
        hiding,
        distance,
    )


@torch.no_grad()
def ngram_dependence_at(
    model,
    ids: torch.Tensor,
    attention: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    where: NgramPositions,
    windows: Sequence[int] = WINDOWS,
    device: str | torch.device = "cpu",
    hiding: str = "token",
    distance: str = "tv",
) -> dict[str, dict[str, float]]:
    """M_robust and M_close at given positions of any token sequences (grammar sentences or text).

    ``ids``, ``attention``, ``maskable``: (B, L) -- the sequences, their attention mask and which positions
    hold ordinary tokens (never special ones; only these are masked for M_close); ``mask_id``: the MASK id;
    ``where``: the (sequence, position) pairs to score; ``hiding``: "token" or "attention"; ``distance``: "tv"
    or "l1" (module docstring). Returns the dict of :func:`ngram_dependence`.
    """
    check_windows(windows)
    check_hiding(hiding)
    check_distance(distance)
    sent, pos = torch.from_numpy(where.sentence), torch.from_numpy(where.position)
    base = ids[sent]  # (P, L)
    att = attention[sent]
    variants = hidden_variants(maskable, where, windows)
    was_training = model.training
    model.eval()
    masked = torch.cat(variants)
    inputs = torch.where(masked, mask_id, base.repeat(len(variants), 1)).to(device)
    att = att.repeat(len(variants), 1)
    if hiding == "attention":
        att = att.masked_fill(masked, 0)
    att = att.to(device)
    probs = _distributions(model, inputs, att, pos.repeat(len(variants)).to(device)).view(len(variants), len(base), -1)
    model.train(was_training)
    return distance_scores(probs, windows, base[torch.arange(len(base)), pos], distance)


def hidden_variants(maskable: torch.Tensor, where: NgramPositions, windows: Sequence[int]) -> list[torch.Tensor]:
    """Which positions each probe input hides, (P, L) bool each: the base (p alone), then for every window
    M_robust (p and the window) and M_close (p and every ordinary token outside the window)."""
    sent, pos = torch.from_numpy(where.sentence), torch.from_numpy(where.position)
    rows = torch.arange(len(sent))
    index = torch.arange(maskable.shape[1])[None, :]  # (1, L)
    terminal = maskable[sent].clone()
    terminal[rows, pos] = True  # the masked position itself
    hidden = torch.zeros_like(terminal)
    hidden[rows, pos] = True
    variants = [hidden]
    for w in windows:
        r = w // 2
        inside = (index >= (pos - r)[:, None]) & (index <= (pos + r)[:, None]) & terminal
        variants.append(hidden | inside)  # M_robust: mask the window
        variants.append(hidden | (terminal & ~inside))  # M_close: only the window stays
    return variants


def distance_scores(
    probs: torch.Tensor, windows: Sequence[int], truth: torch.Tensor, distance: str = "tv"
) -> dict[str, dict[str, float]]:
    """The scores of :func:`ngram_dependence` from the predictions at each variant of :func:`hidden_variants`:
    quantiles of the ``distance`` ("tv" or "l1") of each variant's prediction from the base's (``probs``:
    (variants, P, V)), and of the base prediction's cross-entropy (nats) on the true tokens ``truth`` (P,)."""
    check_distance(distance)
    out = {}
    for k, w in enumerate(windows):
        for j, name in enumerate(("M_robust", "M_close")):
            l1 = (probs[0] - probs[1 + 2 * k + j]).abs().sum(-1)
            # Halving is exact in floating point, so the L1 scores are exactly twice the TV ones.
            score = l1 if distance == "l1" else 0.5 * l1
            out[f"{name}/{w}"] = _quantiles(score.cpu().numpy())
    true_p = probs[0, torch.arange(len(truth)), truth.to(probs.device)].double().clamp(min=1e-300)
    out["cross_entropy"] = _quantiles((0.0 - true_p.log()).cpu().numpy())  # 0.0 - : no -0.0
    return out


def check_windows(windows: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``windows`` is a non-empty list of distinct odd integers >= 3."""
    if len(windows) == 0:
        raise ValueError("windows is empty: give at least one window size, e.g. 3 5 7")
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows {list(windows)} repeat a size; give each window size once, e.g. 3 5 7")
    for w in windows:
        if not (isinstance(w, int) and w >= 3 and w % 2 == 1):
            raise ValueError(
                f"window {w!r} is invalid: window sizes are odd integers >= 3 (the (2r+1)-gram "
                "centred on the masked position)"
            )


def check_hiding(hiding: str) -> None:
    """Raise ``ValueError`` unless ``hiding`` is one of :data:`HIDING`."""
    if hiding not in HIDING:
        raise ValueError(
            f"hiding={hiding!r} is invalid: use 'token' (MASK in the input) or 'attention' (MASK and "
            "attention mask 0, as the authors' probe)"
        )


def check_distance(distance: str) -> None:
    """Raise ``ValueError`` unless ``distance`` is one of :data:`DISTANCE`."""
    if distance not in DISTANCE:
        raise ValueError(
            f"distance={distance!r} is invalid: use 'tv' (total variation, in [0, 1]) or 'l1' "
            "(the L1 norm ||p - q||_1 = 2 x TV, the paper's n-gram axis)"
        )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(values.mean())}


# ----------------------------------------------------------------------------------------------------------
# Over a run directory

NGRAM_SEQUENCES = 32  # sequences for M_robust / M_close (x up to 8 positions each)


def probe_ngram(
    run_dir: str | Path,
    students: bool = True,
    windows: tuple[int, ...] = WINDOWS,
    log=print,
    hiding: str = "token",
    distance: str = "tv",
) -> dict[str, Any]:
    """M_robust / M_close for each window size -- and on grammar tasks the non-terminal probe accuracy per tree
    level -- for every teacher checkpoint of ``run_dir`` (and every final student unless ``students=False``).

    Writes ``probes/ngram.jsonl`` (one line per model), ``probes/ngram-summary.json`` (the teacher's detected
    loss phases, the checkpoint where the median M_robust of the smallest window peaks, whether that peak lies
    in the sharp drop or at a checkpoint next to it, and the students' final scores), ``probes/ngram.png`` and,
    for grammars, ``probes/nonterminals.png``. Every model is probed on the same sequences and positions
    (drawn from ``PROBE_SEED``).

    ``hiding="attention"`` masks tokens as the authors' released probe does (MASK *and* attention mask 0; see
    the module docstring) and writes ``probes/ngram-attention*`` instead, next to the default results (the
    non-terminal probe, which masks nothing, is not repeated). ``distance="l1"`` scores the L1 norm, twice
    the total variation -- the paper's axis -- and writes ``probes/ngram-l1*`` (``ngram-attention-l1*`` with
    both: the authors' probe). Raises ``ConfigError`` for a run whose task has no n-gram probe and
    ``ValueError`` for a bad window, ``hiding`` or ``distance``.
    """
    rundir = RunDir(run_dir)
    config = rundir.config()
    if "ngram" not in config.task.probes:
        raise ConfigError(
            f"the n-gram probe needs a masked LM run; {rundir.path} has task {config.task.kind!r}, "
            f"whose probes are: {', '.join(config.task.probes) or 'none'}"
        )
    check_windows(windows)
    check_hiding(hiding)
    check_distance(distance)
    windows = tuple(sorted(windows))  # "7 5 3" is the run's own "3 5 7"
    with RunLock(rundir.path):
        rundir.check_inputs(config)
        summary = _probe_ngram(rundir, config, rundir.task(config), students, windows, log, hiding, distance)
        refresh_report(rundir, log)
        return summary


def run_end_of_run(rundir: RunDir, config: ExperimentConfig, task: Task, log=print) -> dict[str, Any]:
    """The n-gram (and, on grammars, non-terminal) probe of a run that has just trained: the run's own
    windows :data:`WINDOWS`, teacher checkpoints and students (the caller holds the run's lock)."""
    return _probe_ngram(rundir, config, task, True, WINDOWS, log)


def check_fits(config: ExperimentConfig) -> None:
    """Refuse, before any training, task sequences too short for the widest window of :data:`WINDOWS`
    (``ConfigError``)."""
    try:
        ngram_inputs(config.task, WINDOWS)
    except ValueError as exc:
        raise ConfigError(
            f"task: a {config.task.kind} run ends with the n-gram probe (windows "
            f"{' '.join(map(str, WINDOWS))}), but {exc}; use a grammar, corpus or sequence length "
            "with longer sequences (nothing was written)"
        ) from None


def _probe_ngram(
    rundir: RunDir,
    config: ExperimentConfig,
    task: Any,
    students: bool,
    windows: tuple[int, ...],
    log,
    hiding: str = "token",
    distance: str = "tv",
) -> dict[str, Any]:
    trajectory = Trajectory(rundir.teacher)
    if not trajectory.steps:
        raise ConfigError(f"{rundir.teacher} has no checkpoints to probe")
    out = rundir.probes
    gen, ids, attention, maskable, mask_id, where = ngram_inputs(task, windows)
    out.mkdir(exist_ok=True)
    name = ngram_name(ngram_stem("ngram", hiding, distance), windows)
    # The non-terminal probe masks nothing and ignores the windows: it runs with the run's own settings only, so
    # that probes/nonterminals.png is never replaced by another setting's run.
    grammar = "nonterminal" in task.probes and name == "ngram"
    if grammar:
        train_sentences = task.sample_sentences(NONTERMINAL_TRAIN, gen)
        test_sentences = task.sample_sentences(NONTERMINAL_TEST, gen)
        levels = list(range(1, train_sentences.ancestors.shape[0] - 1))  # the root and preterminals are trivial
    jobs = model_jobs(config, trajectory.steps, students)
    settings = {
        "settings": {
            "windows": list(windows),
            "sequences": NGRAM_SEQUENCES,
            "seed": PROBE_SEED,
            "hiding": hiding,
            "distance": distance,
            **({"probe_train": NONTERMINAL_TRAIN, "probe_test": NONTERMINAL_TEST} if grammar else {}),
        }
    }

    def compute(name: str, step: int) -> dict[str, Any]:
        model = rundir.load_model(config, name, step if name == "teacher" else None, task=task)
        extra = trajectory.metrics(step) if name == "teacher" else {}
        record: dict[str, Any] = {
            **{k: extra[k] for k in ("eval_loss", "eval_accuracy") if k in extra},
            "ngram": ngram_dependence_at(
                model, ids, attention, maskable, mask_id, where, windows, hiding=hiding, distance=distance
            ),
        }
        if grammar:
            accuracy = nonterminal_probe(model, train_sentences, test_sentences, task.vocabulary, levels)
            record["nonterminal_accuracy"] = {str(lv): acc for lv, acc in accuracy.items()}
        return record

    partial = out / f".{name}.partial.jsonl"
    done = run_jobs(partial, settings, jobs, compute, "n-gram probe", log)
    records = [done[job] for job in jobs]
    if not students and (out / f"{name}.jsonl").exists():  # keep the students' records (same name: same settings)
        records += [r for r in read_records(out / f"{name}.jsonl") if r["model"] != "teacher"]
    atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = {**_summarize_ngram(records, windows), "hiding": hiding, "distance": distance}
    atomic_write_json(out / f"{name}-summary.json", summary)
    plot_ngram(records, summary, windows, out / f"{name}.png", config.preset, _oracle_scores(out, windows, distance))
    written = [out / f"{name}.jsonl", out / f"{name}-summary.json", out / f"{name}.png"]
    if grammar:
        plot_nonterminals(records, config, out / "nonterminals.png")
        written.append(out / "nonterminals.png")
    partial.unlink()
    log(f"wrote {', '.join(map(str, written))}")
    return summary


def ngram_inputs(task: Any, windows: tuple[int, ...]):
    """The probe's sequences and positions, the same for every model and for the oracle: (generator, ids,
    attention, maskable, mask id, positions) from ``task.ngram_inputs``; the generator continues to the
    non-terminal probe's sentences. Raises ``ValueError`` for a window longer than every sequence."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    ids, attention, maskable, mask_id = task.ngram_inputs(NGRAM_SEQUENCES, gen)
    longest = int(attention.sum(dim=1).max())
    for w in windows:
        if w > longest:
            raise ValueError(
                f"window {w} is longer than every probed sequence (at most {longest} tokens); allowed: "
                f"odd sizes from 3 to {longest - 1 + longest % 2}"
            )
    return gen, ids, attention, maskable, mask_id, probe_positions(maskable)


def ngram_stem(stem: str, hiding: str = "token", distance: str = "tv") -> str:
    """The file stem of a probe setting: the defaults are ``stem`` itself, other settings get their own name
    (``ngram-attention``, ``ngram-l1``, ``ngram-attention-l1``) so that they never replace the defaults."""
    return stem + ("" if hiding == "token" else f"-{hiding}") + ("" if distance == "tv" else f"-{distance}")


def ngram_name(stem: str, windows: tuple[int, ...]) -> str:
    """The run's own results (windows 3 5 7) are probes/<stem>.*; other windows get their own name beside them
    instead of replacing them."""
    return stem + ("" if tuple(windows) == WINDOWS else "-windows-" + "-".join(map(str, windows)))


def _oracle_scores(out: Path, windows: tuple[int, ...], distance: str = "tv") -> dict[str, Any] | None:
    """The Bayes-optimal predictor's scores for these windows and distance (``probe_oracle``), when they were
    computed."""
    path = out / f"{ngram_name(ngram_stem('ngram-oracle', distance=distance), windows)}-summary.json"
    return json.loads(path.read_text(encoding="utf-8"))["scores"] if path.exists() else None


def _summarize_ngram(records: list[dict], windows: tuple[int, ...]) -> dict[str, Any]:
    teacher = [r for r in records if r["model"] == "teacher"]
    steps = [r["step"] for r in teacher]
    key = f"M_robust/{min(windows)}"
    robust = [r["ngram"][key]["median"] for r in teacher]
    peak = max(range(len(teacher)), key=lambda i: robust[i])
    summary: dict[str, Any] = {
        "metric": key,
        "peak_step": steps[peak],
        "peak_median": robust[peak],
        "final_median": robust[-1],
    }
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
        label = schedule_of(r["model"])
        entry = by_schedule.setdefault(label, {})
        entry.setdefault(f"{key} median", []).append(r["ngram"][key]["median"])
        for lv, acc in r.get("nonterminal_accuracy", {}).items():
            entry.setdefault(f"nonterminal level {lv}", []).append(acc)
    summary["students"] = {
        label: {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for k, v in entry.items()
        }
        for label, entry in by_schedule.items()
    }
    if "nonterminal_accuracy" in teacher[-1]:
        summary["teacher_final_nonterminal_accuracy"] = teacher[-1]["nonterminal_accuracy"]
    return summary
