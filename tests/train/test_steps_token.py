"""One optimizer step of a token task (targets per position): micro-batches must not change the step.

A tiny sequence model (embedding + linear head, (B, L) ids -> (B, L, V) logits) keeps these tests fast and
free of optional dependencies; the BERT version of the gradient check is in tests/tasks/pcfg/test_task_mlm.py."""

import pytest
import torch

from progdistill.core.settings import DistillationConfig, TrainConfig
from progdistill.distill.losses import IGNORE_INDEX, cross_entropy, distillation_loss
from progdistill.models.mlp import MLPConfig
from progdistill.tasks.base import Batch

# The function under test, imported in one place.
from progdistill.train.steps import StepContext, token_step

V, D, B, L = 6, 8, 8, 5
NO_AUTOCAST = torch.autocast("cpu", enabled=False)


class TinySequenceModel(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(V, D, generator=gen))
        self.head = torch.nn.Parameter(torch.randn(D, V, generator=gen) / D**0.5)
        self.calls = 0

    def forward(self, inputs, attention_mask=None):
        self.calls += 1
        return torch.tanh(self.embed[inputs]) @ self.head  # (B, L, V)


def _batch(seed: int, sparse_rows: int = 0) -> Batch:
    """Random ids and next-id targets with a quarter of the positions ignored; the first ``sparse_rows`` rows
    keep only their first target, so micro-batches hold very different numbers of supervised tokens."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, V, (B, L), generator=gen)
    targets = torch.randint(0, V, (B, L), generator=gen)
    targets[torch.rand(B, L, generator=gen) < 0.25] = IGNORE_INDEX
    targets[:sparse_rows, 1:] = IGNORE_INDEX
    return Batch(inputs, targets, torch.ones(B, L, dtype=torch.bool))


def _train(accumulation: int) -> TrainConfig:
    return TrainConfig(model=MLPConfig(width=4), batch_size=B, grad_accumulation=accumulation)


def _step(model, optimizer, batch, teacher, accumulation, distillation) -> float:
    """One whole optimizer step (zero_grad, forward, loss, backward, update); returns the step's loss."""
    return train_token_step(model, batch, teacher, _train(accumulation), distillation, optimizer)


def train_token_step(model, batch, teacher, train, distillation, optimizer=None) -> float:
    """:func:`token_step` on ``model``; without ``optimizer``, plain SGD at learning rate 0, which leaves the
    weights and the step's gradients in place to be inspected."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
    ctx = StepContext(model, optimizer, list(model.parameters()), train, NO_AUTOCAST, torch.device("cpu"))
    return token_step(ctx, batch, teacher, distillation).loss


def _mean_per_token_loss(model, batch, teacher, distillation) -> torch.Tensor:
    """The step's objective written directly: the mean over the batch's supervised tokens."""
    selected = batch.targets != IGNORE_INDEX
    logits = model(*batch.model_inputs)[selected]  # (N, V)
    if teacher is None:
        return cross_entropy(logits, batch.targets[selected])
    with torch.no_grad():
        teacher_logits = teacher(*batch.model_inputs)[selected]
    return distillation_loss(
        logits,
        teacher_logits,
        batch.targets[selected],
        distillation.loss,
        distillation.temperature,
        distillation.alpha,
        **distillation.loss_options(),
    )


DISTILLATIONS = {
    "ce": None,
    "forward_kl": DistillationConfig(temperature=2.0, alpha=0.3),
    "reverse_kl": DistillationConfig(loss="reverse_kl", temperature=1.5, alpha=0.0),
}


@pytest.mark.parametrize("objective", DISTILLATIONS)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_steps_in_micro_batches_equal_steps_on_the_whole_batch(objective, optimizer):
    distillation = DISTILLATIONS[objective] or DistillationConfig()
    teacher = None if DISTILLATIONS[objective] is None else TinySequenceModel(seed=9).requires_grad_(False)
    batches = [_batch(1, sparse_rows=4), _batch(2, sparse_rows=2), _batch(3)]
    results = {}
    for accumulation in (1, 2, 4, 8):
        model = TinySequenceModel(seed=0)
        opt = (
            torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.AdamW(model.parameters(), lr=0.05)
        )
        values = [_step(model, opt, batch, teacher, accumulation, distillation) for batch in batches]
        results[accumulation] = values, [p.detach().clone() for p in model.parameters()]
    whole_values, whole_params = results[1]
    assert not torch.equal(whole_params[0], TinySequenceModel(seed=0).embed)  # the steps did move the model
    for accumulation, (values, params) in results.items():
        assert values == pytest.approx(whole_values, rel=1e-5), accumulation
        for p, q in zip(params, whole_params):
            assert torch.allclose(p, q, atol=1e-5), accumulation


@pytest.mark.parametrize("objective", DISTILLATIONS)
def test_loss_and_gradient_are_the_mean_over_the_steps_supervised_tokens(objective):
    distillation = DISTILLATIONS[objective] or DistillationConfig()
    teacher = None if DISTILLATIONS[objective] is None else TinySequenceModel(seed=9).requires_grad_(False)
    batch = _batch(4, sparse_rows=4)  # micro-batch 1 of 2 holds 4 supervised tokens, micro-batch 2 many more
    model = TinySequenceModel(seed=0)
    value = train_token_step(model, batch, teacher, _train(2), distillation)
    grads = [p.grad.clone() for p in model.parameters()]

    reference = TinySequenceModel(seed=0)
    expected = _mean_per_token_loss(reference, batch, teacher, distillation)
    expected.backward()
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)
    for g, p in zip(grads, reference.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)

    # A mean per micro-batch would weight the 4 tokens of the sparse half like all tokens of the other half:
    # another gradient, so the check above does tell the two normalizations apart.
    per_half = TinySequenceModel(seed=0)
    halves = [_mean_per_token_loss(per_half, batch.rows(slice(i, i + 4)), teacher, distillation) for i in (0, 4)]
    (sum(halves) / 2).backward()
    assert not all(torch.allclose(g, p.grad, atol=1e-3) for g, p in zip(grads, per_half.parameters()))


def test_micro_batches_without_supervised_tokens_are_skipped():
    batch = _batch(5)
    targets = batch.targets.clone()
    targets[:4] = IGNORE_INDEX  # micro-batch 1 of 2: nothing to learn
    batch = batch.with_targets(targets)
    model, teacher = TinySequenceModel(seed=0), TinySequenceModel(seed=9).requires_grad_(False)
    value = train_token_step(model, batch, teacher, _train(2), DistillationConfig(alpha=0.5))
    assert model.calls == 1 and teacher.calls == 1  # only the micro-batch with targets ran
    expected = _mean_per_token_loss(
        TinySequenceModel(seed=0), batch.rows(slice(4, 8)), teacher, DistillationConfig(alpha=0.5)
    )
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)


def test_a_step_without_supervised_tokens_leaves_no_gradient():
    batch = _batch(6)
    batch = batch.with_targets(torch.full_like(batch.targets, IGNORE_INDEX))
    model = TinySequenceModel(seed=0)
    assert train_token_step(model, batch, None, _train(2), DistillationConfig()) == 0.0
    assert all(p.grad is None for p in model.parameters())


def test_a_non_finite_loss_is_returned_and_not_backpropagated():
    model = TinySequenceModel(seed=0)
    with torch.no_grad():
        model.head[0, 0] = float("nan")
    value = train_token_step(model, _batch(7), None, _train(2), DistillationConfig())
    assert value != value  # NaN reaches the caller, which stops or skips the step
    assert all(p.grad is None for p in model.parameters())
