"""The README's main command under each thread setting, interleaved, on an idle or a loaded machine.

    python benchmarks/threads.py                    # idle machine: default, 1 thread, 2 threads, 2 spinning
    python benchmarks/threads.py --load 3           # with 3 busy processes beside it (a shared machine)
    python benchmarks/threads.py --set student.steps=5000 --rounds 2   # a quicker look

Each round runs ``progdistill run PRESET`` (default ``parity-mlp``, the README's command) once per setting,
one after another, each in its own process (round r starts at the r-th setting, so that no setting always
runs first):

- **default**: no ``OMP_NUM_THREADS``, no ``OMP_WAIT_POLICY``: progdistill's own choice (``core.threads``);
- **1 thread**: ``OMP_NUM_THREADS=1``;
- **all cores**: ``OMP_NUM_THREADS=<cores>`` (idle OpenMP threads sleep: progdistill's default wait policy);
- **all cores, spinning**: ``OMP_NUM_THREADS=<cores> OMP_WAIT_POLICY=ACTIVE`` (idle threads spin, as
  OpenMP lets them by default: what a run got before progdistill chose its threads).

``--load N`` starts N busy processes (a pure-Python loop each, one core's worth of load apiece) for the whole
benchmark and stops them at the end. It prints each run's wall and CPU seconds and the load average at its
start, each setting's time relative to the best setting of its round, and writes ``benchmarks/threads.json``.
Training results do not depend on the load; they may differ between thread counts in the last bits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from speed import timed  # benchmarks/speed.py: (wall, CPU) seconds of a command, or exit with its error

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True:\n    pass\n"


def settings(cores: int, spinning: bool = True) -> dict[str, dict[str, str]]:
    """Each setting's environment changes (made to an environment without either variable)."""
    chosen = {
        "default": {},
        "1 thread": {"OMP_NUM_THREADS": "1"},
        f"{cores} threads": {"OMP_NUM_THREADS": str(cores)},
        f"{cores} threads, spinning": {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "ACTIVE"},
    }
    return chosen if spinning else {k: v for k, v in chosen.items() if "spinning" not in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="parity-mlp", help="the preset to run (default: parity-mlp)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to progdistill run")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--load", type=int, default=0, help="busy processes to start beside the runs (default 0)")
    parser.add_argument(
        "--skip-spinning", action="store_true", help="leave out the spinning setting (slow on a loaded machine)"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("threads.json")))
    args = parser.parse_args()
    for flag, value, least in (("--rounds", args.rounds, 1), ("--load", args.load, 0)):
        if value < least:
            parser.error(f"{flag} {value} is invalid: must be an integer >= {least}")
    cores = os.cpu_count() or 1
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "progdistill.cli", "run", args.preset, "--report-to", "none"]
    for item in args.set:
        cmd += ["--set", item]
    # warm-up: the first process to import torch and progdistill reads them from disk; no setting should pay that
    timed([sys.executable, "-c", "import progdistill.cli"], base)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    rounds = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                row = {}
                order = list(settings(cores, not args.skip_spinning).items())
                order = order[r % len(order) :] + order[: r % len(order)]  # each setting first in some round
                for name, change in order:
                    load = os.getloadavg()[0]
                    out = ["--out", str(Path(tmp) / f"{r}-{len(row)}")]
                    wall, cpu, _ = timed(cmd + out, {**base, **change})
                    row[name] = {"wall_s": wall, "cpu_s": cpu, "load_at_start": load}
                    print(f"round {r + 1} {name:<26} {wall:8.1f} s wall {cpu:8.1f} s CPU  load {load:.1f}", flush=True)
                rounds.append(row)
    finally:
        for process in busy:
            process.kill()
    print("\nwall time relative to the round's best setting (1.00 = the best)")
    for name in settings(cores, not args.skip_spinning):
        ratios = [row[name]["wall_s"] / min(v["wall_s"] for v in row.values()) for row in rounds]
        print(f"  {name:<26} " + "  ".join(f"{x:5.2f}x" for x in ratios))
    machine = {"cpu_count": cores, "python": sys.version.split()[0], "load_processes": args.load}
    result = {"machine": machine, "command": ["python", *cmd[1:]], "rounds": rounds}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
