"""What every run-directory probe shares: the resumable job runner, the fixed probe seed, the list of models
to probe, and rewriting a finished run's report once a probe has written its summary.

A probe reads a run directory's checkpoints and writes its own files under ``probes/`` (files in, files out):
one JSONL line per model, a ``<name>-summary.json`` that the report picks up, and a figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from progdistill.core.files import read_metrics
from progdistill.experiment import ExperimentConfig, student_names
from progdistill.store.report import write_report
from progdistill.store.rundir import RunDir

PROBE_SEED = 2024  # every checkpoint is probed on the same subsets, inputs and sentences
FORWARD_BATCH = 256  # sequences per forward pass


def model_jobs(config: ExperimentConfig, teacher_steps: list[int], students: bool) -> list[tuple[str, int]]:
    """(model name, step) of every teacher checkpoint, then (when ``students``) of every final student."""
    jobs = [("teacher", step) for step in teacher_steps]
    if students:
        jobs += [(name, config.student.steps) for name in student_names(config)]
    return jobs


def run_jobs(
    partial: Path, settings: dict, jobs: list[tuple[str, int]], compute, desc: str, log=print
) -> dict[tuple[str, int], dict]:
    """Compute ``compute(name, step)`` for every (model name, step) job, appending each record to the
    ``partial`` JSONL file as it is done, so a killed probe resumes where it stopped (when its first line,
    ``settings``, matches). A new ``partial`` file is created with the first finished record, so a probe that
    fails on its first model leaves none behind. Returns {job: record}; the caller deletes ``partial`` once its
    outputs are written."""
    done = {}
    fh = None
    if partial.exists():
        saved = read_metrics(partial)
        if saved and saved[0] == settings:
            done = {(r["model"], r["step"]): r for r in saved[1:]}
            log(f"resuming the {desc}: {len(done)} of {len(jobs)} models already probed")
        fh = _start(partial, [settings, *done.values()])
    try:
        for name, step in tqdm(jobs, desc=desc, unit="model", leave=False, disable=None):  # none without a terminal
            if (name, step) in done:
                continue
            done[(name, step)] = {"model": name, "step": step, **compute(name, step)}
            fh = fh or _start(partial, [settings])
            fh.write(json.dumps(done[(name, step)]) + "\n")
            fh.flush()
    finally:
        if fh is not None:
            fh.close()
    return done


def _start(partial: Path, lines: list[dict]):
    """``partial`` opened for writing, holding ``lines`` (JSONL)."""
    fh = open(partial, "w", encoding="utf-8")  # noqa: SIM115 (returned open: the caller appends and closes it)
    fh.write("".join(json.dumps(line) + "\n" for line in lines))
    fh.flush()
    return fh


def schedule_of(name: str) -> str:
    """The schedule label of a student name such as "progressive-x2-seed1" (see ``student_name``)."""
    return name.rsplit("-seed", 1)[0]


def read_records(path: Path) -> list[dict[str, Any]]:
    """A probe's JSONL file: one record per model."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def refresh_report(rundir: RunDir, log=print) -> None:
    """Rewrite a finished run's results.json / summary.md so their ``probes`` section matches probes/ (the
    run's recorded wall time is kept); for a run that has not finished, say that ``run`` will."""
    previous = rundir.finished_results()
    if previous is not None and "wall_time_s" in previous:
        write_report(
            rundir.path,
            wall_time_s=previous["wall_time_s"],
            env=previous.get("environment"),
            modified=previous.get("modified"),
        )
    else:
        log(
            f"{rundir.results_file} is not written yet (the run has not finished): `progdistill run` "
            "adds this probe to it when the run ends"
        )
