import pytest
import torch

from progdistill.core.settings import OptimizerConfig, TrainConfig
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
    teacher = TrainConfig(
        model=MLPConfig(width=64), optimizer=sgd, steps=steps, batch_size=16, eval_every=50, checkpoint_every=50
    )
    student = TrainConfig(model=MLPConfig(width=16), optimizer=sgd, steps=steps, batch_size=16, eval_every=50)
    return ExperimentConfig(
        preset="tiny",
        task=ParityTask(n=8, k=2, eval_size=256),
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive(), KShot(points=((100, 100), (FINAL, 200)))),
        seeds=seeds,
    )


@pytest.fixture
def tiny():
    return tiny_config()


PLUGIN_SOURCE = """
from dataclasses import dataclass
from typing import ClassVar

from progdistill.core.config import register
from progdistill.distill.schedules import Progressive
from progdistill.tasks.parity import ParityTask


@register("task")
@dataclass(frozen=True)
class MyParity(ParityTask):
    kind: ClassVar[str] = "{name}-task"


@register("schedule")
@dataclass(frozen=True)
class MySchedule(Progressive):
    kind: ClassVar[str] = "{name}-schedule"

    @property
    def label(self):
        return "{name}-schedule"
"""


def write_plugin(directory, name: str):
    """A plugin file ``directory/name.py`` registering task "NAME-task" (sparse parity) and schedule
    "NAME-schedule" (progressive); returns its path."""
    path = directory / f"{name}.py"
    path.write_text(PLUGIN_SOURCE.replace("{name}", name))
    return path


def plugin_config(module, seeds: int = 1, steps: int = 150) -> ExperimentConfig:
    """``tiny_config`` with the task and one schedule of the imported plugin ``module`` (:func:`write_plugin`)."""
    from dataclasses import replace

    base = tiny_config(steps=steps, seeds=seeds)
    return replace(base, task=module.MyParity(n=8, k=2, eval_size=256), schedules=(CE(), module.MySchedule()))


def forget_plugin(name: str) -> None:
    """Undo the import of plugin module ``name``: as in a new process where it is not imported."""
    import sys

    from progdistill.core import config as config_module
    from progdistill.core import plugins

    module = sys.modules.pop(name, None)
    plugins._FILES.pop(name, None)
    for union in config_module._UNIONS.values():
        for kind, cls in list(union.items()):
            if module is not None and cls.__module__ == name:
                del union[kind]
