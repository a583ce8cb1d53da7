"""The non-terminal probe of masked language models on grammar sentences (paper §2, "Non-terminal probe"): a
linear probe on the frozen last hidden layer predicting each token's ancestor non-terminal at each tree level.
:func:`progdistill.probes.ngram.probe_ngram` runs it on the same models as the n-gram probe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from progdistill.probes.jobs import FORWARD_BATCH, schedule_of
from progdistill.store.report import save_figure
from progdistill.tasks.pcfg.task import Vocabulary, pad_sentences

NONTERMINAL_TRAIN = 256  # grammar sentences to fit the non-terminal probe on
NONTERMINAL_TEST = 128  # sentences to score it on


@torch.no_grad()
def _hidden_features(model, sentences, vocab: Vocabulary, device) -> torch.Tensor:
    """Last-layer hidden states of every terminal token, in sentence order: (T, H)."""
    ids, attention = pad_sentences([s.tokens for s in sentences], vocab)
    feats = []
    for j in range(0, len(ids), FORWARD_BATCH):
        hidden = (
            model.hidden_states(ids[j : j + FORWARD_BATCH].to(device), attention[j : j + FORWARD_BATCH].to(device))
            .float()
            .cpu()
        )
        feats.append(hidden[ids[j : j + FORWARD_BATCH] < len(vocab.terminals)])
    return torch.cat(feats)


def nonterminal_probe(
    model,
    train_sentences,
    test_sentences,
    vocab: Vocabulary,
    levels: Sequence[int],
    steps: int = 200,
    lr: float = 0.05,
    device: str | torch.device = "cpu",
) -> dict[int, float]:
    """Linear probe on the frozen last hidden layer predicting each token's ancestor nonterminal at each level.

    ``train_sentences`` / ``test_sentences``: :class:`~progdistill.tasks.pcfg.sampler.SentenceBatch` (tokens and
    ancestors); ``levels``: tree levels to probe (1 .. num_levels - 2 are informative; 0 is the root).
    A softmax-regression head per level is fitted with full-batch Adam for ``steps`` steps on standardized
    features (initial weights 0, so the result is deterministic). Returns {level: test accuracy in [0, 1]}.
    Raises ``ValueError`` for a level outside the trees.
    """
    num_levels = train_sentences.ancestors.shape[0]
    for lv in levels:
        if not (isinstance(lv, int) and 0 <= lv < num_levels):
            raise ValueError(f"level {lv!r} is invalid: the trees have levels 0..{num_levels - 1}")
    was_training = model.training
    model.eval()
    x_train = _hidden_features(model, train_sentences, vocab, device)
    x_test = _hidden_features(model, test_sentences, vocab, device)
    model.train(was_training)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    out = {}
    for lv in levels:
        y_train = torch.from_numpy(train_sentences.ancestors[lv].astype(np.int64))
        y_test = torch.from_numpy(test_sentences.ancestors[lv].astype(np.int64))
        classes = int(max(y_train.max(), y_test.max())) + 1
        weight = torch.zeros(x_train.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x_train @ weight + bias, y_train).backward()
            opt.step()
        with torch.no_grad():
            out[lv] = float(((x_test @ weight + bias).argmax(-1) == y_test).float().mean())
    return out


def plot_nonterminals(records: list[dict], config, path: Path) -> None:
    """Left: non-terminal probe accuracy per tree level over the teacher's checkpoints. Right: final students'
    accuracy per level, mean over seeds with the seed std as error bars, one group of bars per schedule."""
    teacher = [r for r in records if r["model"] == "teacher"]
    levels = list(teacher[0]["nonterminal_accuracy"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for lv in levels:
        left.plot(
            [r["step"] for r in teacher], [r["nonterminal_accuracy"][lv] for r in teacher], lw=1.4, label=f"level {lv}"
        )
    left.set_xlabel("teacher training steps")
    left.set_ylabel("linear probe accuracy")
    left.set_title(f"{config.preset}: non-terminal probe of the teacher")
    left.legend(fontsize=8)
    labels = [s.label for s in config.schedules]
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        runs = [r for r in records if schedule_of(r["model"]) == label and r["model"] != "teacher"]
        if not runs:
            continue
        values = np.array([[r["nonterminal_accuracy"][lv] for lv in levels] for r in runs])
        right.bar(
            np.arange(len(levels)) + j * width,
            values.mean(0),
            width,
            yerr=values.std(0, ddof=1) if len(runs) > 1 else None,
            label=label,
        )
    right.set_xticks(np.arange(len(levels)) + 0.4 - width / 2, [f"level {lv}" for lv in levels])
    right.set_ylabel("linear probe accuracy (final students)")
    right.set_ylim(0, 1)
    if right.get_legend_handles_labels()[0]:  # no bars when only the teacher was probed
        right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
