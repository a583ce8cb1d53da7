"""Smoke test of the paper-scale presets on an accelerator: each `*-paper` preset's real models, batch sizes and
optimizers, run end to end for a few steps (teacher, then CE / one-shot / progressive students, then the report),
printing wall time and peak GPU memory. It checks that a preset *starts and runs* on CUDA with the same
code as on CPU; it measures nothing about the science (the full presets take hours to days). The wall time
includes the probes every run ends with: the n-gram probe of pcfg-mlm-paper (~100 s per model on CPU), and for
pcfg-lm-paper 200 sampled sentences per model, up to twice the longest held-out sentence, each parsed by the
inside algorithm on the CPU (minutes; leave it out of a short device budget with ``--presets``).

    python benchmarks/paper_smoke.py                      # every *-paper preset, 5 steps each, device auto
    python benchmarks/paper_smoke.py --presets pcfg-mlm-paper --steps 20
    python benchmarks/paper_smoke.py --device cpu --steps 1 --set teacher.batch_size=8 --set student.batch_size=8

Overrides applied to every preset: teacher/student steps, evaluation and checkpoints every ``--steps`` steps,
``task.eval_size`` (small, to keep evaluation short), one seed, and the schedules CE, one-shot, progressive
(2-shot-auto needs a phase transition a few steps cannot have). ``text-mlm-paper`` reads Wikipedia +
BookCorpus through Hugging Face ``datasets``; machines without network use ``--text-corpus`` instead
(default: the offline sample, ``default:wikipedia``). Writes ``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from progdistill.cli import resolve_config
from progdistill.core.config import ConfigError
from progdistill.recipes.presets import PRESETS
from progdistill.recipes.runner import run
from progdistill.train.loop import resolve_device

SCHEDULES = '[{"type": "ce"}, {"type": "one-shot"}, {"type": "progressive", "speed": 1.0}]'


def overrides(preset: str, steps: int, eval_size: int, text_corpus: str) -> list[str]:
    sets = [
        f"{part}.{field}={steps}"
        for part in ("teacher", "student")
        for field in ("steps", "eval_every", "checkpoint_every")
    ]
    sets += [f"task.eval_size={eval_size}", f"schedules={SCHEDULES}"]
    if preset == "text-mlm-paper":
        sets.append(f"task.corpus={text_corpus}")
    return sets


def smoke(preset: str, sets: list[str], device: str, workdir: Path) -> dict:
    config = resolve_config(preset, 1, sets)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = run(config, workdir / preset, device=device, log=lambda *a: None)
    return {
        "preset": preset,
        "ok": True,
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "teacher_final_accuracy": results["teacher"]["final_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper = [name for name in PRESETS if name.endswith("-paper")]
    parser.add_argument(
        "--presets",
        nargs="+",
        default=paper,
        choices=paper,
        metavar="PRESET",
        help=f"which presets (default: all of {', '.join(paper)})",
    )
    parser.add_argument("--steps", type=int, default=5, help="teacher and student steps per preset (default 5)")
    parser.add_argument("--eval-size", type=int, default=256, help="task.eval_size for the smoke runs")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--text-corpus",
        default="default:wikipedia",
        help="corpus for text-mlm-paper (default: the offline sample; the preset's own corpus "
        "needs network or a datasets cache)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="extra override for every preset, e.g. teacher.batch_size=8 for a CPU dry run",
    )
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the temporary run directories are deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.steps < 1:
        parser.error(f"--steps {args.steps} is invalid: must be >= 1")
    if args.eval_size < 1:
        parser.error(f"--eval-size {args.eval_size} is invalid: must be >= 1")
    args.presets = list(dict.fromkeys(args.presets))  # each preset once
    if args.json and (
        Path(args.json).is_dir() or args.json.endswith("/") or not os.access(Path(args.json).parent, os.W_OK)
    ):
        parser.error(f"--json {args.json} is invalid: must be a file in an existing, writable directory")
    try:
        device = resolve_device(args.device)
        for preset in args.presets:  # every override is checked before anything runs
            resolve_config(preset, 1, overrides(preset, args.steps, args.eval_size, args.text_corpus) + args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            sets = overrides(preset, args.steps, args.eval_size, args.text_corpus) + args.set
            try:
                row = smoke(preset, sets, str(device), Path(tmp))
            except Exception as exc:  # report every preset, then fail at the end
                traceback.print_exc()
                row = {"preset": preset, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")
    failed = [r["preset"] for r in rows if not r["ok"]]
    print("all presets ran" if not failed else f"FAILED: {', '.join(failed)}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
