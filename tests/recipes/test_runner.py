"""A new task and a new model defined outside the package run end to end: the runner, the run directory, the
report and the probes' registry know them through the Task protocol and the model config alone."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from progdistill.core.config import check_positive_int, register
from progdistill.core.settings import OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE, OneShot, Progressive
from progdistill.experiment import ExperimentConfig
from progdistill.recipes.runner import run
from progdistill.store.rundir import RunDir
from progdistill.tasks.base import Batch, Task, TaskBase


@register("task")
@dataclass(frozen=True)
class MajorityTask(TaskBase):
    """x uniform on {-1, +1}^n; the label is 1 when most of the first 3 bits are +1."""

    kind: ClassVar[str] = "test-majority3"

    n: int = 6
    eval_size: int = 512
    eval_seed: int = 7

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def input_size(self) -> int:
        return self.n

    def sample_inputs(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, (count, self.n), generator=generator).float().mul_(2).sub_(1)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return (x[..., :3].sum(dim=-1) > 0).long()

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.sample_inputs(self.eval_size, torch.Generator().manual_seed(self.eval_seed))
        return x, self.labels(x)

    def sample_batch(self, count: int, generator: torch.Generator) -> Batch:
        x = self.sample_inputs(count, generator)
        return Batch(x, self.labels(x))

    def eval_batches(self) -> list[Batch]:
        return [Batch(*self.eval_set())]


@register("model")
@dataclass(frozen=True)
class TinyMLPConfig:
    kind: ClassVar[str] = "test-tiny-mlp"
    stackable: ClassVar[bool] = False

    width: int = 16

    def __post_init__(self):
        check_positive_int("model.width", self.width)

    def build(self, input_size: int, num_classes: int, generators: Sequence[torch.Generator]) -> "TinyMLP":
        return TinyMLP(input_size, num_classes, self.width, generators[0])


class TinyMLP(nn.Module):
    """A stack of one: x (B, n) -> logits (1, B, C)."""

    def __init__(self, input_size: int, num_classes: int, width: int, generator: torch.Generator):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed())
            self.net = nn.Sequential(nn.Linear(input_size, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unsqueeze(0)  # (1, B, C)


def test_a_task_and_model_defined_outside_the_package_run_end_to_end(tmp_path):
    assert isinstance(MajorityTask(), Task)
    sgd = OptimizerConfig(name="sgd", lr=0.2)
    teacher = TrainConfig(
        model=TinyMLPConfig(width=32), optimizer=sgd, steps=300, batch_size=32, eval_every=50, checkpoint_every=50
    )
    student = TrainConfig(model=TinyMLPConfig(width=8), optimizer=sgd, steps=200, batch_size=32, eval_every=50)
    config = ExperimentConfig(
        preset="majority",
        task=MajorityTask(),
        teacher=teacher,
        student=student,
        schedules=(CE(), OneShot(), Progressive()),
        seeds=2,
    )
    out = tmp_path / "run"
    results = run(config, out, log=lambda *a: None)

    assert results["teacher"]["final_accuracy"] > 0.9
    assert len(results["students"]) == 6  # 3 schedules x 2 seeds
    assert {s["schedule"] for s in results["students"]} == {"ce", "one-shot", "progressive"}
    assert all(s["final_accuracy"] > 0.6 for s in results["students"])
    assert json.loads((out / "results.json").read_text()) == results
    assert "| progressive |" in (out / "summary.md").read_text()
    assert RunDir(out).config() == config  # config.json loads back into the test's own task and model types
    model = RunDir(out).load_model(config, "one-shot-seed1")
    assert isinstance(model, TinyMLP) and not model.training
