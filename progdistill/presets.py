"""Named experiments. A preset is a function returning an :class:`ExperimentConfig`; a new experiment is a
new preset, never an edit of the training loop."""

from __future__ import annotations

from typing import Callable

from .config import ConfigError, DistillationConfig, OptimizerConfig, TrainConfig
from .experiment import ExperimentConfig
from .mlp import MLPConfig
from .parity import ParityTask
from .schedules import CE, FINAL, KShot, OneShot, Progressive, TwoShotAuto

PRESETS: dict[str, tuple[str, Callable[[], ExperimentConfig]]] = {}


def preset(name: str, description: str):
    def wrap(fn):
        PRESETS[name] = (description, fn)
        return fn

    return wrap


def get_preset(name: str) -> ExperimentConfig:
    """The config of preset ``name``; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)} (see `progdistill list`)")
    return PRESETS[name][1]()


@preset("parity-mlp", "sparse parity (n=50, k=5), MLP teacher width 2000 -> students width 100; CPU, minutes")
def parity_mlp() -> ExperimentConfig:
    sgd = OptimizerConfig(name="sgd", lr=0.05)
    teacher = TrainConfig(model=MLPConfig(width=2000), optimizer=sgd, steps=50_000, batch_size=32,
                          eval_every=1000, checkpoint_every=1000, seed=0)
    student = TrainConfig(model=MLPConfig(width=100), optimizer=sgd, steps=60_000, batch_size=32,
                          eval_every=1000, checkpoint_every=1000, seed=0)
    # 2-shot: the checkpoint in the middle of the teacher's transition (step 31,000, eval accuracy 0.76; the
    # teacher jumps from 0.5 at 29k to 0.95 at 34k), then the final checkpoint.
    two_shot = KShot(points=((31_000, 20_000), (FINAL, 40_000)))
    # T = 0.5 sharpens the mid-transition teacher's weak low-degree signal (tuning record in the README).
    return ExperimentConfig(preset="parity-mlp", task=ParityTask(n=50, k=5), teacher=teacher, student=student,
                            distillation=DistillationConfig(temperature=0.5),
                            schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot,
                                       TwoShotAuto(first_steps=20_000)), seeds=3)


@preset("parity-mlp-paper", "sparse parity at paper scale (n=100, k=6, widths 50,000 -> 100, batch 1, "
                            "20M steps); GPU")
def parity_mlp_paper() -> ExperimentConfig:
    sgd = OptimizerConfig(name="sgd", lr=0.01)
    teacher = TrainConfig(model=MLPConfig(width=50_000), optimizer=sgd, steps=20_000_000, batch_size=1,
                          eval_every=100_000, checkpoint_every=100_000, seed=0)
    student = TrainConfig(model=MLPConfig(width=100), optimizer=sgd, steps=20_000_000, batch_size=1,
                          eval_every=100_000, checkpoint_every=100_000, seed=0)
    two_shot = KShot(points=((10_300_000, 4_000_000), (FINAL, 16_000_000)))
    return ExperimentConfig(preset="parity-mlp-paper", task=ParityTask(n=100, k=6), teacher=teacher,
                            student=student, schedules=(CE(), OneShot(), Progressive(speed=1.0), two_shot),
                            seeds=3)
