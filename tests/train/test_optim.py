import math

import pytest
import torch

from progdistill.core.settings import OptimizerConfig
from progdistill.train.optim import learning_rate_factor, make_optimizer


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
