"""progdistill's speed against a bare eager PyTorch loop, in one run, interleaved.

    python benchmarks/speed.py                      # 1 round at 1 thread (~4 minutes on an idle 2-core machine)
    python benchmarks/speed.py --rounds 2 --threads 2
    python benchmarks/speed.py --teacher-steps 5000 --skip-experiment   # a quick look

Each round runs, one after another, each part in its own process at ``--threads`` threads:

- **bare**: the bare eager loop, 50,000 SGD steps of the parity-mlp teacher (n=50, width 2000, batch 32,
  ``nn.Sequential`` + ``F.cross_entropy`` + ``loss.backward()`` + ``torch.optim.SGD``), inputs drawn before
  each block of 1000 steps outside the timer: the steps alone;
- **teacher loop**: ``progdistill.train.loop.fit`` training the same teacher for the same steps (sampling and
  evaluation inside the timer, as in a run);
- **students**: the parity-mlp stack of 15 width-100 students (5 schedules x 3 seeds) trained by ``fit`` on
  labels for the same steps (the stacked step alone, without teacher targets);
- **teacher-dominated run**: ``progdistill run parity-mlp`` with 1 seed, a 1,000-step CE student, the report
  (the whole command, start-up included);
- **1-seed experiment**: ``progdistill run parity-mlp --seeds 1`` with CE, one-shot and progressive students
  (the experiment docs/benchmarks.md times against the authors' scripts).

It prints each part's wall and CPU seconds (the loops': of the loop alone; the commands': of the whole process),
the load average, and each part's speed relative to the bare loop's (bare time / part's time, in wall time and
in CPU time, which a shared machine disturbs less; above 1: faster than the bare loop's steps alone), and writes
``benchmarks/speed.json``. Ratios of parts of one round are measured minutes apart on the same machine; on
a shared machine compare them, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N, K, WIDTH, BATCH, BLOCK = 50, 5, 2000, 32, 1000
ROOT = Path(__file__).resolve().parent.parent


def bare(steps: int) -> float:
    """Seconds of ``steps`` eager SGD steps of the teacher (data drawn outside the timer)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(N, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    total = 0.0
    for start in range(0, steps, BLOCK):
        length = min(BLOCK, steps - start)
        x = torch.randint(0, 2, (length, BATCH, N)).float() * 2 - 1
        y = (x[..., :K].prod(-1) > 0).long()
        begin = time.perf_counter()
        for i in range(length):
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        total += time.perf_counter() - begin
    return total


def library(steps: int, students: bool) -> float:
    """Seconds of ``fit`` training the parity-mlp teacher (or its stack of 15 students on labels) for ``steps``."""
    from dataclasses import replace

    from progdistill.distill.schedules import CE
    from progdistill.recipes.presets import get_preset
    from progdistill.train.loop import Member, fit, generator

    config = get_preset("parity-mlp")
    train = config.student if students else config.teacher
    train = replace(train, steps=steps, eval_every=min(steps, 1000), checkpoint_every=min(steps, 1000))
    members = [Member(f"m{s}{k}", k, CE()) for k in range(3) for s in range(5)] if students else [Member("t", 0, CE())]
    model = train.model.build(N, 2, [generator(m.seed, "init") for m in members])
    begin = time.perf_counter()
    fit(config.task, model, train, members, data_stream="bench")
    return time.perf_counter() - begin


def child(part: str, steps: int) -> None:
    cpu = time.process_time()
    seconds = bare(steps) if part == "bare" else library(steps, students=part == "students")
    print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu}))


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stdout) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    out = done.stdout
    wall = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every part (default 1)")
    parser.add_argument("--teacher-steps", type=int, default=50_000, help="steps of bare, teacher and students")
    parser.add_argument("--skip-experiment", action="store_true", help="leave out the 1-seed experiment")
    parser.add_argument("--out", default=str(Path(__file__).with_name("speed.json")))
    parser.add_argument("--child", nargs=2, metavar=("PART", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    for flag, value in (
        ("--rounds", args.rounds),
        ("--threads", args.threads),
        ("--teacher-steps", args.teacher_steps),
    ):
        if value < 1:
            parser.error(f"{flag} {value} is invalid: must be a positive integer")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "progdistill.cli", "run", "parity-mlp", "--seeds", "1", "--report-to", "none"]
    steps = str(args.teacher_steps)
    parts = {
        "bare": [sys.executable, __file__, "--child", "bare", steps],
        "teacher loop": [sys.executable, __file__, "--child", "teacher", steps],
        "students": [sys.executable, __file__, "--child", "students", steps],
        "teacher-dominated run": cli
        + ["--set", f"teacher.steps={steps}", "--set", "student.steps=1000", "--set", 'schedules=[{"type":"ce"}]'],
    }
    if not args.skip_experiment:
        three = '[{"type":"ce"},{"type":"one-shot"},{"type":"progressive","speed":1.0}]'
        parts["1-seed experiment"] = cli + ["--set", f"teacher.steps={steps}", "--set", f"schedules={three}"]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {}
            for name, cmd in parts.items():
                load = os.getloadavg()[0]
                out_dir = ["--out", str(Path(tmp) / f"{r}-{name.replace(' ', '-')}")]
                wall, cpu, out = timed(cmd + out_dir if cmd[2:4] == ["progdistill.cli", "run"] else cmd, env)
                if name in ("bare", "teacher loop", "students"):
                    loop = json.loads(out.splitlines()[-1])  # the loop alone, without start-up
                    wall, cpu = loop["seconds"], loop["cpu_seconds"]
                row[name] = {"wall_s": wall, "cpu_s": cpu, "load_at_start": load}
                print(f"round {r + 1} {name:<22} {wall:8.1f} s wall  {cpu:8.1f} s CPU  load {load:.1f}", flush=True)
            rounds.append(row)
    print(f"\nspeed relative to the bare loop's {steps} steps, {args.threads} thread(s): wall (CPU) per round")
    for name in parts:
        ratios = [
            (row["bare"]["wall_s"] / row[name]["wall_s"], row["bare"]["cpu_s"] / row[name]["cpu_s"]) for row in rounds
        ]
        print(f"  {name:<22} " + "  ".join(f"{w:5.2f}x ({c:5.2f}x)" for w, c in ratios))
    machine = {"cpu_count": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0]}
    Path(args.out).write_text(json.dumps({"machine": machine, "steps": args.teacher_steps, "rounds": rounds}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
