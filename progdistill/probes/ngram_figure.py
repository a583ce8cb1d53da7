"""The n-gram probe's figure (paper §2, Figure 3's layout): the teacher's loss with its phases beside the
median M_robust / M_close of every window over the teacher's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from progdistill.store.report import save_figure


def plot_ngram(
    records: list[dict], summary: dict, windows, path: Path, preset: str, oracle: dict[str, Any] | None = None
) -> None:
    """Left: the teacher's validation loss with its detected phases shaded. Right: median M_robust (solid) and
    M_close (dashed) over the teacher's checkpoints, one colour per window size, log scale; with ``oracle``
    (``probe_oracle``'s scores) the Bayes-optimal predictor's medians as dotted levels and in a note (a median
    of 0 cannot be drawn on the log scale)."""
    teacher = [r for r in records if r["model"] == "teacher"]
    steps = [r["step"] for r in teacher]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(steps, [r["eval_loss"] for r in teacher], "k.-", lw=1.2, label="teacher validation loss")
    phases = summary.get("phases")
    for axis in (left, right):
        if phases:
            for (a, b), colour, name in (
                (phases["plateau"], "tab:gray", "plateau"),
                (phases["sharp_drop"], "tab:orange", "sharp drop"),
                (phases["slow_decay"], "tab:green", "slow decay"),
            ):
                axis.axvspan(a, b, color=colour, alpha=0.15, label=name if axis is left else None)
        axis.set_xlabel("teacher training steps")
    left.set_ylabel("masked-token cross-entropy (nats)")
    left.set_title(f"{preset}: teacher loss and detected phases")
    left.legend(fontsize=8)
    for w in windows:
        (line,) = right.plot(
            steps,
            [max(r["ngram"][f"M_robust/{w}"]["median"], 1e-6) for r in teacher],
            lw=1.5,
            label=f"M_robust, {w}-gram",
        )
        right.plot(
            steps,
            [max(r["ngram"][f"M_close/{w}"]["median"], 1e-6) for r in teacher],
            ls="--",
            color=line.get_color(),
            label=f"M_close, {w}-gram",
        )
        for score in ("M_robust", "M_close") if oracle is not None else ():
            if oracle is not None and oracle[f"{score}/{w}"]["median"] > 1e-6:
                right.axhline(oracle[f"{score}/{w}"]["median"], ls=":", lw=1, color=line.get_color())
    if oracle:
        note = "\n".join(
            f"{score}: " + " / ".join(f"{oracle[f'{score}/{w}']['median']:.3g}" for w in windows)
            for score in ("M_robust", "M_close")
        )
        right.text(
            0.28,
            0.03,
            f"Bayes-optimal predictor (dotted, same colour\nas its window), median for "
            f"{' / '.join(map(str, windows))}-grams:\n" + note,
            transform=right.transAxes,
            fontsize=7,
            va="bottom",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"},
        )
    right.set_yscale("log")
    right.set_ylabel(
        "median L1 distance ||p - q||_1 (= 2 x TV)"
        if summary.get("distance") == "l1"
        else "median total-variation distance"
    )
    right.set_title(
        "n-gram dependence of the teacher's predictions"
        if summary.get("hiding") != "attention"
        else "n-gram dependence (masked tokens hidden from attention)"
    )
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
