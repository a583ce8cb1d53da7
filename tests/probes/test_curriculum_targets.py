import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from progdistill.core.config import ConfigError
from progdistill.core.files import atomic_write_json
from progdistill.distill.schedules import CE, OneShot, Progressive
from progdistill.probes.curriculum_targets import _class1_probability, probe_curriculum_targets
from progdistill.recipes.runner import train_teacher


def quiet(*args):
    pass


class _Logits(torch.nn.Module):
    """A planted stack of one: logits (1, B, 2) = (0, x[:, 0])."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), x[:, 0]], dim=-1).unsqueeze(0)


def test_the_target_is_the_class_1_probability_at_the_temperature():
    x = torch.tensor([[0.0, 5.0], [2.0, 0.0], [-2.0, 1.0]])
    assert _class1_probability(_Logits(), 1.0)(x).tolist() == pytest.approx(torch.sigmoid(x[:, 0]).tolist())
    assert _class1_probability(_Logits(), 2.0)(x).tolist() == pytest.approx(torch.sigmoid(x[:, 0] / 2).tolist())
    assert _class1_probability(_Logits(), 0.0)(x)[1:].tolist() == [1.0, 0.0]  # T = 0: the argmax


def _short_config():
    config = tiny_config()
    return replace(
        config,
        teacher=replace(config.teacher, steps=100),
        student=replace(config.student, steps=100),
        schedules=(CE(), OneShot(), Progressive()),
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    short = _short_config()
    train_teacher(short, out, device="cpu", log=quiet, report_to=())  # what the probe reads: the teacher
    atomic_write_json(out / "config.json", short.to_dict())
    return out


@pytest.mark.e2e  # trains a teacher: seconds
def test_every_distillation_schedule_is_probed_at_every_point(short_run):
    out = probe_curriculum_targets(short_run, points=(0.0, 0.5, 1.0), num_samples=512, log=quiet)
    assert json.loads((short_run / "probes" / "curriculum-targets.json").read_text()) == out
    assert set(out) == {"settings", "one-shot", "progressive"}  # ce has no teacher
    assert out["settings"]["degrees"] == [1, 2] and out["settings"]["num_samples"] == 512
    assert [r["student_step"] for r in out["progressive"]] == [0, 50, 99]  # point 1 is the last step
    assert {r["teacher_checkpoint"] for r in out["one-shot"]} == {100}  # the final checkpoint throughout
    assert [r["teacher_checkpoint"] for r in out["progressive"]] == sorted(
        r["teacher_checkpoint"] for r in out["progressive"]
    )
    for rows in (out["one-shot"], out["progressive"]):
        assert all(0 <= r["degree1/in_support_mean"] <= 1 and "degree2/off_support_mean" in r for r in rows)
    # one-shot's target does not change over the run; the same teacher gives the same correlations
    assert len({r["degree1/in_support_mean"] for r in out["one-shot"]}) == 1


def test_points_outside_zero_one_are_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_write_json(run_dir / "config.json", _short_config().to_dict())
    with pytest.raises(ConfigError, match=r"points=\[1.5, -0.1\] are invalid: shares of the student's run in \[0, 1\]"):
        probe_curriculum_targets(run_dir, points=(0.0, 1.5, -0.1), log=quiet)
    assert [p.name for p in run_dir.iterdir()] == ["config.json"]
