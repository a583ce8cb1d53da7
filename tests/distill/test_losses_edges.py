"""Edge cases of the loss core (equal inputs, rounding near 0, shape mismatches, tiny and zero temperatures, masked
vocabulary columns) and its properties over random shapes, masks, dtypes and temperatures, against float64
references written from first principles with numpy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.core.config import DistillationConfig
from progdistill.distill.losses import (
    IGNORE_INDEX,
    distillation_cross_entropy,
    distillation_loss,
    forward_kl,
    mixture_weights,
    reverse_kl,
    teacher_probabilities,
    weighted_distillation_loss,
)

DIVERGENCES = (forward_kl, reverse_kl)


def _softmax64(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl64(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - np.log(p)), 0.0)
    return terms.sum(axis=-1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_of_equal_inputs_is_exactly_zero(divergence):
    rows = [torch.log(torch.tensor([[0.9, 0.1]])), torch.randn(64, 7, generator=torch.Generator().manual_seed(0))]
    for x in rows:
        per_position = divergence(x, x.clone(), reduction="none")
        assert torch.equal(per_position, torch.zeros_like(per_position)), per_position.abs().max()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_is_never_negative(divergence):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 5, generator=gen)
    y = x + 1e-6 * torch.randn(4096, 5, generator=gen)  # nearly equal: rounding decides the sign
    assert bool((divergence(x, y, reduction="none") >= 0).all())


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("shapes", [((2, 3, 5), (2, 1, 5)), ((4,), (6,)), ((3, 5), (3, 4))])
def test_teacher_and_student_shapes_must_match(divergence, shapes):
    student, teacher = torch.zeros(shapes[0]), torch.zeros(shapes[1])
    loss = "forward_kl" if divergence is forward_kl else "reverse_kl"
    weights = mixture_weights(0.5, torch.ones(shapes[0][:-1], dtype=torch.bool))
    targets = torch.zeros(shapes[0][:-1], dtype=torch.long)
    for call in (
        lambda: divergence(student, teacher),
        lambda: distillation_loss(student, teacher, None, loss),
        lambda: distillation_cross_entropy(student, teacher),
        lambda: weighted_distillation_loss(student, teacher, targets, loss, 1.0, *weights),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(tuple(shapes[0])) in str(info.value) and str(tuple(shapes[1])) in str(info.value)


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-38, 1e-30])
def test_tiny_temperatures_are_the_argmax_limit_with_finite_gradients(temperature):
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(8, 6, generator=gen, requires_grad=True)
    teacher = 10 * torch.randn(8, 6, generator=gen)
    loss = forward_kl(student, teacher, temperature=temperature)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    p = _softmax64(student.detach().double().numpy())
    expected = -np.log(p[np.arange(8), teacher.argmax(-1).numpy()]).mean()  # CE on the teacher's argmax
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    q = teacher_probabilities(teacher, temperature)
    assert torch.equal(q, torch.nn.functional.one_hot(teacher.argmax(-1), 6).float())


def test_distillation_config_accepts_every_temperature_from_zero():
    for t in (0.0, 1e-45, 1e-40, 1e-3, 1.0, 1e3):
        assert DistillationConfig(temperature=t).temperature == t


def test_reverse_kl_with_masked_vocabulary_columns_is_finite():
    # a masked vocabulary: the same columns are -inf for both models
    student = torch.tensor([[0.0, 1.0, -math.inf], [2.0, -math.inf, 0.5]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -math.inf], [0.0, -math.inf, 1.0]])
    for divergence in DIVERGENCES:
        value = divergence(student, teacher, reduction="none")
        assert torch.isfinite(value).all()
        p = _softmax64(np.where(np.isinf(student.detach().numpy()), -np.inf, student.detach().numpy()))
        q = _softmax64(teacher.numpy().astype(np.float64))
        expected = _kl64(q, p) if divergence is forward_kl else _kl64(p, q)
        np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-6)
        value.sum().backward()
        assert torch.isfinite(student.grad).all()
        student.grad = None


# -- properties of the loss core ---------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# 0, subnormal float64 (0 in float32), subnormal float32, tiny normal, ordinary and large temperatures
temperatures = st.sampled_from([0.0, 5e-324, 1e-45, 1e-40, 1e-38, 1e-30, 1e-3, 0.5, 1.0, 2.0, 1e3])


@st.composite
def cases(draw):
    batch, length, classes = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    student = scale * torch.randn(batch, length, classes, generator=gen)
    teacher = scale * torch.randn(batch, length, classes, generator=gen)
    targets = torch.randint(classes, (batch, length), generator=gen)
    targets[torch.rand(batch, length, generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))] = IGNORE_INDEX
    padding = (
        scale * torch.randn(batch, draw(st.integers(1, 3)), classes, generator=gen),
        scale * torch.randn(batch, 1, classes, generator=gen),
    )
    return student, teacher, targets, padding, draw(st.sampled_from(DTYPES)), draw(temperatures)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cases(),
    shift=st.floats(-50, 50),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    loss=st.sampled_from(["forward_kl", "reverse_kl"]),
)
def test_loss_core_properties(case, shift, alpha, loss):
    student, teacher, targets, (pad_student, pad_teacher), dtype, temperature = case
    if loss == "reverse_kl" and temperature == 0:
        temperature = 1.0  # reverse KL of a one-hot teacher is infinite by definition: refused (test_losses.py)
    s = student.to(dtype).requires_grad_(True)
    t = teacher.to(dtype)
    value = distillation_loss(s, t, targets, loss, temperature, alpha)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    ignored = targets == IGNORE_INDEX
    assert torch.equal(s.grad[ignored], torch.zeros_like(s.grad[ignored]))  # ignored positions: no gradient

    # reduction="none" then a mean over supervised positions is reduction="mean" (0 where none)
    per_position = distillation_loss(s.detach(), t, targets, loss, temperature, alpha, reduction="none")
    assert torch.isfinite(per_position).all()
    assert torch.equal(per_position[ignored], torch.zeros_like(per_position[ignored]))
    supervised = int((~ignored).sum())
    expected_mean = per_position.sum() / supervised if supervised else torch.tensor(0.0)
    assert torch.allclose(expected_mean, value.detach(), rtol=1e-5, atol=1e-6)

    # divergences: >= 0 everywhere; exactly 0 where the student's logits are the teacher's (at T = 1, and at
    # any T where teacher / T is finite and given to the student)
    kd = forward_kl if loss == "forward_kl" else reverse_kl
    d = kd(s.detach(), t, temperature, targets, reduction="none")
    assert torch.isfinite(d).all() and bool((d >= 0).all())
    assert torch.equal(kd(t, t, 1.0, reduction="none"), torch.zeros(t.shape[:-1]))
    if temperature > 0 and torch.isfinite(t.float() / temperature).all():
        assert torch.equal(kd(t.float() / temperature, t, temperature, reduction="none"), torch.zeros(t.shape[:-1]))

    # adding a constant to the logits changes nothing (float32: in 16 bits the shift itself rounds the logits)
    if dtype == torch.float32:
        shifted = kd(s.detach() + shift, t, temperature, targets, reduction="none")
        assert torch.allclose(shifted, d, rtol=1e-4, atol=1e-4)
        if temperature >= 0.5:  # the teacher's rounding is divided by T
            shifted = kd(s.detach(), t + shift, temperature, targets, reduction="none")
            assert torch.allclose(shifted, d, rtol=1e-4, atol=1e-4)

    # padding: positions appended with IGNORE_INDEX change neither the loss nor the other gradients, and get none
    length, extra = targets.shape[1], pad_student.shape[1]
    padded_s = torch.cat([s.detach(), pad_student.to(dtype)], dim=1).requires_grad_(True)
    padded_t = torch.cat([t, pad_teacher.expand(-1, extra, -1).to(dtype)], dim=1)
    padded_y = torch.cat([targets, torch.full((targets.shape[0], extra), IGNORE_INDEX)], dim=1)
    padded = distillation_loss(padded_s, padded_t, padded_y, loss, temperature, alpha)
    padded.backward()
    assert torch.allclose(padded.detach(), value.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(padded_s.grad[:, length:], torch.zeros_like(padded_s.grad[:, length:]))
    assert torch.allclose(padded_s.grad[:, :length], s.grad, rtol=1e-5, atol=1e-7)
