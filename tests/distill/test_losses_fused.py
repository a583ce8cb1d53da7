"""The loop's per-position weighting and fused forward-KL form, checked against the plain losses.

Every test draws random logits over (B, L, C) with ignored positions (IGNORE_INDEX) and positions without a
teacher, and compares values and gradients with :func:`distillation_loss` / :func:`cross_entropy`, which the
fused form must reproduce exactly up to float rounding (paper §1: forward KL equals the distillation
cross-entropy up to the teacher's entropy)."""

import math

import pytest
import torch

# The functions under test, imported in one place.
from progdistill.distill.losses import (
    DIVERGENCES,
    IGNORE_INDEX,
    cross_entropy,
    distillation_loss,
    forward_kl,
    hard_targets,
    mixture_weights,
    soft_cross_entropy,
    soft_cross_entropy_and_grad,
    soft_cross_entropy_from_log_probs,
    soft_cross_entropy_grad,
    soft_targets,
    weighted_distillation_loss,
    zero_targets,
)

B, L, C = 4, 5, 7


def _case(seed: int, ignored: float = 0.3, without_teacher: float = 0.3):
    """Random student and teacher logits (B, L, C), targets (B, L) with a share ``ignored`` of IGNORE_INDEX,
    and a bool (B, L) of the positions that have a teacher."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, L, C, generator=gen)
    teacher = 3 * torch.randn(B, L, C, generator=gen)
    targets = torch.randint(0, C, (B, L), generator=gen)
    targets[torch.rand(B, L, generator=gen) < ignored] = IGNORE_INDEX
    has_teacher = torch.rand(B, L, generator=gen) >= without_teacher
    return logits, teacher, targets, has_teacher


def _plain(logits, teacher, targets, has_teacher, alpha, temperature, loss="forward_kl", **options):
    """The objective per position from the plain losses: mixed where there is a teacher, CE alone elsewhere."""
    mixed = distillation_loss(logits, teacher, targets, loss, temperature, alpha, reduction="none", **options)
    return torch.where(has_teacher, mixed, cross_entropy(logits, targets, reduction="none"))


def _value_and_grad(fn, logits):
    x = logits.clone().requires_grad_(True)
    value = fn(x)
    value.sum().backward()
    return value.detach(), x.grad


def test_mixture_weights_are_alpha_and_its_complement_where_there_is_a_teacher():
    has_teacher = torch.tensor([[True, False, True], [False, False, True]])
    ce_weight, kd_weight = mixture_weights(0.25, has_teacher)
    assert ce_weight.dtype == kd_weight.dtype == torch.float32
    assert ce_weight.tolist() == [[0.25, 1.0, 0.25], [1.0, 1.0, 0.25]]
    assert kd_weight.tolist() == [[0.75, 0.0, 0.75], [0.0, 0.0, 0.75]]
    # The two weights always sum to 1: the objective's scale does not depend on the teacher's presence.
    assert torch.equal(ce_weight + kd_weight, torch.ones(2, 3))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 2.0])
def test_fused_form_equals_the_plain_objective_with_masks(seed, alpha, temperature):
    logits, teacher, targets, has_teacher = _case(seed)
    supervised = targets != IGNORE_INDEX
    target, correction = soft_targets(teacher, targets, temperature, *mixture_weights(alpha, has_teacher))
    # The mixture target is a distribution at supervised positions and 0 at ignored ones.
    assert torch.allclose(target.sum(-1), supervised.float(), atol=1e-6)
    assert torch.equal(target[~supervised], torch.zeros_like(target[~supervised]))
    assert torch.equal(correction[~supervised], torch.zeros_like(correction[~supervised]))

    expected, expected_grad = _value_and_grad(
        lambda x: _plain(x, teacher, targets, has_teacher, alpha, temperature), logits
    )
    fused, fused_grad = _value_and_grad(lambda x: soft_cross_entropy(x, target) - correction, logits)
    assert torch.allclose(fused, expected, atol=1e-5)
    assert torch.allclose(fused_grad, expected_grad, atol=1e-6)
    assert torch.equal(fused[~supervised], torch.zeros_like(fused[~supervised]))
    assert torch.equal(fused_grad[~supervised], torch.zeros_like(fused_grad[~supervised]))

    # The gradient written by hand is softmax(logits) - target at supervised positions (the MLP's own SGD step),
    # autograd's gradient of the objective, and exactly 0 at ignored ones (a row of zeros), as autograd's.
    hand_loss, hand_grad = soft_cross_entropy_and_grad(logits, target)
    assert torch.allclose(hand_loss - correction, expected, atol=1e-5)
    softmax = torch.softmax(logits, -1) - target
    assert torch.allclose(hand_grad[supervised], softmax[supervised], atol=1e-6)
    assert torch.allclose(hand_grad[supervised], expected_grad[supervised], atol=1e-6)
    assert torch.equal(hand_grad[~supervised], torch.zeros_like(hand_grad[~supervised]))


def test_alpha_one_is_cross_entropy_and_alpha_zero_is_forward_kl():
    logits, teacher, targets, _ = _case(11)
    everywhere = torch.ones(B, L, dtype=torch.bool)
    target, correction = soft_targets(teacher, targets, 1.5, *mixture_weights(1.0, everywhere))
    supervised = targets != IGNORE_INDEX
    assert torch.equal(target[supervised], hard_targets(targets[supervised], C))  # exactly one-hot
    assert torch.equal(correction, torch.zeros(B, L))
    assert torch.allclose(
        soft_cross_entropy(logits, target), cross_entropy(logits, targets, reduction="none"), atol=1e-6
    )
    target, correction = soft_targets(teacher, targets, 1.5, *mixture_weights(0.0, everywhere))
    assert torch.allclose(
        soft_cross_entropy(logits, target) - correction,
        forward_kl(logits, teacher, 1.5, targets, reduction="none"),
        atol=1e-5,
    )


def test_correction_is_the_teachers_entropy_in_nats():
    # Teacher logits [0, 0, 0, 0]: q uniform over 4 classes, H(q) = ln 4; a T = 0 teacher is one-hot, H = 0.
    teacher = torch.zeros(1, 4)
    weights = mixture_weights(0.5, torch.tensor([True]))
    assert soft_targets(teacher, torch.tensor([2]), 1.0, *weights)[1].item() == pytest.approx(0.5 * math.log(4))
    _, teacher_logits, targets, has_teacher = _case(5)
    assert torch.equal(
        soft_targets(teacher_logits, targets, 0.0, *mixture_weights(0.3, has_teacher))[1], torch.zeros(B, L)
    )


def test_per_position_temperatures_equal_one_temperature_at_a_time():
    # A temperature curriculum gives every position its own T: each position must match the scalar-T form.
    logits, teacher, targets, has_teacher = _case(7)
    choices = torch.tensor([0.0, 0.5, 1.0, 3.0])
    temperatures = choices[torch.randint(0, 4, (B, L), generator=torch.Generator().manual_seed(0))]
    weights = mixture_weights(0.2, has_teacher)
    target, correction = soft_targets(teacher, targets, temperatures, *weights)
    for t in choices.tolist():
        here = temperatures == t
        assert here.any()
        scalar_target, scalar_correction = soft_targets(teacher, targets, t, *weights)
        assert torch.allclose(target[here], scalar_target[here], atol=1e-6)
        assert torch.allclose(correction[here], scalar_correction[here], atol=1e-6)
    assert torch.allclose(
        soft_cross_entropy(logits, target) - correction,
        torch.stack(
            [
                torch.stack(
                    [
                        _plain(
                            logits[b, i],
                            teacher[b, i],
                            targets[b, i],
                            has_teacher[b, i],
                            0.2,
                            float(temperatures[b, i]),
                        )
                        for i in range(L)
                    ]
                )
                for b in range(B)
            ]
        ),
        atol=1e-5,
    )


def test_all_positions_ignored_give_zero_loss_and_zero_gradient():
    logits, teacher, _, has_teacher = _case(3)
    targets = torch.full((B, L), IGNORE_INDEX)
    target, correction = soft_targets(teacher, targets, 1.0, *mixture_weights(0.5, has_teacher))
    value, grad = _value_and_grad(lambda x: soft_cross_entropy(x, target) - correction, logits)
    assert torch.equal(value, torch.zeros(B, L)) and torch.equal(grad, torch.zeros(B, L, C))


@pytest.mark.parametrize(
    "loss, temperature, options",
    [
        ("forward_kl", 0.0, {}),
        ("forward_kl", 2.0, {"temperature_scaling": "hinton"}),
        ("reverse_kl", 0.8, {}),
        ("generalized_jsd", 1.0, {"beta": 0.3}),
        ("total_variation", 1.0, {}),
        ("forward_kl", 1.0, {"top_k": 3, "top_k_mode": "renormalized"}),
        ("reverse_kl", 1.0, {"top_k": 3, "top_k_mode": "tail_bucket"}),
    ],
)
def test_weighted_loss_equals_the_plain_objective_per_position(loss, temperature, options):
    assert loss in DIVERGENCES
    logits, teacher, targets, has_teacher = _case(13)
    weights = mixture_weights(0.35, has_teacher)
    expected, expected_grad = _value_and_grad(
        lambda x: _plain(x, teacher, targets, has_teacher, 0.35, temperature, loss, **options), logits
    )
    value, grad = _value_and_grad(
        lambda x: weighted_distillation_loss(x, teacher, targets, loss, temperature, *weights, **options), logits
    )
    assert torch.allclose(value, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-6)
    supervised = targets != IGNORE_INDEX
    assert torch.equal(value[~supervised], torch.zeros_like(value[~supervised]))
    assert torch.equal(grad[~supervised], torch.zeros_like(grad[~supervised]))


def test_weighted_loss_reduces_to_cross_entropy_without_a_teacher():
    logits, teacher, targets, _ = _case(17)
    nowhere = torch.zeros(B, L, dtype=torch.bool)
    value = weighted_distillation_loss(logits, teacher, targets, "reverse_kl", 1.0, *mixture_weights(0.6, nowhere))
    assert torch.allclose(value, cross_entropy(logits, targets, reduction="none"), atol=1e-6)


def test_hard_targets_and_soft_cross_entropy_with_class_indices():
    assert hard_targets(torch.tensor([2, 0]), 3).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    # Student p = [1/4, 3/4] (logits [0, ln 3]): CE of class 1 is -ln(3/4), of class 0 ln 4.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    by_index = soft_cross_entropy(logits, torch.tensor([1, 0]))
    assert by_index.tolist() == pytest.approx([-math.log(0.75), math.log(4.0)])
    assert torch.allclose(soft_cross_entropy(logits, hard_targets(torch.tensor([1, 0]), 2)), by_index)


def test_soft_cross_entropy_keeps_the_logits_dtype_and_soft_targets_are_float32():
    logits, teacher, targets, has_teacher = _case(19)
    target, _ = soft_targets(teacher.bfloat16(), targets, 1.0, *mixture_weights(0.5, has_teacher))
    assert target.dtype == torch.float32
    low = soft_cross_entropy(logits.bfloat16(), target.bfloat16())
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), soft_cross_entropy(logits, target), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("num_classes", [2, 3, 17, 1000])
@pytest.mark.parametrize("models", [1, 3])
def test_a_blocks_losses_from_its_log_probs_are_the_step_by_step_losses_bit_for_bit(num_classes, models):
    """MLP.sgd_steps keeps each step's log softmax and computes the block's losses at its end: they must be the
    floats soft_cross_entropy_and_grad gives step by step (zero-probability classes and ignored rows included)."""
    gen = torch.Generator().manual_seed(num_classes)
    steps, batch = 40, 16
    logits = torch.randn(steps, models, batch, num_classes, generator=gen) * 4
    target = torch.softmax(torch.randn(steps, models, batch, num_classes, generator=gen), dim=-1)
    target[..., 0] = 0.0  # a class the target gives 0
    target[3, 0, 5] = 0.0  # an ignored row
    zero, ignored = zero_targets(target)
    assert ignored is not None
    logp = torch.empty_like(logits)
    grads, losses = [], []
    for i in range(steps):
        grads.append(soft_cross_entropy_grad(logits[i], target[i], ignored[i], logp[i])[0])
        losses.append(soft_cross_entropy_and_grad(logits[i], target[i], zero[i], ignored[i]))
    block = soft_cross_entropy_from_log_probs(logp, target, zero)
    assert torch.equal(block, torch.stack([loss for loss, _ in losses]))
    assert torch.equal(torch.stack(grads), torch.stack([grad for _, grad in losses]))
    assert float(block[3, 0, 5]) == 0.0 and torch.isfinite(block).all()
