"""The monomial probe's figure (paper §1, the mechanism): the teacher's degree-1 in-support correlations
against the off-support mean and its accuracy, beside the mean correlation of every probed degree."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def monomial_figure(records: list[dict], summary: dict, preset: str):
    """Left: degree-1 in-support correlations, one line per support coordinate, the off-support mean with a
    +/- std band and the teacher's accuracy (second axis). Right: in-support mean (solid) and off-support
    mean (dotted) of every probed degree. The detected transition is shaded in both; the legends sit below
    the panels, outside the data. Returns the matplotlib figure."""
    teacher = [r for r in records if r["model"] == "teacher"]
    steps = np.array([r["step"] for r in teacher])
    degrees = [d["degree"] for d in teacher[0]["degrees"]]
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 5.4))
    for j, entry in enumerate(next(d for d in teacher[0]["degrees"] if d["degree"] == 1)["in_support"]):
        values = [next(d for d in r["degrees"] if d["degree"] == 1)["in_support"][j]["correlation"] for r in teacher]
        ax.plot(steps, values, lw=1.2, label=f"in-support x_{entry['subset'][0]}")
    off_mean = np.array([r["summary"]["degree1/off_support_mean"] for r in teacher])
    off_std = np.array([r["summary"]["degree1/off_support_std"] for r in teacher])
    ax.plot(steps, off_mean, "k-", lw=1.5, label="off-support mean (+/- std)")
    ax.fill_between(steps, off_mean - off_std, off_mean + off_std, color="k", alpha=0.15)
    for d in degrees:
        (line,) = right.plot(
            steps, [r["summary"][f"degree{d}/in_support_mean"] for r in teacher], lw=1.4, label=f"degree {d} in-support"
        )
        right.plot(
            steps,
            [r["summary"][f"degree{d}/off_support_mean"] for r in teacher],
            ls=":",
            color=line.get_color(),
            label=f"degree {d} off-support",
        )
    for axis in (ax, right):
        if summary.get("transition"):
            axis.axvspan(
                summary["transition"]["start"],
                summary["transition"]["end"],
                color="orange",
                alpha=0.15,
                label="detected transition" if axis is ax else None,
            )
        axis.set_xlabel("teacher training steps")
        axis.set_ylabel("monomial correlation")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["eval_accuracy"] for r in teacher], "b--", lw=1, label="teacher accuracy")
    ax2.set_ylabel("teacher eval accuracy", color="b")
    ax2.set_ylim(0.4, 1.02)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    below = {"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "frameon": False}
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], ncol=3, **below)
    right.legend(ncol=2, **below)
    ax.set_title(f"{preset}: degree-1 correlations of the teacher")
    right.set_title("mean correlation by degree")
    fig.tight_layout()
    return fig
