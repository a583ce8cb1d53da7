"""Edge cases of the loss core (equal inputs, rounding near 0, shape mismatches, tiny and zero temperatures, masked
vocabulary columns) and its properties over random shapes, masks, dtypes and temperatures, against float64
references written from first principles with numpy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.core.settings import DistillationConfig
from progdistill.distill.losses import (
    DIVERGENCES as LOSS_NAMES,
)
from progdistill.distill.losses import (
    IGNORE_INDEX,
    TopKTargets,
    cross_entropy,
    distillation_cross_entropy,
    distillation_loss,
    divergence,
    forward_kl,
    generalized_jsd,
    mixture_weights,
    reverse_kl,
    soft_cross_entropy,
    soft_cross_entropy_and_grad,
    soft_targets,
    teacher_probabilities,
    top_k_divergence,
    top_k_targets,
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
    for kd in DIVERGENCES:
        value = kd(student, teacher, reduction="none")
        assert torch.isfinite(value).all()
        p = _softmax64(np.where(np.isinf(student.detach().numpy()), -np.inf, student.detach().numpy()))
        q = _softmax64(teacher.numpy().astype(np.float64))
        expected = _kl64(q, p) if kd is forward_kl else _kl64(p, q)
        np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-6)
        value.sum().backward()
        assert torch.isfinite(student.grad).all()
        student.grad = None


def test_generalized_jsd_with_a_class_masked_on_both_sides_has_finite_gradients():
    # 0 < beta < 1 took logsumexp over (-inf, -inf) for the masked class: NaN gradients for the whole row.
    student = torch.tensor([[0.0, 1.0, -math.inf, 0.5]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -math.inf, 0.2]])
    value = generalized_jsd(student, teacher, 0.5)
    value.backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 2] == 0
    reduced = generalized_jsd(student.detach()[:, [0, 1, 3]], teacher[:, [0, 1, 3]], 0.5)
    assert value.item() == pytest.approx(reduced.item(), rel=1e-6)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"temperature_scaling": "hinton"}])
def test_a_padded_row_of_minus_inf_at_an_ignored_position_gets_zero_gradient(loss, options):
    # Masking after the log-softmax left NaN gradients at such a row (the HF trainer passes full logits).
    student = torch.tensor([[0.0, 1.0, 2.0], [-math.inf, -math.inf, -math.inf]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.0], [-math.inf, -math.inf, -math.inf]])
    targets = torch.tensor([0, IGNORE_INDEX])
    value = distillation_loss(student, teacher, targets, loss, 2.0, alpha=0.5, **options)
    value.backward()
    assert torch.isfinite(value) and torch.equal(student.grad[1], torch.zeros(3))
    assert torch.isfinite(student.grad).all()
    alone = distillation_loss(student.detach()[:1], teacher[:1], targets[:1], loss, 2.0, alpha=0.5, **options)
    assert value.item() == pytest.approx(alone.item(), rel=1e-6)
    ce = student.detach().clone().requires_grad_(True)
    cross_entropy(ce, targets).backward()
    assert torch.equal(ce.grad[1], torch.zeros(3))


def test_teacher_mass_on_a_class_the_student_masks_is_inf_in_every_form():
    # One rule: forward KL is +inf there (forward_kl gave inf, JSD at beta 0 and top-k k = C 17.99 from a floor).
    student = torch.tensor([[0.0, -math.inf, 1.0]])
    teacher = torch.tensor([[0.0, 0.0, 1.0]])
    values = [
        forward_kl(student, teacher),
        generalized_jsd(student, teacher, 0.0),
        divergence(student, teacher, top_k=3),
        divergence(student, teacher, top_k=3, top_k_mode="renormalized"),
        top_k_divergence(student, top_k_targets(teacher, 3)),
    ]
    target, correction = soft_targets(teacher, torch.tensor([0]), 1.0, *mixture_weights(0.0, torch.tensor([True])))
    values += [soft_cross_entropy(student, target) - correction, soft_cross_entropy_and_grad(student, target)[0]]
    assert all(v.item() == math.inf for v in values), values
    # its gradient in the fused and hand-written forms is the finite limit p - q, as autograd's of forward_kl
    s = student.clone().requires_grad_(True)
    forward_kl(s, teacher).backward()
    q = torch.softmax(teacher, -1)
    torch.testing.assert_close(s.grad, torch.softmax(student, -1) - q)
    torch.testing.assert_close(soft_cross_entropy_and_grad(student, target)[1], s.grad)
    # the reverse direction: student mass on a class the teacher masks
    assert reverse_kl(teacher, student).item() == math.inf
    assert generalized_jsd(teacher, student, 1.0).item() == math.inf
    # a supervised row without a teacher distribution (all -inf) is NaN in every divergence, never a silent 0
    nothing = torch.full((1, 3), -math.inf)
    assert all(math.isnan(divergence(student, nothing, loss).item()) for loss in LOSS_NAMES)
    # a class the target gives 0 adds nothing, whatever its logit (0 * -inf was NaN in the fused forms)
    masked_both = torch.tensor([[0.3, 0.0, 0.7]])
    fused = soft_cross_entropy(student, masked_both)
    assert torch.isfinite(fused).all() and torch.equal(fused, soft_cross_entropy_and_grad(student, masked_both)[0])


def test_top_k_targets_from_a_larger_vocabulary_are_refused_naming_both_sizes():
    # An index outside the student's vocabulary was a raw IndexError (a device-side assert on CUDA).
    cached = top_k_targets(torch.randn(2, 10, generator=torch.Generator().manual_seed(0)), 3)
    with pytest.raises(ValueError, match=r"vocabulary of 10 classes .* student's vocabulary of 5 classes"):
        top_k_divergence(torch.randn(2, 5), cached)
    by_hand = TopKTargets(torch.tensor([[7, 1]]), torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([0.2])))
    with pytest.raises(ValueError, match=r"index class 7, outside the student's vocabulary of 5 classes"):
        top_k_divergence(torch.randn(1, 5), by_hand)
    with pytest.raises(ValueError, match=r"index class -7, outside the student's vocabulary of 5 classes"):
        top_k_divergence(torch.randn(1, 5), TopKTargets(by_hand.indices - 8, by_hand.log_probs, by_hand.tail_log_mass))
    assert torch.isfinite(top_k_divergence(torch.randn(1, 8), by_hand))  # fits a vocabulary of 8


@pytest.mark.parametrize("temperature", [10.0, 20.0])
def test_hinton_kl_at_high_temperature_keeps_its_relative_precision(temperature):
    # T^2-scaled KL at T = 20 lost ~5e-4 relative in float32 (log q - log p cancels); float64 was downcast.
    gen = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(64, 100, generator=gen, dtype=torch.float64)
    teacher = student + 0.9 * torch.randn(64, 100, generator=gen, dtype=torch.float64)
    q, logq = torch.softmax(teacher / temperature, -1), torch.log_softmax(teacher / temperature, -1)
    exact = temperature**2 * (q * (logq - torch.log_softmax(student / temperature, -1))).sum(-1)
    for dtype, tolerance in ((torch.float32, 5e-5), (torch.float64, 1e-10)):
        value = divergence(
            student.to(dtype), teacher.to(dtype), "forward_kl", temperature, None, "none", temperature_scaling="hinton"
        )
        assert value.dtype == dtype
        assert float(((value.double() - exact).abs() / exact).max()) < tolerance


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
