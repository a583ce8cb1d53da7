"""How many of an autoregressive model's sampled sentences the grammar accepts (paper §3), for the final teacher
and students of a ``pcfg-lm`` run."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from progdistill.core.files import atomic_write_json
from progdistill.experiment import ExperimentConfig, student_names
from progdistill.probes.jobs import PROBE_SEED, schedule_of
from progdistill.store.rundir import RunDir
from progdistill.tasks.base import Task
from progdistill.tasks.pcfg.parser import inside_log_probability
from progdistill.tasks.pcfg.prefix import grammatical_prefix_fraction, next_token_distributions

GENERATION_SAMPLES = 200


def generation_acceptance(model, task, count: int = GENERATION_SAMPLES, seed: int = PROBE_SEED) -> dict[str, float]:
    """Sample ``count`` sentences from ``model`` (a :class:`~progdistill.models.language.CausalLM`) starting at BOS, at
    temperature 1 over the terminals and EOS, up to twice the longest held-out sentence (at most
    ``task.max_length``) tokens; a sentence is *accepted* when it ends with EOS within that length and the
    grammar's inside algorithm gives it a positive probability. Returns
    ``{"acceptance": fraction accepted, "finished": fraction that produced EOS, "mean_length": tokens,
    "grammatical_prefix": mean over samples of the longest prefix the grammar can still complete, as a fraction
    of the sample with its EOS (1 exactly for accepted samples; :mod:`progdistill.tasks.pcfg.prefix`)}``."""
    vocab, grammar = task.vocabulary, task.load_grammar()
    allowed = torch.tensor(list(range(len(vocab.terminals))) + [vocab.eos])
    device = next(model.parameters()).device
    prompt = torch.full((count, 1), vocab.bos, dtype=torch.long, device=device)
    limit = min(task.max_length, 2 * int(task.eval_sentences().lengths.max()))
    outputs = model.sample(prompt, allowed, vocab.eos, limit + 1, torch.Generator().manual_seed(seed))
    finished = [o[:-1] for o in outputs if o and o[-1] == vocab.eos]
    accepted = sum(1 for tokens in finished if tokens and inside_log_probability(grammar, tokens) > float("-inf"))
    prefix = float(np.mean([grammatical_prefix_fraction(grammar, o, vocab.eos) for o in outputs]))
    return {
        "acceptance": accepted / count,
        "finished": len(finished) / count,
        "mean_length": float(np.mean([len(o) for o in outputs])),
        "grammatical_prefix": prefix,
    }


@torch.no_grad()
def grammar_kl(model, task, count: int = 64) -> float:
    """Mean KL(grammar || model) in nats per position over the first ``count`` held-out sentences: at every
    position of ``BOS s EOS`` that predicts a next token, the grammar's exact next-token distribution given the
    prefix (over the terminals and EOS; :func:`progdistill.tasks.pcfg.prefix.next_token_distributions`) against the
    model's softmax over its whole vocabulary. 0 only for a model that has learned the grammar's distribution."""
    grammar, vocab = task.load_grammar(), task.vocabulary
    sentences = task.eval_sentences()
    picked = [sentences[i] for i in range(min(count, len(sentences)))]
    batch = task.batch_from_sentences(picked)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logp = torch.log_softmax(model(*batch.to(device).model_inputs).float(), -1).cpu().double()  # (B, L, V)
    model.train(was_training)
    columns = torch.tensor(list(range(len(vocab.terminals))) + [vocab.eos])
    total, positions = 0.0, 0
    for i, s in enumerate(picked):
        g = torch.from_numpy(next_token_distributions(grammar, s.tokens.tolist()))  # (n + 1, T + 1)
        p = logp[i, : len(g)][:, columns]  # position t predicts token t + 1
        total += float(torch.where(g > 0, g * (g.clamp(min=1e-300).log() - p), torch.zeros_like(g)).sum())
        positions += len(g)
    return total / positions


def run_end_of_run(rundir: RunDir, config: ExperimentConfig, task: Task, log=print) -> dict[str, Any]:
    """:func:`generation_acceptance` of the final teacher and every final student of a run that has just
    trained; writes ``probes/generation-summary.json`` ({"teacher": ..., "students": {schedule: {mean, std}},
    "runs": ...})."""
    out = rundir.probes
    out.mkdir(exist_ok=True)
    runs = {
        name: generation_acceptance(rundir.load_model(config, name, task=task), task)
        for name in ["teacher", *student_names(config)]
    }
    by_schedule: dict[str, list[dict]] = {}
    for name, r in runs.items():
        if name != "teacher":
            by_schedule.setdefault(schedule_of(name), []).append(r)

    def spread(v):
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    summary = {
        "samples": GENERATION_SAMPLES,
        "teacher": runs["teacher"],
        "students": {
            label: {
                f"{key} {stat}": f([r[key] for r in rs])
                for key in ("acceptance", "grammatical_prefix")
                for stat, f in (("mean", lambda v: float(np.mean(v))), ("std", spread))
            }
            for label, rs in by_schedule.items()
        },
        "runs": runs,
    }
    atomic_write_json(out / "generation-summary.json", summary)
    log(f"wrote {out / 'generation-summary.json'}")
    return summary


def check_fits(config: ExperimentConfig) -> None:
    """Nothing to refuse before training: any grammar's sentences can be sampled."""
