"""The students' own induction transition, for docs/reproduction.md ("Induction heads: when does the student's
form?"): for a run directory of the induction task with a finished teacher, train students exactly as
`progdistill run` does (same initializations, data and teachers: their records equal the run's own students'),
and at every evaluation also probe the student's attention heads (:mod:`progdistill.probes.induction`: the best
previous-token and induction score over its heads, on the probe's repeated sequences).

    python benchmarks/induction_students.py runs/induction-lm --schedules ce one-shot progressive-x2 2-shot-auto \
        --extra '{"type": "progressive", "speed": 8}' --seeds 3 --out runs/induction-lm/students-induction.json

``--from-json A.json B.json`` trains nothing and prints the table and figure of earlier measurements, merged.

Per student: ``ic_step`` (the first evaluation step at which its in-context accuracy reaches ``--threshold``,
None if never), ``head_step`` (the first at which its best induction score reaches the probe's FORMED level),
its final in-context and bigram loss, and the per-step curves. Prints a markdown table (mean, min-max over
seeds) and writes the JSON and a figure (``--figure``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from progdistill.core.config import lookup_variant
from progdistill.experiment import build_model, teacher_pool
from progdistill.probes.induction import FORMED, attention_patterns, head_scores, repeated_sequences
from progdistill.store.report import save_figure
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory
from progdistill.train.loop import Member, fit


def train_one(config, task, trajectory, teachers, schedule, seed: int, ids: torch.Tensor) -> dict:
    model = build_model(task, config.student.model, [seed], "student-init")
    resolved = schedule.resolve(trajectory)
    heads: list[dict] = []

    def on_record(step: int) -> None:
        prev, induction = head_scores(attention_patterns(model, ids)[0], ids.shape[1] // 2)
        heads.append({"step": step, "previous_token": float(prev.max()), "induction": float(induction.max())})

    start = time.perf_counter()
    (records,) = fit(
        task,
        model,
        config.student,
        [Member(f"{schedule.label}-seed{seed}", seed, resolved, None)],
        data_stream="student-data",
        distillation=config.distillation,
        teachers=teachers,
        desc=f"{schedule.label}-seed{seed}",
        on_record=on_record,
    )
    return {"records": records, "heads": heads, "seconds": time.perf_counter() - start}


def first(steps, values, level):
    return next((s for s, v in zip(steps, values) if v >= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--schedules", nargs="*", default=None, help="labels of the run's schedules (default all)")
    parser.add_argument("--extra", nargs="*", default=[], help="more schedules, as JSON dicts with a 'type'")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default the run's)")
    parser.add_argument("--seed-list", type=int, nargs="*", default=None, help="these seeds instead")
    parser.add_argument("--threshold", type=float, default=0.5, help="in-context accuracy of the transition")
    parser.add_argument("--from-json", nargs="*", default=[], help="train nothing: table and figure of these")
    parser.add_argument("--out", default=None)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    rundir = RunDir(args.run_dir)
    config = rundir.config()
    task = rundir.task(config)
    trajectory = Trajectory(rundir.teacher)
    teachers = teacher_pool(config, task, trajectory, torch.device("cpu"))
    schedules = [s for s in config.schedules if args.schedules is None or s.label in args.schedules]
    for text in args.extra:
        data = json.loads(text)
        schedules.append(lookup_variant("schedule", data.pop("type"))(**data))
    ids = repeated_sequences(task.num_classes, task.input_size)
    results: dict[str, list[dict]] = {}
    for path in args.from_json:  # earlier measurements, merged (schedule by schedule, in order)
        for label, rows in json.loads(Path(path).read_text()).items():
            results.setdefault(label, []).extend(rows)
    seeds = args.seed_list if args.seed_list is not None else range(args.seeds or config.seeds)
    if args.from_json:
        seeds = []
    for seed in seeds:
        for schedule in schedules:
            out = train_one(config, task, trajectory, teachers, schedule, seed, ids)
            recs, heads = out["records"], out["heads"]
            steps = [r["step"] for r in recs]
            student = {
                "seed": seed,
                "ic_step": first(steps, [r["eval_in_context_accuracy"] for r in recs], args.threshold),
                "head_step": first([h["step"] for h in heads], [h["induction"] for h in heads], FORMED),
                "final_in_context_loss": recs[-1]["eval_in_context_loss"],
                "final_bigram_loss": recs[-1]["eval_bigram_loss"],
                "final_in_context_accuracy": recs[-1]["eval_in_context_accuracy"],
                "seconds": out["seconds"],
                "curve": [
                    {
                        "step": r["step"],
                        "ic_acc": r["eval_in_context_accuracy"],
                        "ic_loss": r["eval_in_context_loss"],
                        "bigram_loss": r["eval_bigram_loss"],
                        **{k: h[k] for k in ("previous_token", "induction")},
                    }
                    for r, h in zip(recs, heads)
                ],
            }
            # The run's own student of this schedule and seed, when there is one, has the same records.
            mine = rundir.students / f"{schedule.label}-seed{seed}" / "metrics.jsonl"
            if mine.exists():
                saved = [json.loads(line) for line in mine.read_text().splitlines()]
                student["same_as_run"] = [r["eval_loss"] for r in saved] == [r["eval_loss"] for r in recs]
            results.setdefault(schedule.label, []).append(student)
            print(schedule.label, seed, {k: v for k, v in student.items() if k != "curve"}, flush=True)
            if args.out:  # after every student, so that a stopped measurement keeps what it finished
                Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print(
        f"| schedule | steps to in-context accuracy {args.threshold} | steps to induction score {FORMED} | "
        "final in-context loss | final bigram loss |"
    )
    print("|---|---|---|---|---|")

    def cell(values, digits=0):
        if any(v is None for v in values):
            return " / ".join("never" if v is None else f"{v:.{digits}f}" for v in values)
        return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    for label, rows in results.items():
        ic_loss = cell([r["final_in_context_loss"] for r in rows], 3)
        bigram_loss = cell([r["final_bigram_loss"] for r in rows], 3)
        print(
            f"| {label} | {cell([r['ic_step'] for r in rows])} | {cell([r['head_step'] for r in rows])} | "
            f"{ic_loss} | {bigram_loss} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for i, (label, rows) in enumerate(results.items()):
            for j, r in enumerate(rows):
                steps = [c["step"] for c in r["curve"]]
                kw = {"color": f"C{i}", "lw": 1.2, "label": label if j == 0 else None}
                left.plot(steps, [c["ic_acc"] for c in r["curve"]], **kw)
                right.plot(steps, [c["induction"] for c in r["curve"]], **kw)
        left.set_ylabel("in-context accuracy (validation)")
        right.set_ylabel("best induction score over the student's heads")
        for ax in (left, right):
            ax.set_xlabel("student steps")
            ax.legend(fontsize=8)
        left.axhline(args.threshold, color="gray", lw=0.8, ls=":")
        right.axhline(FORMED, color="gray", lw=0.8, ls=":")
        left.set_title(f"{config.preset}: students (each line a seed)", fontsize=9)
        fig.tight_layout()
        save_figure(fig, Path(args.figure))


if __name__ == "__main__":
    main()
