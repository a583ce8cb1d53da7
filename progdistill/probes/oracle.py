"""The grammar's Bayes-optimal masked LM as a reference for the n-gram probes (paper §2): its M_robust / M_close
and its masked-token loss, by the inside algorithm, on the sentences and positions
:func:`progdistill.probes.ngram.probe_ngram` uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json
from progdistill.probes.jobs import PROBE_SEED, read_records, refresh_report
from progdistill.probes.ngram import (
    NGRAM_SEQUENCES,
    WINDOWS,
    NgramPositions,
    check_distance,
    check_windows,
    distance_scores,
    hidden_variants,
    ngram_inputs,
    ngram_name,
    ngram_stem,
)
from progdistill.probes.ngram_figure import plot_ngram
from progdistill.store.lock import RunLock
from progdistill.store.rundir import RunDir
from progdistill.tasks.pcfg.parser import masked_posterior


def oracle_ngram_dependence_at(
    grammar,
    ids: torch.Tensor,
    maskable: torch.Tensor,
    where: NgramPositions,
    windows: Sequence[int] = WINDOWS,
    progress: bool = False,
    distance: str = "tv",
) -> dict[str, dict[str, float]]:
    """M_robust and M_close (paper §2) of the Bayes-optimal masked LM of ``grammar`` -- the exact
    posterior of the token at p given the visible tokens (:func:`progdistill.tasks.pcfg.parser.masked_posterior`) --
    at the same inputs and positions as :func:`ngram_dependence_at`: where a model's probes end as its loss
    reaches the grammar's entropy.

    ``ids`` (B, L): grammar sentences laid out as ``BOS s EOS PAD...``
    (:func:`~progdistill.tasks.masking.pad_sentences`); ``maskable`` (B, L): their terminal positions; ``distance``:
    "tv" or "l1" (= 2 x TV, the paper's axis; see :mod:`progdistill.probes.ngram`). Returns the dict of
    :func:`ngram_dependence` (its
    ``"cross_entropy"`` is the grammar's own uncertainty about a token with it alone hidden). Cost:
    (1 + 2 * len(windows)) * T inside passes per position, ~10 ms each for a 130-token sentence, ~0.1 s for
    cfg3b's ~300 tokens. Raises ``ValueError`` for a bad window or distance, and when a sentence is not in the
    grammar's language.
    """
    check_windows(windows)
    check_distance(distance)
    variants = torch.stack(hidden_variants(maskable, where, windows))  # (variants, P, L)
    probs = torch.zeros(len(variants), len(where.sentence), len(grammar.terminals), dtype=torch.float64)
    for i in tqdm(
        range(len(where.sentence)), desc="oracle n-gram probe", unit="position", disable=None if progress else True
    ):  # no bar without a terminal
        row = ids[where.sentence[i]]
        terminal = maskable[where.sentence[i]]
        tokens = row[terminal].numpy()  # the sentence; terminal positions are 1..n (BOS at 0)
        p = int(where.position[i]) - 1
        for v in range(len(variants)):
            hidden = (variants[v, i][terminal]).nonzero().flatten().tolist()
            probs[v, i] = torch.from_numpy(masked_posterior(grammar, tokens, hidden, p))
    return distance_scores(
        probs, windows, ids[torch.from_numpy(where.sentence), torch.from_numpy(where.position)], distance
    )


def oracle_masked_lm_loss(
    grammar, sentences: Sequence[Sequence[int]], mask_rate: float, rng: np.random.Generator, per_sentence: int = 8
) -> dict[str, float | None]:
    """Cross-entropy (nats) of the grammar's Bayes-optimal masked LM when each token is hidden with probability
    ``mask_rate``: the floor of a masked LM's loss on the grammar (paper §2's teacher loss; for BERT's
    80/10/10 rule, approximately:
    there 10% of the selected tokens stay visible and 10% are replaced by random terminals).

    For each sentence the hidden set is drawn from ``rng``; the exact posterior (inside algorithm) is scored at
    up to ``per_sentence`` of its hidden positions (an unbiased sample of them; cost T inside passes each).
    Returns ``{"mean", "std_error", "positions", "mask_rate"}`` (mean None when no token was hidden,
    std_error None with fewer than 2 positions). Raises ``ValueError`` for a mask rate outside
    (0, 1) or a sentence that is not in the grammar's language.
    """
    if not 0 < mask_rate < 1:
        raise ValueError(f"mask_rate={mask_rate!r} is invalid: must lie in (0, 1)")
    nll = []
    for sentence in sentences:
        tokens = np.asarray(sentence)
        hidden = np.flatnonzero(rng.random(len(tokens)) < mask_rate)
        if not len(hidden):
            continue
        for p in rng.choice(hidden, size=min(per_sentence, len(hidden)), replace=False):
            posterior = masked_posterior(grammar, tokens, hidden.tolist(), int(p))
            nll.append(0.0 - np.log(max(posterior[tokens[p]], 1e-300)))
    losses = np.array(nll)
    return {
        "mean": float(losses.mean()) if len(losses) else None,  # None (JSON null): no token was hidden
        "std_error": float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else None,
        "positions": len(losses),
        "mask_rate": float(mask_rate),
    }


def probe_oracle(
    run_dir: str | Path, windows: tuple[int, ...] = WINDOWS, log=print, distance: str = "tv"
) -> dict[str, Any]:
    """M_robust / M_close of the Bayes-optimal masked LM of a PCFG run's grammar, on the sentences and
    positions ``probe_ngram`` uses: the exact posterior of the token at p given the visible tokens, by the
    inside algorithm (:func:`oracle_ngram_dependence_at`). This is where a teacher's
    n-gram probes end as its loss reaches the grammar's entropy (paper §2: the fall of M_robust after
    the sharp drop is the model moving towards it).

    Writes ``probes/ngram-oracle-summary.json`` (scores per window, the cross-entropy of the optimal
    prediction with one token hidden, its masked-token loss at the task's mask rate -- the floor of the
    teacher's validation loss -- and the settings), which the run's results.json / summary.md and the n-gram
    figure pick up (the figure is redrawn when the n-gram probe has run). ``distance="l1"`` (the paper's axis,
    2 x TV) writes ``probes/ngram-oracle-l1-summary.json`` instead and redraws the ``ngram-l1`` /
    ``ngram-attention-l1`` figures. Takes ~15 s for ``pcfg-mlm`` (~42-token sentences) and ~10 minutes for
    cfg3b (~300 tokens). Raises ``ConfigError`` for a run that is not ``pcfg-mlm`` or was changed after it ran,
    and ``ValueError`` for a bad window or distance.
    """
    rundir = RunDir(run_dir)
    config = rundir.config()
    if "oracle" not in config.task.probes:
        raise ConfigError(
            f"the oracle n-gram probe needs a PCFG masked LM run (pcfg-mlm), whose grammar defines "
            f"the optimal predictor; {rundir.path} has task {config.task.kind!r}"
        )
    check_windows(windows)
    check_distance(distance)
    windows = tuple(sorted(windows))  # "7 5 3" is the run's own "3 5 7"
    with RunLock(rundir.path):
        rundir.check_inputs(config, teacher=False)
        task: Any = rundir.task(config)  # a grammar's masked LM (the probe's kind registers it)
        out = rundir.probes
        _, ids, _, maskable, _, where = ngram_inputs(task, windows)
        out.mkdir(exist_ok=True)
        grammar = task.load_grammar()
        scores = oracle_ngram_dependence_at(grammar, ids, maskable, where, windows, progress=True, distance=distance)
        log("scoring the optimal predictor's masked-token loss ...")
        sentences = [row[m].numpy() for row, m in zip(ids, maskable)]
        loss = oracle_masked_lm_loss(grammar, sentences, task.mask_rate, np.random.default_rng(PROBE_SEED))
        key = f"M_robust/{min(windows)}"
        summary = {
            "metric": key,
            "median": scores[key]["median"],
            "scores": scores,
            "masked_lm_loss": loss,
            "settings": {
                "windows": list(windows),
                "sequences": NGRAM_SEQUENCES,
                "seed": PROBE_SEED,
                "positions": len(where.sentence),
                "distance": distance,
            },
        }
        name = ngram_name(ngram_stem("ngram-oracle", distance=distance), windows)
        atomic_write_json(out / f"{name}-summary.json", summary)
        written = [out / f"{name}-summary.json"]
        for hiding in ("token", "attention"):  # redraw the model probes' figures with the oracle in them
            model_name = ngram_name(ngram_stem("ngram", hiding, distance), windows)
            if (out / f"{model_name}.jsonl").exists() and (out / f"{model_name}-summary.json").exists():
                records = read_records(out / f"{model_name}.jsonl")
                model_summary = json.loads((out / f"{model_name}-summary.json").read_text(encoding="utf-8"))
                plot_ngram(records, model_summary, windows, out / f"{model_name}.png", config.preset, scores)
                written.append(out / f"{model_name}.png")
        refresh_report(rundir, log)
        log(f"wrote {', '.join(map(str, written))}")
        return summary
