"""The monomial probe on the targets a schedule hands its student (paper §1, "Mechanism", asked of the curricula
without stored checkpoints, paper §5): does a temperature or weight-path curriculum carry the low-degree
in-support correlations that a mid-transition checkpoint's targets carry?

For every distillation schedule of a sparse-parity run and every point p of the student's run (a share of
``student.steps``), the student's target ``q(x) = softmax(z(x) / T)[class 1]`` -- z the logits of the teacher the
schedule names at that step (its checkpoint, weight transform), T its temperature (else
``distillation.temperature``; 0 is the argmax) -- is probed with
:func:`progdistill.probes.monomials.monomial_correlations` at degrees 1..k (k: the parity itself). Hint steps
(the target is a hidden layer) and co-training (whose teacher at step t is the trajectory's checkpoint t + 1:
progressive at speed 1) are left out. Writes ``probes/curriculum-targets.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json
from progdistill.distill.losses import teacher_probabilities
from progdistill.distill.schedules import teacher_temperature
from progdistill.experiment import teacher_pool
from progdistill.probes.jobs import PROBE_SEED
from progdistill.probes.monomials import MonomialCorrelations, monomial_correlations
from progdistill.store.rundir import RunDir
from progdistill.store.trajectory import Trajectory

POINTS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)


def _class1_probability(teacher: torch.nn.Module, temperature: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The probe's target: inputs (B, n) -> the teacher's q(class 1 | x) at ``temperature``, (B,)."""

    def target(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher_probabilities(teacher(x)[0], temperature)[:, 1]

    return target


def probe_curriculum_targets(
    run_dir: str | Path,
    points: Sequence[float] = POINTS,
    num_samples: int = 100_000,
    schedules: Sequence | None = None,
    log=print,
    seed: int = 0,
) -> dict[str, Any]:
    """Degree 1..k monomial correlations of every schedule's targets at each point of ``points`` (shares of the
    student's run in [0, 1]; 1 is the last step); ``schedules``: those to probe on the run's teacher (default: the
    run's own); ``seed``: the student seed whose targets are probed, for schedules whose random draws follow it
    (a noised teacher, a fresh weight path; default 0, the first student's). Returns {schedule label: [{point,
    student_step, teacher_checkpoint, temperature, degree<d>/in_support_mean, degree<d>/off_support_mean, ...}]},
    also written to ``probes/curriculum-targets.json``. Raises ``ConfigError`` for a run that is not sparse parity
    or a point outside [0, 1]."""
    rundir = RunDir(run_dir)
    config = rundir.config()
    if "monomials" not in config.task.probes:
        raise ConfigError(f"the monomial probe needs a sparse parity run; {rundir.path} has task {config.task.kind!r}")
    bad = [p for p in points if not 0 <= p <= 1]
    if bad:
        raise ConfigError(f"points={bad} are invalid: shares of the student's run in [0, 1]")
    task: Any = rundir.task(config)  # a parity task (the probe's kind registers it): support, n, sample_inputs
    trajectory = Trajectory(rundir.teacher)
    pool = teacher_pool(config, task, trajectory, torch.device("cpu"))
    total = config.student.steps
    degrees = list(range(1, config.task.k + 1))
    out: dict[str, Any] = {
        "settings": {
            "num_samples": num_samples,
            "seed": PROBE_SEED,
            "student_seed": seed,
            "degrees": degrees,
            "distillation_temperature": config.distillation.temperature,
        }
    }
    for sched in config.schedules if schedules is None else schedules:
        if not sched.needs_teacher or sched.teacher_source != "trajectory":
            continue
        resolved = sched.resolve(trajectory).for_seed(seed)
        rows = []
        for p in points:
            step = min(int(round(p * total)), total - 1)
            spec = resolved.teacher_at(step, trajectory.steps, total)
            if spec is None or spec.hint_layer is not None:
                continue
            temperature = teacher_temperature(spec, config.distillation.temperature)
            result = monomial_correlations(
                _class1_probability(pool.get(spec), temperature),
                task,
                num_samples=num_samples,
                degrees=degrees,
                generator=torch.Generator().manual_seed(PROBE_SEED),
            )
            assert isinstance(result, MonomialCorrelations)  # one teacher's (B,) probabilities: one result
            rows.append(
                {
                    "point": p,
                    "student_step": step,
                    "teacher_checkpoint": spec.checkpoint,
                    "temperature": temperature,
                    **spec.describe(),
                    **result.summary(),
                }
            )
        out[sched.label] = rows
        log(
            f"{sched.label}: degree-1 in-support mean "
            + ", ".join(f"{r['point']:g}: {r['degree1/in_support_mean']:.4f}" for r in rows)
        )
    rundir.probes.mkdir(exist_ok=True)
    atomic_write_json(rundir.probes / "curriculum-targets.json", out)
    return out
