"""The induction probe's figure: heads x checkpoints heatmaps of the previous-token and induction scores over the
teacher's trajectory, its in-context and bigram losses, and every final student's heads."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from progdistill.store.report import save_figure


def _heads(record: dict, key: str) -> np.ndarray:
    return np.asarray(record[key], dtype=float).reshape(-1)  # (layers * heads,), layer-major


def _labels(record: dict) -> list[str]:
    layers, heads = np.asarray(record["induction"]).shape
    return [f"L{layer}H{h}" for layer in range(layers) for h in range(heads)]


def plot_induction(records: list[dict], path: Path, preset: str) -> None:
    """Top: previous-token and induction scores (colour, 0 to 1) of every teacher head (rows, ``L<layer>H<head>``)
    at every checkpoint (columns). Bottom left: the teacher's held-out in-context and bigram losses per
    checkpoint. Bottom right: the induction score of every final student's heads (rows) per student (columns)."""
    teacher = [r for r in records if r["model"] == "teacher"]
    students = [r for r in records if r["model"] != "teacher"]
    steps = [r["step"] for r in teacher]
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    for ax, key, title in (
        (axes[0, 0], "previous_token", "previous-token score"),
        (axes[0, 1], "induction", "induction (prefix-matching) score"),
    ):
        grid = np.stack([_heads(r, key) for r in teacher], axis=1)  # (heads, checkpoints)
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(grid.shape[0]), _labels(teacher[0]), fontsize=7)
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("teacher checkpoint (step)")
        ax.set_title(f"{preset} teacher: {title}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    ax = axes[1, 0]
    for key, label, style in (
        ("eval_in_context_loss", "in-context positions", "b.-"),
        ("eval_bigram_loss", "bigram positions", "g.-"),
        ("repeat_loss", "repeated random sequences", "k--"),
    ):
        if all(key in r for r in teacher):
            ax.plot(steps, [r[key] for r in teacher], style, lw=1.2, label=label)
    ax.set_xlabel("teacher training steps")
    ax.set_ylabel("held-out cross-entropy (nats)")
    ax.set_title("teacher loss by position kind", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    if students:
        grid = np.stack([_heads(r, "induction") for r in students], axis=1)  # (student heads, students)
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(grid.shape[0]), _labels(students[0]), fontsize=7)
        ax.set_xticks(range(len(students)), [r["model"] for r in students], rotation=60, ha="right", fontsize=6)
        ax.set_title("final students: induction score", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)
