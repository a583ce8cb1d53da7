"""Which attention heads of a causal language model copy from context: previous-token and induction scores
(Olsson et al. 2022), for every teacher checkpoint and final student of an ``induction`` run.

On held-out *repeated* sequences ``x_1 .. x_R x_1 .. x_R`` (R distinct random tokens, drawn from
:data:`~progdistill.probes.jobs.PROBE_SEED`), for every head (layer l, head h) with attention pattern A (B, T, T):

- **previous-token score**: the mean attention from position t to t - 1 (t >= 1);
- **induction (prefix-matching) score**: the mean attention from a second-half position t (t >= R, holding the
  token x_{t-R+1}) to t - R + 1, the token that followed the current token's earlier occurrence.

A head that always attends to the previous token scores 1 on the first; an induction head, 1 on the second;
uniform attention scores about 1 / t. Beside them, each record holds the task's held-out in-context and bigram
loss and accuracy (:mod:`progdistill.tasks.induction`) and the loss on the repeated halves (``repeat_loss``).
Files: ``probes/induction.jsonl`` (one record per model), ``probes/induction-summary.json``,
``probes/induction.png`` (:mod:`progdistill.probes.induction_figure`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json, atomic_write_text
from progdistill.distill.losses import cross_entropy
from progdistill.experiment import ExperimentConfig
from progdistill.probes.induction_figure import plot_induction
from progdistill.probes.jobs import PROBE_SEED, model_jobs, refresh_report, run_jobs, schedule_of
from progdistill.store.lock import RunLock
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory
from progdistill.tasks.base import Task
from progdistill.train.evaluation import evaluate_tokens

PROBE_SEQUENCES = 64  # repeated sequences per model
FORMED = 0.4  # an induction score at which the summary calls a head formed


def repeated_sequences(vocab_size: int, length: int, count: int = PROBE_SEQUENCES, seed: int = PROBE_SEED):
    """``count`` sequences ``x x`` of 2R tokens, x of R = min(length // 2, vocab_size) distinct random ids: int64
    (count, 2R), drawn from ``seed``."""
    half = min(length // 2, vocab_size)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(count, vocab_size, generator=gen).argsort(dim=1)[:, :half]
    return torch.cat([x, x], dim=1)


def head_scores(attentions, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous-token, induction) scores, each (layers, heads), of attention patterns ``attentions`` (one
    (B, H, T, T) tensor per layer, rows summing to 1) on sequences repeating with ``period`` R (T = 2R): the mean
    of A[t, t-1] over t >= 1 and of A[t, t-R+1] over t >= R (module docstring)."""
    prev, induction = [], []
    for pattern in attentions:
        a = pattern.float()
        T = a.shape[-1]
        t = torch.arange(1, T)
        prev.append(a[:, :, t, t - 1].mean(dim=(0, 2)))  # (H,)
        t = torch.arange(period, T)
        induction.append(a[:, :, t, t - period + 1].mean(dim=(0, 2)))
    return torch.stack(prev).numpy(), torch.stack(induction).numpy()


@torch.no_grad()
def attention_patterns(model, ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The attention patterns (one (B, H, T, T) per layer) and logits (B, T, V) of a Hugging Face causal model
        (``model.backbone``, e.g. :class:`~progdistill.models.language.CausalLM`) on ``ids`` (B, T). The attention is
        computed by the plain ("eager") implementation, which returns the patterns and gives the same logits (up to
    rounding); the model's own implementation is restored afterwards."""
    backbone = model.backbone
    implementation = getattr(backbone.config, "_attn_implementation", "eager")
    was_training = model.training
    model.eval()
    try:
        if implementation != "eager":
            backbone.set_attn_implementation("eager")
        out = backbone(ids, output_attentions=True)
    finally:  # the model computes as before (a student probed while it trains keeps its own numbers)
        if implementation != "eager":
            backbone.set_attn_implementation(implementation)
        model.train(was_training)
    return tuple(out.attentions), out.logits


def induction_record(model, task: Task, ids: torch.Tensor) -> dict[str, Any]:
    """Head scores (lists layers x heads), ``repeat_loss`` (nats, the second halves of ``ids``) and the task's
    held-out group metrics (``eval_in_context_loss``, ... from :func:`~progdistill.train.evaluation.evaluate_tokens`)
    of one model."""
    period = ids.shape[1] // 2
    attentions, logits = attention_patterns(model, ids)
    prev, induction = head_scores(attentions, period)
    # Position t >= R predicts token t + 1, a copy of token t + 1 - R.
    repeat = float(cross_entropy(logits[:, period:-1].flatten(0, 1), ids[:, period + 1 :].flatten()))
    groups: dict[str, float] = {}
    loss, accuracy = evaluate_tokens(model, task.eval_batches(), groups)
    return {
        "previous_token": prev.round(4).tolist(),
        "induction": induction.round(4).tolist(),
        "repeat_loss": repeat,
        "eval_loss": float(loss[0]),
        "eval_accuracy": float(accuracy[0]),
        **groups,
    }


def probe_induction(run_dir: str | Path, students: bool = True, log=print) -> dict[str, Any]:
    """The induction probe of a run directory of the ``induction`` task: :func:`induction_record` of every teacher
    checkpoint and (``students``) every final student; writes ``probes/induction.jsonl``,
    ``probes/induction-summary.json`` and ``probes/induction.png``, and returns the summary. Raises ``ConfigError``
    for a run of another task, or one without a teacher checkpoint."""
    rundir = RunDir(run_dir)
    config = rundir.config()
    if "induction" not in config.task.probes:
        raise ConfigError(
            f"{rundir.path}: the induction probe needs a run whose task declares it (the induction task); "
            f"this run's task is {config.task.kind!r}"
        )
    with RunLock(rundir.path):  # not while the run trains or another probe writes; inputs as the run used them
        rundir.check_inputs(config)
        summary = _probe(rundir, config, rundir.task(config), students, log)
        refresh_report(rundir, log)
        return summary


def run_end_of_run(rundir: RunDir, config: ExperimentConfig, task: Task, log=print) -> dict[str, Any]:
    """The induction probe of a run that has just trained (the caller holds the run's lock)."""
    return _probe(rundir, config, task, True, log)


def check_fits(config: ExperimentConfig) -> None:
    """Nothing to refuse before training: every induction task holds repeated sequences of two tokens or more."""


def _probe(rundir: RunDir, config: ExperimentConfig, task: Any, students: bool, log) -> dict[str, Any]:
    trajectory = Trajectory(rundir.teacher)
    if not trajectory.steps:
        raise ConfigError(f"{rundir.teacher} has no checkpoints to probe")
    out = rundir.probes
    out.mkdir(exist_ok=True)
    ids = repeated_sequences(task.num_classes, task.input_size)
    jobs = model_jobs(config, trajectory.steps, students)
    settings = {"settings": {"sequences": PROBE_SEQUENCES, "period": ids.shape[1] // 2, "seed": PROBE_SEED}}

    def compute(name: str, step: int) -> dict[str, Any]:
        model = rundir.load_model(config, name, step if name == "teacher" else None, task=task)
        return induction_record(model, task, ids)

    partial = out / ".induction.partial.jsonl"
    done = run_jobs(partial, settings, jobs, compute, "induction probe", log)
    records = [done[job] for job in jobs]
    atomic_write_text(out / "induction.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(records)
    atomic_write_json(out / "induction-summary.json", summary)
    plot_induction(records, out / "induction.png", config.preset)
    partial.unlink()
    log(f"wrote {out / 'induction.jsonl'}, {out / 'induction-summary.json'}, {out / 'induction.png'}")
    return summary


def summarize(records: list[dict]) -> dict[str, Any]:
    """The teacher's best previous-token and induction score per checkpoint, the first checkpoint whose best
    induction score reaches :data:`FORMED` (None if none does), and per student schedule the mean and spread of
    its final best scores and in-context / bigram losses."""
    teacher = [r for r in records if r["model"] == "teacher"]
    best_induction = [float(np.max(r["induction"])) for r in teacher]
    formed = next((r["step"] for r, s in zip(teacher, best_induction) if s >= FORMED), None)
    by_schedule: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r["model"] == "teacher":
            continue
        entry = by_schedule.setdefault(schedule_of(r["model"]), {})
        entry.setdefault("best induction score", []).append(float(np.max(r["induction"])))
        entry.setdefault("best previous-token score", []).append(float(np.max(r["previous_token"])))
        for key in ("eval_in_context_loss", "eval_bigram_loss", "eval_in_context_accuracy"):
            if key in r:
                entry.setdefault(key, []).append(r[key])
    return {
        "formed_threshold": FORMED,
        "teacher": {
            "steps": [r["step"] for r in teacher],
            "best_previous_token": [float(np.max(r["previous_token"])) for r in teacher],
            "best_induction": best_induction,
            "induction_formed_step": formed,
        },
        "students": {
            label: {
                k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                for k, v in entry.items()
            }
            for label, entry in by_schedule.items()
        },
    }
