"""The stacked one-label step: one whole optimizer step, as autograd and SGD would take it by hand."""

import copy

import torch

from progdistill.core.settings import DistillationConfig, TrainConfig
from progdistill.distill.losses import mixture_weights
from progdistill.models.mlp import MLPConfig
from progdistill.train.steps import StackObjective, StepContext, stack_step

MODEL = MLPConfig(width=8)


def _stack():
    return MODEL.build(5, 2, [torch.Generator().manual_seed(s) for s in (0, 1)])  # M = 2


def _context(model, lr=0.1, on_non_finite="stop"):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train = TrainConfig(model=MODEL, on_non_finite=on_non_finite)
    return StepContext(
        model, opt, list(model.parameters()), train, torch.autocast("cpu", enabled=False), torch.device("cpu")
    )


def _objective(labels):
    has_teacher = torch.zeros(1, 2, 1, dtype=torch.bool)
    ce_weight, kd_weight = mixture_weights(0.0, has_teacher)
    return StackObjective(labels[None], None, 1.0, ce_weight, kd_weight, DistillationConfig(), fused=True)


def test_a_stack_step_is_the_sgd_update_of_the_sum_of_each_models_mean_loss():
    gen = torch.Generator().manual_seed(3)
    x, labels = torch.randn(4, 5, generator=gen), torch.randint(0, 2, (2, 4), generator=gen)  # (B, n), (M, B)
    model = _stack()
    expected = copy.deepcopy(model)
    result = stack_step(_context(model), x, lambda logits: _objective(labels).loss(0, logits))
    per_example = torch.nn.functional.cross_entropy(expected(x).flatten(0, 1), labels.flatten(), reduction="none").view(
        2, 4
    )
    per_example.mean(dim=1).sum().backward()
    with torch.no_grad():
        for param in expected.parameters():
            param.sub_(0.1 * param.grad)
    assert result.bad is None and torch.allclose(result.loss, per_example.detach().mean(dim=1))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), expected.parameters()))


def test_a_non_finite_loss_takes_no_step_and_names_the_model():
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(4))  # (M, B, n): one input per model
    x[1, 0, 0] = float("nan")
    model = _stack()
    before = copy.deepcopy(model.state_dict())
    labels = torch.zeros(2, 4, dtype=torch.long)
    result = stack_step(_context(model, on_non_finite="skip"), x, lambda logits: _objective(labels).loss(0, logits))
    assert result.bad == "training loss" and result.culprits == [1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
