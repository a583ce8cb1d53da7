"""progdistill benchmark suite: speed of the training loop against a reference-style loop and the machine's
matmul peak, batched vs sequential student sweeps, and the wall time of the default experiment.

    python benchmarks/run.py                    # everything (~5 minutes on 2 cores), writes benchmarks/results.json
    python benchmarks/run.py --skip-preset      # without the full parity-mlp run

All figures of one invocation are measured in the same process on the same machine, so their ratios are
meaningful even on a shared, noisy machine; compare ratios, not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from progdistill.core.settings import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive
from progdistill.distill.teachers import TeacherPool
from progdistill.models.mlp import MLPConfig
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import run, train_teacher
from progdistill.store.rundir import RunDir
from progdistill.tasks.parity import ParityTask
from progdistill.train.loop import Member, fit, generator

N, K, WIDTH = 50, 5, 2000
TASK = ParityTask(n=N, k=K)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def mm_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Float32 matrix-multiply peak: best time of a (size x size) @ (size x size) product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def teacher_steps_per_s(steps: int, batch: int) -> float:
    """Steps/s of progdistill's own loop (progdistill.train.loop.fit) training the width-2000 teacher."""
    cfg = TrainConfig(
        model=MLPConfig(width=WIDTH),
        optimizer=OptimizerConfig(name="sgd", lr=0.05),
        steps=steps,
        batch_size=batch,
        eval_every=steps,
        checkpoint_every=steps,
    )
    model = cfg.model.build(N, 2, [generator(0, "bench")])
    fit(TASK, model, replace(cfg, steps=200), [Member("warmup", 0, CE())], data_stream="warmup")
    return steps / _timed(lambda: fit(TASK, model, cfg, [Member("bench", 0, CE())], data_stream="bench"))


def reference_loop_steps_per_s(steps: int, batch: int = 32) -> float:
    """The authors' style: a pre-generated numpy dataset, a DataLoader (no workers), the learning rate set by
    hand every step and a progress bar updated every step."""
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 1.0], size=(steps * batch, N)).astype(np.float32)
    y = (x[:, :K].prod(axis=1) > 0).astype(np.int64)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=batch,
        shuffle=True,
        num_workers=0,
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(N, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train():
        bar = tqdm(total=steps, leave=False, mininterval=0)
        for _step, (xb, yb) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = 0.05
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=loss.item())
        bar.close()

    return steps / _timed(train)


