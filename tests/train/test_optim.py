import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.core.settings import OptimizerConfig
from progdistill.train.optim import PlainSGDSchedule, learning_rate_factor, make_optimizer


def test_learning_rate_schedules():
    const = learning_rate_factor(OptimizerConfig(), 100)
    assert const(0) == const(99) == 1.0
    cos = learning_rate_factor(OptimizerConfig(lr_schedule="cosine", warmup_fraction=0.1), 100)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    assert all(0 <= cos(t) <= 1 for t in range(101))


@pytest.mark.parametrize("step", [0, 3, 19, 20, 21, 57, 99, 150])
def test_warmup_then_cosine_equals_the_formula(step):
    total, warmup = 100, 20
    cos = learning_rate_factor(OptimizerConfig(lr_schedule="cosine", warmup_fraction=0.2), total)
    if step < warmup:
        expected = (step + 1) / warmup
    else:
        expected = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    assert cos(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_without_warmup_starts_at_the_full_rate():
    cos = learning_rate_factor(OptimizerConfig(lr_schedule="cosine", warmup_fraction=0.0), 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "name, kind, settings",
    [
        ("sgd", torch.optim.SGD, {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.01}),
        ("adam", torch.optim.Adam, {"lr": 0.002, "betas": (0.8, 0.95), "weight_decay": 0.0}),
        ("adamw", torch.optim.AdamW, {"lr": 0.001, "betas": (0.9, 0.98), "weight_decay": 0.1}),
    ],
)
def test_each_optimizer_builds_with_its_settings(name, kind, settings):
    param = torch.nn.Parameter(torch.zeros(3))
    opt, _ = make_optimizer([param], OptimizerConfig(name=name, **settings), 10)
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert group["params"] == [param]
    for key, value in settings.items():
        assert group[key] == value, key


def test_the_scheduler_applies_the_factor_to_the_base_rate():
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = OptimizerConfig(name="sgd", lr=0.5, lr_schedule="cosine", warmup_fraction=0.5)
    opt, sched = make_optimizer([param], cfg, 4)  # warmup 2 steps: factors 0.5, 1, then cosine 1, 0.5
    rates = []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.25, 0.5, 0.5, 0.25])


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(1e-4, 1.0),
    cosine=st.booleans(),
    warmup=st.floats(0.0, 0.5),
    total=st.integers(1, 400),
    blocks=st.lists(st.integers(1, 90), min_size=1, max_size=6),
)
def test_the_hand_written_paths_rates_are_torchs_lambda_lr_bit_for_bit(lr, cosine, warmup, total, blocks):
    cfg = OptimizerConfig(name="sgd", lr=lr, lr_schedule="cosine" if cosine else "constant", warmup_fraction=warmup)
    opt, sched = make_optimizer([torch.zeros(1, requires_grad=True)], cfg, total)
    expected = []
    for _ in range(sum(blocks)):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    schedule = PlainSGDSchedule(cfg, total)
    taken = [rate for n in blocks for rate in schedule.take(n)]
    assert taken == expected  # the same floats, not merely close ones
    assert schedule.lr == opt.param_groups[0]["lr"] and schedule.state_dict() == {"last_epoch": sum(blocks)}
    resumed = PlainSGDSchedule(cfg, total)
    resumed.load_state_dict(sched.state_dict())  # torch's state: its last_epoch
    assert resumed.lr == schedule.lr


def test_a_hand_written_sgd_run_builds_no_torch_optimizer():
    """Building one imports torch._dynamo (~1 s a process): the plain-SGD MLP path has no use for it."""
    code = (
        "import sys\n"
        "from dataclasses import replace\n"
        "from conftest import tiny_config\n"
        "from progdistill.distill.schedules import CE\n"
        "from progdistill.train.loop import Member, fit, generator\n"
        "cfg = tiny_config()\n"
        "train = replace(cfg.student, steps=20, eval_every=10)\n"
        "model = train.model.build(8, 2, [generator(0, 'init')])\n"
        "fit(cfg.task, model, train, [Member('ce', 0, CE())], data_stream='d')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split()[-1] == "False"
