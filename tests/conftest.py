import pytest
import torch

from progdistill.core.config import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, FINAL, KShot, OneShot, Progressive
from progdistill.experiment import ExperimentConfig
from progdistill.models.mlp import MLPConfig
from progdistill.tasks.parity import ParityTask


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def tiny_config(steps: int = 300, seeds: int = 1) -> ExperimentConfig:
    """The parity-mlp preset shrunk to seconds: n=8, k=2."""
    sgd = OptimizerConfig(name="sgd", lr=0.1)
    teacher = TrainConfig(model=MLPConfig(width=64), optimizer=sgd, steps=steps, batch_size=16, eval_every=50,
                          checkpoint_every=50)
    student = TrainConfig(model=MLPConfig(width=16), optimizer=sgd, steps=steps, batch_size=16, eval_every=50)
    return ExperimentConfig(preset="tiny", task=ParityTask(n=8, k=2, eval_size=256), teacher=teacher,
                            student=student,
                            schedules=(CE(), OneShot(), Progressive(), KShot(points=((100, 100), (FINAL, 200)))),
                            seeds=seeds)


@pytest.fixture
def tiny():
    return tiny_config()
