"""The recorded search of docs/reproduction.md's "Sequence-level and on-policy distillation": which grammar and
teacher sizes give a pcfg-lm-generation teacher whose samples the grammar mostly accepts. Each candidate trains
a teacher alone (pcfg-lm-generation's settings with the candidate's changes, given as ``--set`` paths) and
measures its final checkpoint: acceptance of 200 samples from BOS at temperature 1, the grammatical-prefix
fraction, the exact KL to the grammar's next-token distribution, eval loss and accuracy, and the wall time.

    OMP_NUM_THREADS=1 python benchmarks/generation_search.py baseline 'levels3=task.grammar.levels=3' \\
        'steps1500=teacher.steps=1500;teacher.batch_size=32'

A candidate is ``NAME`` (the preset as it is) or ``NAME=PATH=VALUE;PATH=VALUE...``. Prints one JSON line per
candidate.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from progdistill.core.config import from_dict, override, to_dict
from progdistill.experiment import ExperimentConfig, build_model
from progdistill.probes.generation import generation_acceptance, grammar_kl
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import train_teacher


def candidate(spec: str) -> tuple[str, ExperimentConfig]:
    name, _, changes = spec.partition("=")
    data = to_dict(get_preset("pcfg-lm-generation"), complete=True)
    for assignment in filter(None, changes.split(";")):
        data = override(data, assignment)
    return name, from_dict(ExperimentConfig, data)


def measure(name: str, config: ExperimentConfig) -> dict:
    task = config.task
    grammar = task.load_grammar()
    lengths = task.eval_sentences().lengths
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        trajectory = train_teacher(config, out, "cpu", log=lambda *a: None, report_to=())
        seconds = time.perf_counter() - started
        model = build_model(task, config.teacher.model, [0], "unused")
        model.load_state_dict(trajectory.load(trajectory.final_step))
        model.eval()
        last = trajectory.metrics(trajectory.final_step)
        with torch.no_grad():
            measures = {**generation_acceptance(model, task), "grammar_kl": grammar_kl(model, task)}
    return {
        "candidate": name,
        "grammar": to_dict(task.grammar),
        "terminals": len(task.vocabulary.terminals),
        "rules": len(grammar.rules),
        "mean_length": round(float(lengths.mean()), 2),
        "teacher": to_dict(config.teacher.model),
        "steps": config.teacher.steps,
        "batch_size": config.teacher.batch_size,
        "eval_loss": round(last["eval_loss"], 4),
        "eval_accuracy": round(last["eval_accuracy"], 4),
        **{k: round(v, 4) for k, v in measures.items()},
        "train_s": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def main(argv: list[str]) -> None:
    for spec in argv:
        print(json.dumps(measure(*candidate(spec))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
