"""The table of docs/reproduction.md's "Sequence-level and on-policy distillation": for a finished
pcfg-lm-generation run directory (every way of distilling in one run: ``ExperimentConfig.ways``), every
student's final next-token loss and accuracy (validation) and the grammar's measures of 200 sentences it
samples (acceptance, grammatical-prefix fraction; seeded) and its exact KL to the grammar's next-token
distribution on 64 held-out sentences (``grammar_kl``, nats per position).

    progdistill run pcfg-lm-generation --out runs/gen
    python benchmarks/generation_table.py runs/gen

Several run directories can be given (``LABEL=PATH`` names the way of a run's own ``distillation``, e.g. runs
made before ways existed, one per way; default "token-level"). Prints a markdown table (rows: way x schedule;
mean +/- std over seeds where there are several) and the JSON.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

from progdistill.core.files import read_metrics
from progdistill.experiment import student_runs
from progdistill.probes.generation import generation_acceptance, grammar_kl
from progdistill.store.rundir import RunDir


def measure(label: str, path: str) -> dict:
    """The teacher's and every student's measures in run directory ``path``; each student's ``way`` is its
    way's name, or ``label`` for the run's own distillation settings."""
    rundir = RunDir(path)
    config = rundir.config()
    task = rundir.task(config)
    teacher = rundir.load_model(config, "teacher", task=task)
    out = {"teacher": {**generation_acceptance(teacher, task), "grammar_kl": grammar_kl(teacher, task)}, "students": {}}
    for run in student_runs(config):
        name = run.name
        last = read_metrics(rundir.student_metrics(name))[-1]
        student = rundir.load_model(config, name, task=task)
        out["students"][name] = {
            "way": run.way or label,
            "schedule": run.schedule.label,
            "seed": run.seed,
            **generation_acceptance(student, task),
            "grammar_kl": grammar_kl(student, task),
            "eval_loss": last["eval_loss"],
            "eval_accuracy": last["eval_accuracy"],
            "seq_kd_steps": last.get("seq_kd_steps"),
            "on_policy_steps": last.get("on_policy_steps"),
        }
    return out


def main(argv: list[str]) -> None:
    runs = [a.split("=", 1) if "=" in a else ("token-level", a) for a in argv]
    results = {path: measure(label, path) for label, path in runs}
    keys = ("eval_loss", "eval_accuracy", "acceptance", "grammatical_prefix", "grammar_kl")
    print("| way | schedule | seeds | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in results.values():
        groups = defaultdict(list)
        for m in r["students"].values():
            groups[(m["way"], m["schedule"])].append(m)
        for (way, schedule), ms in groups.items():
            cells = []
            for key in keys:
                v = [m[key] for m in ms]
                cells.append(f"{np.mean(v):.3f}" + (f" +/- {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""))
            print(f"| {way} | {schedule} | {len(ms)} | " + " | ".join(cells) + " |")
    for path, r in results.items():
        t = r["teacher"]
        print(
            f"teacher ({path}): acceptance {t['acceptance']:.3f}, grammatical prefix "
            f"{t['grammatical_prefix']:.3f}, KL to the grammar {t['grammar_kl']:.4f}"
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
