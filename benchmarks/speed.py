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
  (the experiment docs/benchmarks.md times against the authors' scripts);
- **authors' pipeline** (only with ``--authors DIR``): the same experiment with the authors' own ``parity/``
  scripts (their repository checked out at ``DIR``, run by ``--authors-python``, a Python whose environment
  holds their dependencies: transformers 4.44, hydra-core, omegaconf, datasets, wandb; docs/benchmarks.md says
  how): their teacher script, then one process per student (CE, one-shot, progressive), with the commands
  docs/benchmarks.md records. Its time is the four processes' together, start-up and data generation included,
  as the 1-seed experiment's is.

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


def bare(steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``steps`` eager SGD steps of the teacher (data drawn outside the timers)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(N, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    total, cpu = 0.0, 0.0
    for start in range(0, steps, BLOCK):
        length = min(BLOCK, steps - start)
        x = torch.randint(0, 2, (length, BATCH, N)).float() * 2 - 1
        y = (x[..., :K].prod(-1) > 0).long()
        begin, begin_cpu = time.perf_counter(), time.process_time()
        for i in range(length):
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        total, cpu = total + time.perf_counter() - begin, cpu + time.process_time() - begin_cpu
    return total, cpu


def library(steps: int, students: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fit`` training the parity-mlp teacher (or its 15 students on labels) for ``steps``."""
    from dataclasses import replace

    from progdistill.distill.schedules import CE
    from progdistill.recipes.presets import get_preset
    from progdistill.train.loop import Member, fit, generator

    config = get_preset("parity-mlp")
    train = config.student if students else config.teacher
    train = replace(train, steps=steps, eval_every=min(steps, 1000), checkpoint_every=min(steps, 1000))
    members = [Member(f"m{s}{k}", k, CE()) for k in range(3) for s in range(5)] if students else [Member("t", 0, CE())]
    model = train.model.build(N, 2, [generator(m.seed, "init") for m in members])
    begin, begin_cpu = time.perf_counter(), time.process_time()
    fit(config.task, model, train, members, data_stream="bench")
    return time.perf_counter() - begin, time.process_time() - begin_cpu


def child(part: str, steps: int) -> None:
    seconds, cpu = bare(steps) if part == "bare" else library(steps, students=part == "students")
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))


def timed(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stdout) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    try:
        done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=cwd)
    except OSError as error:
        sys.exit(f"{' '.join(cmd)} could not start: {error}")
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    out = done.stdout
    wall = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def authors_pipeline(code: Path, python: str, out: Path, env: dict, teacher_steps: int, student_steps: int) -> dict:
    """Run the authors' parity experiment (teacher, then CE, one-shot and progressive students, one process each)
    with their scripts in ``code``/parity at the parity-mlp preset's sizes; returns each stage's (wall, CPU) seconds.
    The teacher saves a checkpoint every 1000 steps and ends at step ``teacher_steps - 1``: the one-shot teacher
    is its last saved checkpoint, progressive walks through all of them."""
    env = {**env, "PYTHONPATH": str(code), "WANDB_MODE": "disabled"}
    common = ["--num_layers=1", "--learning_rate=0.05", "--weight_decay=0", "--seed=0", "--num_labels=2"]
    data = ["--feature_complexity=5", "--randomize_features=0", "--feature_coordinates=0_1_2_3_4"]
    data += [f"--data_dimension={N}", "--num_workers=0", f"--batch_size={BATCH}", "--eval_batch_size=250"]
    data += ["--log_intvl=1000", "--save_intvl=1000"]

    def supervised(name: str, width: int, steps: int, anneal: str, warmup: float) -> list[str]:
        return (
            [python, "boolean_expts.py", "--model_type=mlp", f"--anneal_type={anneal}", f"--hidden_size={width}"]
            + common
            + data
            + [f"--logging_path={out}/logs/{name}", f"--output_path={out}/{name}/ckpts"]
            + [f"--n_steps={steps}", f"--n_examples={steps * BATCH + 250}", f"--warmup_ratio={warmup}"]
        )

    stages = {}
    cwd = code / "parity"
    stages["teacher"] = timed(supervised("teacher", WIDTH, teacher_steps, "constant", 0), env, cwd)[:2]
    (teacher_dir,) = (out / "teacher").glob("ckpts*")
    saved = list(range(1000, teacher_steps, 1000))
    stages["ce"] = timed(supervised("ce", 100, student_steps, "cosine", 0.06), env, cwd)[:2]
    for name, steps in (("one-shot", saved[-1:]), ("progressive", saved)):
        cmd = [python, "boolean_distill_expts.py", f"training.n_examples={student_steps * BATCH + 4096}"]
        cmd += [f"training.n_steps={student_steps}", "training.seed=0", "training.learning_rate=0.05"]
        cmd += [f"training.batch_size={BATCH}", "training.temperature=0.5", f"data.data_dimension={N}"]
        cmd += ["data.num_labels=2", "data.feature_complexity=5", "data.randomize_features=0", "data.num_workers=0"]
        cmd += ["model.type=mlp", "model.num_layers=1", "model.hidden_size=100", f"model.teacher_hidden_size={WIDTH}"]
        cmd += ["model.teacher_num_layers=1", "task.method=progressive_distillation", "task.ckpt_multiplier=1"]
        cmd += [f'task.teacher_ckpt_step="{"_".join(map(str, steps))}"', f"task.teacher_ckpt_dir={teacher_dir}"]
        cmd += ["task.kl_alpha=0", "logging.freq=1000", "logging.ckpt_freq=1000", "logging.save_ckpt_freq=1000"]
        cmd += [f"logging.logging_path={out}/logs/{name}", f"logging.output_path={out}/{name}/ckpts"]
        cmd += [f"hydra.run.dir={out}/{name}/hydra"]
        stages[name] = timed(cmd, env, cwd)[:2]
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every part (default 1)")
    parser.add_argument("--teacher-steps", type=int, default=50_000, help="steps of bare, teacher and students")
    parser.add_argument("--skip-experiment", action="store_true", help="leave out the 1-seed experiment")
    parser.add_argument(
        "--student-steps", type=int, help="steps of the 1-seed experiment's students (default: the preset's)"
    )
    parser.add_argument(
        "--authors", metavar="DIR", help="a checkout of the authors' repository: time their pipeline too"
    )
    parser.add_argument(
        "--authors-python",
        metavar="PYTHON",
        help="the Python that runs the authors' scripts (with their dependencies installed); required with --authors",
    )
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
        ("--student-steps", 1 if args.student_steps is None else args.student_steps),
    ):
        if value < 1:
            parser.error(f"{flag} {value} is invalid: must be a positive integer")
    if args.teacher_steps < 2000 and args.authors:
        parser.error("--authors needs --teacher-steps >= 2000 (their teacher saves a checkpoint every 1000 steps)")
    if args.authors_python and not args.authors:
        parser.error("--authors-python is the Python of the authors' scripts: give --authors DIR too")
    if args.student_steps is not None and args.skip_experiment and not args.authors:
        parser.error("--student-steps sets the 1-seed experiment's students: drop --skip-experiment")
    if args.authors:
        if not (Path(args.authors) / "parity" / "boolean_distill_expts.py").is_file():
            parser.error(f"--authors {args.authors}: no parity/boolean_distill_expts.py there (not their repository?)")
        if not args.authors_python or not Path(args.authors_python).is_file():
            parser.error(f"--authors-python {args.authors_python}: give the Python of the authors' environment")
        if args.skip_experiment:
            parser.error("--authors is compared with the 1-seed experiment: drop --skip-experiment")
        # absolute, not resolved: a venv's python is a link whose target would run without the venv's packages;
        # and the scripts run in their own folder, where a relative path would name another file
        args.authors_python = os.path.abspath(args.authors_python)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    sys.path.insert(0, str(ROOT))
    from progdistill.recipes.presets import get_preset  # after env: importing progdistill sets OMP_WAIT_POLICY

    student_steps = args.student_steps or get_preset("parity-mlp").student.steps
    cli = [sys.executable, "-m", "progdistill.cli", "run", "parity-mlp", "--seeds", "1", "--report-to", "none"]
    steps = str(args.teacher_steps)
    parts: dict[str, list[str]] = {
        "bare": [sys.executable, __file__, "--child", "bare", steps],
        "teacher loop": [sys.executable, __file__, "--child", "teacher", steps],
        "students": [sys.executable, __file__, "--child", "students", steps],
        "teacher-dominated run": cli
        + ["--set", f"teacher.steps={steps}", "--set", "student.steps=1000", "--set", 'schedules=[{"type":"ce"}]'],
    }
    if not args.skip_experiment:
        three = '[{"type":"ce"},{"type":"one-shot"},{"type":"progressive","speed":1.0}]'
        parts["1-seed experiment"] = cli + ["--set", f"teacher.steps={steps}", "--set", f"schedules={three}"]
        parts["1-seed experiment"] += ["--set", f"student.steps={student_steps}"]
    if args.authors:
        parts["authors' pipeline"] = []
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {}
            for name, cmd in parts.items():
                load = os.getloadavg()[0]
                slug = name.replace(" ", "-").replace("'", "")
                out_dir = Path(tmp) / f"{r}-{slug}"
                if name == "authors' pipeline":
                    stages = authors_pipeline(
                        Path(args.authors).resolve(),
                        args.authors_python,
                        out_dir,
                        env,
                        args.teacher_steps,
                        student_steps,
                    )
                    wall, cpu = (sum(v[i] for v in stages.values()) for i in (0, 1))
                    row["authors' stages"] = {k: {"wall_s": v[0], "cpu_s": v[1]} for k, v in stages.items()}
                else:
                    is_run = cmd[2:4] == ["progdistill.cli", "run"]
                    wall, cpu, out = timed(cmd + ["--out", str(out_dir)] if is_run else cmd, env)
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
    if args.authors:
        print("\nthe 1-seed experiment against the authors' pipeline: their time / ours, wall (CPU) per round")
        ratios = [
            (
                row["authors' pipeline"]["wall_s"] / row["1-seed experiment"]["wall_s"],
                row["authors' pipeline"]["cpu_s"] / row["1-seed experiment"]["cpu_s"],
            )
            for row in rounds
        ]
        print("  " + "  ".join(f"{w:5.2f}x ({c:5.2f}x)" for w, c in ratios))
    machine = {"cpu_count": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0]}
    Path(args.out).write_text(json.dumps({"machine": machine, "steps": args.teacher_steps, "rounds": rounds}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
