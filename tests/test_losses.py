import math

import pytest
import torch

from progdistill.losses import (IGNORE_INDEX, cross_entropy, distillation_cross_entropy, distillation_loss,
                                forward_kl, reverse_kl, teacher_probabilities)

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
    for value in (cross_entropy(logits, targets), forward_kl(logits, torch.randn(4, 3), targets=targets),
                  reverse_kl(logits, torch.randn(4, 3), targets=targets),
                  distillation_loss(logits, torch.randn(4, 3), targets, alpha=0.5)):
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
