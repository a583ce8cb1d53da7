import math

import pytest
import torch

from progdistill.distill.losses import (
    IGNORE_INDEX,
    cross_entropy,
    distillation_cross_entropy,
    distillation_loss,
    forward_kl,
    hard_targets,
    mixture_weights,
    reverse_kl,
    soft_cross_entropy,
    soft_cross_entropy_and_grad,
    soft_targets,
    teacher_probabilities,
    weighted_distillation_loss,
)

# Hand-computed case: student logits [0, ln 3] -> p = [1/4, 3/4]; teacher logits [0, 0] -> q = [1/2, 1/2].
S = torch.tensor([[0.0, math.log(3.0)]])
T0 = torch.tensor([[0.0, 0.0]])


def test_cross_entropy_by_hand():
    assert cross_entropy(S, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    assert cross_entropy(S, torch.tensor([0])).item() == pytest.approx(math.log(4.0))


def test_distillation_cross_entropy_and_forward_kl_by_hand():
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert distillation_cross_entropy(S, T0).item() == pytest.approx(ce)
    assert forward_kl(S, T0).item() == pytest.approx(kl)
    # forward KL = distillation CE - teacher entropy
    assert ce - kl == pytest.approx(math.log(2.0))


def test_reverse_kl_by_hand():
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert reverse_kl(S, T0).item() == pytest.approx(rkl)


def test_temperature_scales_teacher():
    t = torch.tensor([[0.0, math.log(3.0)]])  # softmax at T=1: [1/4, 3/4]; at T=2: [1/(1+sqrt3), sqrt3/(1+sqrt3)]
    q = teacher_probabilities(t, 2.0)[0]
    assert q[1].item() == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))
    assert torch.equal(teacher_probabilities(t, 0.0), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_temperature_zero_is_argmax_cross_entropy_and_finite(dtype):
    student = torch.tensor([[2.0, -1.0, 0.5], [0.0, 30.0, -30.0]], dtype=dtype)
    teacher = torch.tensor([[1.0, 5.0, 2.0], [60000.0, -60000.0, 0.0]], dtype=dtype)
    hard = distillation_cross_entropy(student, teacher, temperature=0.0)
    expected = cross_entropy(student, teacher.float().argmax(-1))
    assert torch.isfinite(hard) and hard.item() == pytest.approx(expected.item(), rel=1e-5)
    for tiny_t in (1e-4, 1e-30):
        soft = distillation_cross_entropy(student, teacher, temperature=tiny_t)
        kl = forward_kl(student, teacher, temperature=tiny_t)
        assert torch.isfinite(soft) and torch.isfinite(kl)
        assert soft.item() == pytest.approx(expected.item(), rel=1e-4)


def test_extreme_student_logits_stay_finite():
    student = torch.tensor([[1e4, -1e4]], dtype=torch.float16)
    teacher = torch.tensor([[10.0, -10.0]])
    assert torch.isfinite(forward_kl(student, teacher, temperature=0.0))
    assert torch.isfinite(distillation_cross_entropy(student, teacher, temperature=0.0))


def test_ignored_targets_are_excluded_and_normalized_per_supervised_target():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([1, IGNORE_INDEX, 0])
    expected = (-math.log(0.75) + math.log(4.0)) / 2
    assert cross_entropy(logits, targets).item() == pytest.approx(expected)
    teacher = torch.zeros(3, 2)
    kd = forward_kl(logits, teacher, targets=targets, reduction="none")
    assert kd[1].item() == 0.0
    assert forward_kl(logits, teacher, targets=targets).item() == pytest.approx((kd[0] + kd[2]).item() / 2)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(4, 3)
    targets = torch.full((4,), IGNORE_INDEX)
    for value in (
        cross_entropy(logits, targets),
        forward_kl(logits, torch.randn(4, 3), targets=targets),
        reverse_kl(logits, torch.randn(4, 3), targets=targets),
        distillation_loss(logits, torch.randn(4, 3), targets, alpha=0.5),
    ):
        assert value.item() == 0.0


def test_alpha_mixes_cross_entropy():
    target = torch.tensor([1])
    mixed = distillation_loss(S, T0, target, alpha=0.25)
    assert mixed.item() == pytest.approx(0.25 * cross_entropy(S, target).item() + 0.75 * forward_kl(S, T0).item())


def test_loss_errors():
    with pytest.raises(ValueError, match="reverse KL"):
        reverse_kl(S, T0, temperature=0.0)
    with pytest.raises(ValueError, match="targets are required"):
        distillation_loss(S, T0, None, alpha=0.5)
    with pytest.raises(ValueError, match="loss="):
        distillation_loss(S, T0, None, loss="jsd")
    with pytest.raises(ValueError, match="targets shape"):
        cross_entropy(S, torch.tensor([1, 0]))


def test_gradients_of_forward_kl_and_distillation_ce_agree():
    a = torch.randn(5, 4, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    teacher = torch.randn(5, 4)
    forward_kl(a, teacher, 1.5).backward()
    distillation_cross_entropy(b, teacher, 1.5).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


# The fused soft-target form of the objective (the training loop's fast paths) against the plain
# distillation_loss and a float64 reference written out here: values and gradients, with ignored positions.
def _fused_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, generator=gen) * 3
    teacher = torch.randn(6, 4, generator=gen) * 3
    targets = torch.tensor([0, 3, IGNORE_INDEX, 1, 2, IGNORE_INDEX])
    return logits, teacher, targets


def _reference64(logits, teacher, targets, temperature, alpha):
    """alpha * CE + (1 - alpha) * KL(q || p) per position in float64, 0 at ignored positions."""
    logp = torch.log_softmax(logits.double(), -1)
    if temperature == 0:
        q = torch.nn.functional.one_hot(teacher.argmax(-1), teacher.shape[-1]).double()
    else:
        q = torch.softmax(teacher.double() / temperature, -1)
    kl = torch.where(q > 0, q * (q.clamp(min=1e-300).log() - logp), torch.zeros_like(q)).sum(-1)
    mask = targets != IGNORE_INDEX
    ce = -logp.gather(-1, torch.where(mask, targets, 0)[:, None])[:, 0]
    return torch.where(mask, alpha * ce + (1 - alpha) * kl, torch.zeros_like(kl))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
def test_fused_soft_targets_equal_distillation_loss(alpha, temperature):
    logits, teacher, targets = _fused_case(int(10 * alpha + temperature))
    weights = mixture_weights(alpha, torch.ones(6, dtype=torch.bool))
    target, correction = soft_targets(teacher, targets, temperature, *weights)
    assert torch.allclose(target.sum(-1), (targets != IGNORE_INDEX).float())  # distributions; 0 where ignored

    plain = logits.clone().requires_grad_(True)
    expected = distillation_loss(plain, teacher, targets, "forward_kl", temperature, alpha, reduction="none")
    expected.sum().backward()
    fused = logits.clone().requires_grad_(True)
    value = soft_cross_entropy(fused, target) - correction
    value.sum().backward()
    reference = _reference64(logits, teacher, targets, temperature, alpha)
    assert torch.allclose(value.double(), reference, atol=1e-5)
    assert torch.allclose(expected.double(), reference, atol=1e-5)
    assert torch.allclose(fused.grad, plain.grad, atol=1e-6)
    assert torch.all(fused.grad[targets == IGNORE_INDEX] == 0) and torch.all(value[targets == IGNORE_INDEX] == 0)

    # The hand-written gradient (MLP.sgd_step): loss and d loss / d logits without autograd.
    hand_loss, hand_grad = soft_cross_entropy_and_grad(logits, target)
    assert torch.allclose((hand_loss - correction).double(), reference, atol=1e-5)
    supervised = targets != IGNORE_INDEX
    assert torch.allclose(hand_grad[supervised], plain.grad[supervised], atol=1e-6)


def test_fused_form_by_hand():
    # Student p = [1/4, 3/4], teacher q = [1/2, 1/2], label 1, alpha = 0.25: mixture target [3/8, 5/8].
    target, correction = soft_targets(T0, torch.tensor([1]), 1.0, *mixture_weights(0.25, torch.tensor([True])))
    assert torch.allclose(target, torch.tensor([[0.375, 0.625]]))
    assert correction.item() == pytest.approx(0.75 * math.log(2.0))
    fused = soft_cross_entropy(S, target) - correction
    plain = 0.25 * -math.log(0.75) + 0.75 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert fused.item() == pytest.approx(plain)
    loss, grad = soft_cross_entropy_and_grad(S, target)
    assert loss.item() == pytest.approx(-(0.375 * math.log(0.25) + 0.625 * math.log(0.75)))
    assert torch.allclose(grad, torch.tensor([[0.25 - 0.375, 0.75 - 0.625]]))


def test_positions_without_a_teacher_are_cross_entropy():
    logits, teacher, targets = _fused_case(7)
    has_teacher = torch.tensor([True, False, True, False, True, True])
    ce_weight, kd_weight = mixture_weights(0.3, has_teacher)
    assert ce_weight.tolist() == pytest.approx([0.3, 1, 0.3, 1, 0.3, 0.3])
    assert kd_weight.tolist() == pytest.approx([0.7, 0, 0.7, 0, 0.7, 0.7])
    target, correction = soft_targets(teacher, targets, 1.0, ce_weight, kd_weight)
    fused = soft_cross_entropy(logits, target) - correction
    ce = cross_entropy(logits, targets, reduction="none")
    mixed = distillation_loss(logits, teacher, targets, "forward_kl", 1.0, 0.3, reduction="none")
    assert torch.allclose(fused, torch.where(has_teacher, mixed, ce), atol=1e-6)
    assert torch.equal(
        soft_targets(teacher, targets, 1.0, ce_weight, kd_weight)[0][1], hard_targets(targets[1:2], 4)[0]
    )


@pytest.mark.parametrize("loss, temperature", [("forward_kl", 0.0), ("forward_kl", 1.5), ("reverse_kl", 1.5)])
def test_weighted_distillation_loss_equals_distillation_loss(loss, temperature):
    logits, teacher, targets = _fused_case(3)
    plain = logits.clone().requires_grad_(True)
    expected = distillation_loss(plain, teacher, targets, loss, temperature, 0.3, reduction="none")
    expected.sum().backward()
    weighted = logits.clone().requires_grad_(True)
    value = weighted_distillation_loss(
        weighted, teacher, targets, loss, temperature, *mixture_weights(0.3, torch.ones(6, dtype=torch.bool))
    )
    value.sum().backward()
    assert torch.allclose(value, expected, atol=1e-6) and torch.allclose(weighted.grad, plain.grad, atol=1e-6)
    with pytest.raises(ValueError, match="loss="):
        weighted_distillation_loss(logits, teacher, targets, "jsd", 1.0, 1.0, 0.0)


def test_soft_cross_entropy_with_class_indices_is_cross_entropy():
    logits, _, targets = _fused_case(5)
    supervised = targets != IGNORE_INDEX
    expected = cross_entropy(logits[supervised], targets[supervised], reduction="none")
    assert torch.allclose(soft_cross_entropy(logits[supervised], targets[supervised]), expected)
    assert torch.allclose(soft_cross_entropy(logits[supervised], hard_targets(targets[supervised], 4)), expected)
