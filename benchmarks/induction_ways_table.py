"""The table of docs/reproduction.md's "Which way of distilling" (induction heads): for an induction-lm-ways
run directory (every way of distilling in one run: ``ExperimentConfig.ways``), per way and schedule the
student's *ic step* -- the first evaluation step at which its held-out in-context accuracy
(``eval_in_context_accuracy`` in its metrics.jsonl) reaches ``--threshold``, as benchmarks/induction_students.py
measures it -- and its final in-context and bigram loss (nats). Trains nothing; reads the students' records.

    progdistill run induction-lm-ways --out runs/induction-lm-ways
    python benchmarks/induction_ways_table.py runs/induction-lm-ways

Prints a markdown table (mean (min-max) over the seeds whose students have finished; the per-seed ic steps,
"never" when a student never reaches the threshold) and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from progdistill.core.files import read_metrics
from progdistill.experiment import student_runs
from progdistill.store.rundir import RunDir


def first(records: list[dict], key: str, level: float) -> int | None:
    return next((r["step"] for r in records if r.get(key) is not None and r[key] >= level), None)


def span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:{fmt}}" if len(values) == 1 else f"{mean:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--threshold", type=float, default=0.5, help="in-context accuracy of the transition")
    parser.add_argument("--json", default=None, help="write the per-student numbers here")
    args = parser.parse_args()
    rundir = RunDir(args.run_dir)
    config = rundir.config()
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in student_runs(config):
        path = rundir.student_metrics(run.name)
        records = read_metrics(path) if path.exists() else []
        if not records or records[-1]["step"] < config.student.steps:
            continue  # not finished
        last = records[-1]
        rows[(run.way or "forward-kl", run.schedule.label)].append(
            {
                "seed": run.seed,
                "ic_step": first(records, "eval_in_context_accuracy", args.threshold),
                "in_context_loss": last["eval_in_context_loss"],
                "bigram_loss": last["eval_bigram_loss"],
                "in_context_accuracy": last["eval_in_context_accuracy"],
            }
        )
    print(
        f"| way | schedule | seeds | ic step (accuracy {args.threshold}) | per seed | final in-context loss "
        "| final bigram loss |"
    )
    print("|---|---|---|---|---|---|---|")
    for (way, schedule), students in rows.items():
        steps = [s["ic_step"] for s in students]
        reached = [s for s in steps if s is not None]
        ic = span([float(s) for s in reached], ".0f") if reached else "never"
        ic += "" if len(reached) in (0, len(steps)) else f" ({len(steps) - len(reached)} never)"
        per_seed = ", ".join("never" if s is None else str(s) for s in steps)
        print(
            f"| {way} | {schedule} | {len(students)} | {ic} | {per_seed} | "
            f"{span([s['in_context_loss'] for s in students], '.3f')} | "
            f"{span([s['bigram_loss'] for s in students], '.3f')} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{w}/{s}": v for (w, s), v in rows.items()}, f, indent=1)


if __name__ == "__main__":
    main()
