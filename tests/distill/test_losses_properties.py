"""Properties of every divergence over random logits, -inf patterns (masked vocabularies), ignored positions and
dtypes: finite losses and gradients wherever the divergence is finite, the value of the same divergence on the
vocabulary without the masked classes, exactly zero gradient at ignored positions whatever their logits, and one
value per divergence across its forms (plain, generalized JSD at its endpoints, top-k with k = C, fused, the
hand-written gradient), +inf included."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.distill.losses import (
    IGNORE_INDEX,
    divergence,
    forward_kl,
    generalized_jsd,
    mixture_weights,
    reverse_kl,
    soft_cross_entropy,
    soft_cross_entropy_and_grad,
    soft_targets,
    top_k_divergence,
    top_k_targets,
)

INF = math.inf
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every divergence and form: (loss, options) for divergence(); k = None in top-k means "a k drawn per example".
FORMS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    *[("generalized_jsd", {"beta": beta}) for beta in (0.0, 0.1, 0.5, 0.9, 1.0)],
    ("total_variation", {}),
    ("forward_kl", {"temperature_scaling": "hinton"}),
    ("reverse_kl", {"temperature_scaling": "hinton"}),
    ("generalized_jsd", {"beta": 0.5, "temperature_scaling": "hinton"}),
    ("forward_kl", {"top_k": None, "top_k_mode": "tail_bucket"}),
    ("forward_kl", {"top_k": None, "top_k_mode": "renormalized"}),
    ("reverse_kl", {"top_k": None, "top_k_mode": "tail_bucket"}),
    ("generalized_jsd", {"beta": 0.5, "top_k": None, "top_k_mode": "tail_bucket"}),
    ("total_variation", {"top_k": None, "top_k_mode": "renormalized"}),
]
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _with_k(options: dict, k: int) -> dict:
    return {**options, "top_k": k} if "top_k" in options else options


def _temperature(loss: str, options: dict, temperature: float) -> float:
    reverse = loss == "reverse_kl" or (loss == "generalized_jsd" and options.get("beta") == 1.0)
    if temperature == 0 and (reverse or options.get("temperature_scaling") == "hinton"):
        return 1.0  # refused by definition (test_losses.py): a one-hot teacher, or nothing to divide by
    return temperature


@st.composite
def masked_cases(draw):
    """Student and teacher logits (B, C) with the same columns -inf on both sides (a masked vocabulary), at
    least two columns left; the columns kept; targets with ignored positions."""
    rows, classes = draw(st.integers(1, 5)), draw(st.integers(3, 9))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    student = scale * torch.randn(rows, classes, generator=gen, dtype=torch.float64)
    teacher = scale * torch.randn(rows, classes, generator=gen, dtype=torch.float64)
    keep = torch.rand(classes, generator=gen) < draw(st.sampled_from([0.3, 0.6, 0.9]))
    keep[torch.randperm(classes, generator=gen)[:2]] = True
    student[:, ~keep] = -INF
    teacher[:, ~keep] = -INF
    targets = torch.randint(classes, (rows,), generator=gen)
    targets[torch.rand(rows, generator=gen) < 0.3] = IGNORE_INDEX
    return student, teacher, keep, targets


@SETTINGS
@given(
    case=masked_cases(),
    form=st.sampled_from(FORMS),
    dtype=st.sampled_from(DTYPES),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    k_share=st.floats(0.0, 1.0),
)
def test_a_masked_vocabulary_is_the_vocabulary_without_those_classes(case, form, dtype, temperature, k_share):
    student, teacher, keep, targets = case
    loss, options = form
    temperature = _temperature(loss, options, temperature)
    k = 1 + int(k_share * (int(keep.sum()) - 1))  # at most the classes kept: then the masked ones are the tail
    options = _with_k(options, k)
    s = student.to(dtype).clone().requires_grad_(True)
    value = divergence(s, teacher.to(dtype), loss, temperature, targets, "none", **options)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(s.grad).all()
    assert torch.equal(s.grad[:, ~keep], torch.zeros_like(s.grad[:, ~keep]))  # masked classes: no gradient
    reduced = s.detach()[:, keep].clone().requires_grad_(True)
    expected = divergence(reduced, teacher.to(dtype)[:, keep], loss, temperature, targets, "none", **options)
    expected.sum().backward()
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(value.detach(), expected.detach(), **tolerance)
    torch.testing.assert_close(s.grad[:, keep], reduced.grad, **tolerance)


def _reference_forward_kl(student: torch.Tensor, teacher: torch.Tensor) -> np.ndarray:
    """KL(q || p) from first principles in long double: classes with q = 0 contribute 0, a class with q > 0 = p
    makes it inf."""
    s, t = (x.detach().double().numpy().astype(np.longdouble) for x in (student, teacher))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logp = s - s.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        logq = t - t.max(-1, keepdims=True)
        logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
        terms = np.where(np.isneginf(logq), 0.0, np.exp(logq) * (logq - logp))
    return terms.sum(-1).astype(np.float64)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(3, 8), dtype=st.sampled_from(DTYPES))
def test_classes_masked_by_the_teacher_alone_keep_forward_kl_finite(seed, classes, dtype):
    """A class -inf in the teacher alone: forward KL (and its JSD endpoint, top-k forms, JSD inside (0, 1) and
    total variation) stay finite with finite gradients; forward KL equals its first-principles value."""
    gen = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(4, classes, generator=gen, dtype=torch.float64)
    teacher = 2 * torch.randn(4, classes, generator=gen, dtype=torch.float64)
    teacher[torch.rand(4, classes, generator=gen) < 0.4] = -INF
    teacher[:, 0] = 0.0  # every teacher keeps a class
    student[torch.rand(4, classes, generator=gen) < 0.2] = -INF  # where the teacher masks too, or not at all
    student[torch.isfinite(teacher)] = torch.where(
        torch.isinf(student[torch.isfinite(teacher)]), 0.0, student[torch.isfinite(teacher)]
    )
    forms = [f for f in FORMS if f[0] in ("forward_kl", "total_variation") or 0 <= f[1].get("beta", 1) < 1]
    for loss, options in forms:
        if options.get("temperature_scaling") == "hinton":
            continue
        s = student.to(dtype).clone().requires_grad_(True)
        value = divergence(s, teacher.to(dtype), loss, 1.0, None, "none", **_with_k(options, classes))
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(s.grad).all(), (loss, options)
    value = forward_kl(student.to(dtype), teacher.to(dtype), reduction="none")
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    expected = _reference_forward_kl(student.to(dtype), teacher.to(dtype))
    np.testing.assert_allclose(value.double().numpy(), expected, rtol=tolerance, atol=tolerance)


@st.composite
def rows_with_ignored_positions(draw):
    rows, classes = draw(st.integers(2, 6)), draw(st.integers(2, 7))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    student = 3 * torch.randn(rows, classes, generator=gen)
    teacher = 3 * torch.randn(rows, classes, generator=gen)
    targets = torch.randint(classes, (rows,), generator=gen)
    ignored = torch.rand(rows, generator=gen) < 0.5
    ignored[0] = False
    targets[ignored] = IGNORE_INDEX
    # What an ignored row may hold: all -inf (padding), NaN, overflowing or ordinary logits.
    garbage = draw(st.sampled_from([-INF, math.nan, 3e38, None]))
    if garbage is not None:
        student[ignored] = garbage
        teacher[ignored] = draw(st.sampled_from([-INF, math.nan, garbage]))
    return student, teacher, targets, ignored


@SETTINGS
@given(case=rows_with_ignored_positions(), form=st.sampled_from(FORMS), dtype=st.sampled_from(DTYPES))
def test_ignored_positions_get_exactly_zero_gradient_whatever_their_logits(case, form, dtype):
    student, teacher, targets, ignored = case
    loss, options = form
    options = _with_k(options, student.shape[-1])
    temperature = _temperature(loss, options, 1.0)
    s = student.to(dtype).clone().requires_grad_(True)
    per_position = divergence(s, teacher.to(dtype), loss, temperature, targets, "none", **options)
    mean = divergence(s, teacher.to(dtype), loss, temperature, targets, "mean", **options)
    mean.backward()
    assert torch.isfinite(mean) and torch.isfinite(s.grad).all()
    assert torch.equal(s.grad[ignored], torch.zeros_like(s.grad[ignored]))
    assert torch.equal(per_position[ignored], torch.zeros_like(per_position[ignored]))
    # The supervised rows alone give the same values and gradients.
    kept = s.detach()[~ignored].clone().requires_grad_(True)
    alone = divergence(kept, teacher.to(dtype)[~ignored], loss, temperature, None, "mean", **options)
    alone.backward()
    torch.testing.assert_close(mean.detach(), alone.detach())
    torch.testing.assert_close(s.grad[~ignored], kept.grad)


@SETTINGS
@given(case=rows_with_ignored_positions(), alpha=st.sampled_from([0.0, 0.5, 1.0]))
def test_ignored_positions_in_the_fused_and_hand_written_forms(case, alpha):
    student, teacher, targets, ignored = case
    weights = mixture_weights(alpha, torch.ones(targets.shape, dtype=torch.bool))
    target, correction = soft_targets(teacher, targets, 1.0, *weights)
    assert torch.isfinite(target).all() and torch.isfinite(correction).all()
    s = student.clone().requires_grad_(True)
    fused = soft_cross_entropy(s, target)
    fused.sum().backward()
    hand_loss, hand_grad = soft_cross_entropy_and_grad(student, target)
    for loss_, grad in ((fused.detach(), s.grad), (hand_loss, hand_grad)):
        assert torch.isfinite(loss_).all() and torch.isfinite(grad).all()
        assert torch.equal(loss_[ignored], torch.zeros_like(loss_[ignored]))
        assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))
    torch.testing.assert_close(hand_grad, s.grad)
    torch.testing.assert_close(hand_loss, fused.detach())


@st.composite
def any_masks(draw):
    """Logits (B, C) with independent -inf patterns on each side (every row keeps a class on each side), so
    that some rows have teacher mass on a class the student masks (forward KL +inf), or the reverse."""
    rows, classes = draw(st.integers(1, 6)), draw(st.integers(2, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    student = 2 * torch.randn(rows, classes, generator=gen)
    teacher = 2 * torch.randn(rows, classes, generator=gen)
    share = draw(st.sampled_from([0.0, 0.2, 0.5]))
    for x in (student, teacher):
        x[torch.rand(rows, classes, generator=gen) < share] = -INF
        x[torch.arange(rows), torch.randint(classes, (rows,), generator=gen)] = 0.0
    return student, teacher, draw(st.sampled_from([torch.float32, torch.float64]))


def _value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    value = fn(x)
    value.sum().backward()
    return value.detach(), x.grad


def _assert_same(a, b, **tolerance):
    """Equal values (to rounding), infinities in the same places."""
    assert torch.equal(torch.isinf(a), torch.isinf(b)), (a, b)
    torch.testing.assert_close(a, b, **tolerance)


@SETTINGS
@given(case=any_masks(), temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
def test_forward_kl_has_one_value_in_every_form(case, temperature):
    """forward_kl = generalized JSD at beta 0 = top-k with k = C in both modes = the fused form = the hand-written
    one, infinities included; their gradients agree wherever the value is finite."""
    student, teacher, dtype = case
    s, t = student.to(dtype), teacher.to(dtype)
    C = s.shape[-1]
    plain, plain_grad = _value_and_grad(lambda x: forward_kl(x, t, temperature, reduction="none"), s)
    finite = torch.isfinite(plain)
    assert torch.isfinite(plain_grad[finite]).all()
    forms = {
        "jsd0": lambda x: generalized_jsd(x, t, 0.0, temperature, reduction="none"),
        "tail_bucket": lambda x: top_k_divergence(x, top_k_targets(t, C, temperature, "tail_bucket"), reduction="none"),
        "renormalized": lambda x: top_k_divergence(
            x, top_k_targets(t, C, temperature, "renormalized"), reduction="none"
        ),
        "divergence": lambda x: divergence(x, t, "forward_kl", temperature, top_k=C, reduction="none"),
    }
    for name, fn in forms.items():
        value, grad = _value_and_grad(fn, s)
        _assert_same(value, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad[finite], plain_grad[finite], rtol=1e-5, atol=1e-5, msg=name)
    # The fused form, alpha = 0: soft cross-entropy against q minus H(q); and the hand-written gradient.
    labels = torch.zeros(s.shape[:-1], dtype=torch.long)
    target, correction = soft_targets(t, labels, temperature, *mixture_weights(0.0, torch.ones_like(labels).bool()))
    fused, fused_grad = _value_and_grad(lambda x: soft_cross_entropy(x, target) - correction, s)
    _assert_same(fused, plain, rtol=1e-4, atol=1e-5)
    hand_loss, hand_grad = soft_cross_entropy_and_grad(s, target)
    _assert_same(hand_loss - correction, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_grad[finite], plain_grad[finite], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hand_grad[finite], plain_grad[finite], rtol=1e-5, atol=1e-6)
    # Where infinite, the fused and hand-written gradients are the finite limit p - q, as the plain form's.
    torch.testing.assert_close(hand_grad, fused_grad, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(case=any_masks(), temperature=st.sampled_from([0.5, 1.0, 3.0]))
def test_reverse_kl_has_one_value_in_every_form(case, temperature):
    """reverse_kl = generalized JSD at beta 1 = top-k tail-bucket with k = C, infinities included."""
    student, teacher, dtype = case
    s, t = student.to(dtype), teacher.to(dtype)
    plain, plain_grad = _value_and_grad(lambda x: reverse_kl(x, t, temperature, reduction="none"), s)
    finite = torch.isfinite(plain)
    assert torch.isfinite(plain_grad[finite]).all()
    top = top_k_targets(t, s.shape[-1], temperature, "tail_bucket")
    for fn in (
        lambda x: generalized_jsd(x, t, 1.0, temperature, reduction="none"),
        lambda x: top_k_divergence(x, top, "reverse_kl", reduction="none"),
    ):
        value, grad = _value_and_grad(fn, s)
        _assert_same(value, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad[finite], plain_grad[finite], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(case=any_masks(), beta=st.floats(0.01, 0.99), temperature=st.sampled_from([0.0, 1.0, 3.0]))
def test_jsd_inside_the_endpoints_and_total_variation_are_finite_for_any_masks(case, beta, temperature):
    student, teacher, dtype = case
    for fn in (
        lambda x: generalized_jsd(x, teacher.to(dtype), beta, temperature, reduction="none"),
        lambda x: divergence(x, teacher.to(dtype), "total_variation", temperature, reduction="none"),
    ):
        value, grad = _value_and_grad(fn, student.to(dtype))
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
        assert bool((value >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), classes=st.sampled_from([2, 10, 100]), temperature=st.sampled_from([8.0, 20]))
def test_small_divergences_at_high_temperature_keep_their_relative_precision(dtype, seed, classes, temperature):
    """The T^2-scaled KL at a high temperature is small (~1e-4 before scaling) and was lost to cancellation: now
    within 4 epsilon / sqrt(KL) relative (the plain formula: ~epsilon log C / KL, up to 4e-3) of a long-double
    reference, both directions, float64 kept in float64."""
    gen = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(16, classes, generator=gen, dtype=torch.float64)
    teacher = student + torch.randn(16, classes, generator=gen, dtype=torch.float64)
    s, t = student.to(dtype), teacher.to(dtype)
    for loss in ("forward_kl", "reverse_kl"):
        value = divergence(s, t, loss, temperature, reduction="none", temperature_scaling="hinton")
        assert value.dtype == dtype
        a, b = (s / temperature, t / temperature) if loss == "reverse_kl" else (t / temperature, s / temperature)
        expected = temperature**2 * _reference_forward_kl(b, a)
        # The stated bound: relative error ~ epsilon / sqrt(KL) (KL before the T^2), plus the rounding of the
        # logits' differences; float64 down to the long-double reference's own limit: its plain formula cancels
        # terms of size ~log C, so it is off by a few long-double epsilons absolute (2.7e-6 relative at KL ~1e-14,
        # where an mpmath reference at 60 digits agrees with the loss to 1e-9).
        eps = torch.finfo(dtype).eps
        kl = expected / temperature**2
        reference_floor = 4 * float(np.finfo(np.longdouble).eps) * np.log(classes)
        floor = reference_floor if dtype == torch.float64 else 1e-11
        bound = temperature**2 * (4 * eps * np.sqrt(kl) + 10 * eps * kl + floor)
        if dtype == torch.float64:
            bound = np.maximum(bound, 1e-9 * expected)
        error = np.abs(value.double().numpy() - expected)
        assert (error <= bound).all(), (error / expected).max()