def sweep_seconds(steps: int, workdir: Path) -> tuple[float, float]:
    """12 width-100 students (4 schedules x 3 seeds) of one teacher: as one stack vs one after another."""
    base = get_preset("parity-mlp")
    every = max(1, steps // 10)
    steps = every * 10
    config = replace(
        base,
        teacher=replace(base.teacher, steps=steps, eval_every=every, checkpoint_every=every),
        student=replace(base.student, steps=steps, eval_every=every),
        schedules=(CE(), OneShot(), Progressive(), KShot(points=((steps // 2, steps // 4), (FINAL, steps)))),
    )
    RunDir(workdir).claim(config, overwrite=True)
    trajectory = train_teacher(config, workdir, device="cpu", log=lambda *a: None)

    def pool():
        return TeacherPool(
            trajectory, lambda: config.teacher.model.build(N, 2, [torch.Generator()]), torch.device("cpu")
        )

    runs = [(s, k) for k in range(3) for s in config.schedules]

    def batched():
        model = config.student.model.build(N, 2, [generator(k, "student-init") for _, k in runs])
        fit(
            TASK,
            model,
            config.student,
            [Member(f"{s.label}{k}", k, s) for s, k in runs],
            data_stream="student-data",
            distillation=config.distillation,
            teachers=pool(),
        )

    def sequential():
        for s, k in runs:
            model = config.student.model.build(N, 2, [generator(k, "student-init")])
            fit(
                TASK,
                model,
                config.student,
                [Member(f"{s.label}{k}", k, s)],
                data_stream="student-data",
                distillation=config.distillation,
                teachers=pool(),
            )

    return _timed(batched), _timed(sequential)


def parity_mlp_wall_s(workdir: Path) -> float:
    config = get_preset("parity-mlp")
    return run(config, workdir, overwrite=True, device="cpu", log=lambda *a: None)["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="steps of each timed training loop")
    parser.add_argument("--sweep-steps", type=int, default=3000, help="student steps in the sweep comparison")
    parser.add_argument("--skip-preset", action="store_true", help="skip the full parity-mlp run")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the temporary run directories are deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for flag, value, least in (("--steps", args.steps, 4), ("--sweep-steps", args.sweep_steps, 10)):
        if not least <= value <= 100_000:  # checked before minutes of timing; --steps // 4 steps run at batch 256
            parser.error(f"{flag} {value} is invalid: must be in {least}..100000")
    if Path(args.out).is_dir() or args.out.endswith("/") or not os.access(Path(args.out).parent, os.W_OK):
        parser.error(f"--out {args.out} is invalid: must be a file in an existing, writable directory")

    params = N * WIDTH + WIDTH + WIDTH * 2 + 2
    results: dict = {"machine": machine()}
    results["mm_peak_gflops"] = mm_peak_gflops()
    results["reference_loop_steps_per_s"] = reference_loop_steps_per_s(args.steps)
    results["teacher_steps_per_s"] = teacher_steps_per_s(args.steps, 32)
    results["teacher_steps_per_s_b256"] = teacher_steps_per_s(args.steps // 4, 256)
    results["step_gflops_b32"] = 6 * 32 * params * results["teacher_steps_per_s"] / 1e9
    results["step_gflops_b256"] = 6 * 256 * params * results["teacher_steps_per_s_b256"] / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        results["sweep_batched_s"], results["sweep_sequential_s"] = sweep_seconds(args.sweep_steps, Path(tmp) / "sweep")
        results["sweep_steps"] = args.sweep_steps
        results["parity_mlp_wall_s"] = None if args.skip_preset else parity_mlp_wall_s(Path(tmp) / "parity-mlp")
    results["ratios"] = {
        "teacher_vs_reference": results["teacher_steps_per_s"] / results["reference_loop_steps_per_s"],
        "step_b32_of_mm_peak": results["step_gflops_b32"] / results["mm_peak_gflops"],
        "step_b256_of_mm_peak": results["step_gflops_b256"] / results["mm_peak_gflops"],
        "sweep_sequential_vs_batched": results["sweep_sequential_s"] / results["sweep_batched_s"],
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    rows = [
        ("mm peak (float32)", f"{results['mm_peak_gflops']:.1f} GFLOP/s", ""),
        ("reference-style loop, batch 32", f"{results['reference_loop_steps_per_s']:.0f} steps/s", ""),
        (
            "progdistill teacher loop, batch 32",
            f"{results['teacher_steps_per_s']:.0f} steps/s",
            f"{results['ratios']['teacher_vs_reference']:.2f}x reference (target >= 2)",
        ),
        (
            "  achieved, batch 32",
            f"{results['step_gflops_b32']:.1f} GFLOP/s",
            f"{results['ratios']['step_b32_of_mm_peak']:.1%} of mm peak",
        ),
        (
            "  achieved, batch 256",
            f"{results['step_gflops_b256']:.1f} GFLOP/s",
            f"{results['ratios']['step_b256_of_mm_peak']:.1%} of mm peak",
        ),
        (f"12-student sweep, {args.sweep_steps} steps, batched", f"{results['sweep_batched_s']:.1f} s", ""),
        (
            "  one after another",
            f"{results['sweep_sequential_s']:.1f} s",
            f"{results['ratios']['sweep_sequential_vs_batched']:.2f}x slower (target >= 4)",
        ),
        (
            "parity-mlp, whole experiment",
            "skipped" if results["parity_mlp_wall_s"] is None else f"{results['parity_mlp_wall_s']:.1f} s",
            "target <= 180 s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")
    print(f"machine: {results['machine']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
