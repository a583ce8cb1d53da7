"""Generalized JSD, total variation, the Hinton temperature convention and top-k teacher targets, against
hand-computed values."""

import math

import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.core.settings import DistillationConfig
from progdistill.distill.losses import (
    IGNORE_INDEX,
    distillation_loss,
    divergence,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    top_k_divergence,
    top_k_targets,
    total_variation,
)

# Student logits [0, ln 3] -> p = [1/4, 3/4]; teacher logits [0, 0] -> q = [1/2, 1/2].
S = torch.tensor([[0.0, math.log(3.0)]])
T0 = torch.tensor([[0.0, 0.0]])
P, Q = (0.25, 0.75), (0.5, 0.5)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def jsd_by_hand(beta):
    m = [beta * q + (1 - beta) * p for p, q in zip(P, Q)]
    return beta * kl(Q, m) + (1 - beta) * kl(P, m)


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75])
def test_generalized_jsd_by_hand(beta):
    # beta = 0.5: m = [3/8, 5/8], JSD = (KL(q||m) + KL(p||m)) / 2
    assert generalized_jsd(S, T0, beta).item() == pytest.approx(jsd_by_hand(beta), rel=1e-6)
    if beta == 0.5:
        expected = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)) + 0.5 * (
            0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
        )
        assert generalized_jsd(S, T0, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_generalized_jsd_endpoints_are_forward_and_reverse_kl():
    assert generalized_jsd(S, T0, 0.0).item() == pytest.approx(kl(Q, P), rel=1e-6)  # teacher || student
    assert generalized_jsd(S, T0, 1.0).item() == pytest.approx(kl(P, Q), rel=1e-6)  # student || teacher
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, 11, generator=g), torch.randn(4, 6, 11, generator=g)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0, 2.0), forward_kl(s, t, 2.0))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0, 2.0), reverse_kl(s, t, 2.0))
    # symmetric at beta = 1/2 and bounded by log 2
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(generalized_jsd(t, s, 0.5).item(), rel=1e-5)
    assert float(generalized_jsd(100 * s, 100 * t, 0.5, reduction="none").max()) <= math.log(2) + 1e-6


def test_total_variation_by_hand():
    assert total_variation(S, T0).item() == pytest.approx(0.25)
    assert total_variation(S, S).item() == 0.0
    # a one-hot teacher (T = 0) at class 1: 1/2 (|1/4 - 0| + |3/4 - 1|) = 1/4
    assert total_variation(S, torch.tensor([[0.0, 1.0]]), temperature=0.0).item() == pytest.approx(0.25)


def test_hinton_convention_divides_student_too_and_scales_by_t_squared():
    t = 2.0
    p = torch.softmax(S[0] / t, -1).tolist()  # [1/(1+sqrt 3), sqrt 3/(1+sqrt 3)]
    assert p[1] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))
    expected = t**2 * kl(Q, p)
    got = divergence(S, T0, "forward_kl", t, temperature_scaling="hinton")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert divergence(S, T0, "forward_kl", t).item() == pytest.approx(kl(Q, P), rel=1e-6)  # teacher-only: p unscaled
    # at T = 1 the two conventions agree
    assert divergence(S, T0, "reverse_kl", 1.0, temperature_scaling="hinton").item() == pytest.approx(
        kl(P, Q), rel=1e-6
    )
    with pytest.raises(ValueError, match="temperature_scaling='hinton'"):
        divergence(S, T0, "forward_kl", 0.0, temperature_scaling="hinton")


# Three classes: teacher q = [0.5, 0.3, 0.2], student p = [0.2, 0.2, 0.6].
TQ = torch.tensor([[0.5, 0.3, 0.2]]).log()
SP = torch.tensor([[0.2, 0.2, 0.6]]).log()


def test_top_k_renormalized_by_hand():
    top = top_k_targets(TQ, 2, mode="renormalized")
    assert top.indices.tolist() == [[0, 1]]
    torch.testing.assert_close(top.log_probs.exp(), torch.tensor([[5 / 8, 3 / 8]]))
    assert torch.isneginf(top.tail_log_mass).all()
    expected = 5 / 8 * math.log((5 / 8) / 0.2) + 3 / 8 * math.log((3 / 8) / 0.2)
    assert top_k_divergence(SP, top, "forward_kl").item() == pytest.approx(expected, rel=1e-5)
    # = forward KL against the renormalized teacher on the whole vocabulary (log 0 for class 2)
    sparse = torch.tensor([[5 / 8, 3 / 8, 0.0]]).log()
    assert forward_kl(SP, sparse).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="tail_bucket"):
        top_k_divergence(SP, top, "reverse_kl")


def test_top_k_tail_bucket_by_hand():
    top = top_k_targets(TQ, 2, mode="tail_bucket")
    assert top.tail_log_mass.exp().item() == pytest.approx(0.2, rel=1e-6)
    # cells: teacher [0.5, 0.3, 0.2 (tail)], student [0.2, 0.2, 0.6 (tail)]
    fwd = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.6)
    rev = 0.2 * math.log(0.2 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.6 * math.log(0.6 / 0.2)
    assert top_k_divergence(SP, top, "forward_kl").item() == pytest.approx(fwd, rel=1e-5)
    assert top_k_divergence(SP, top, "reverse_kl").item() == pytest.approx(rev, rel=1e-5)
    assert top_k_divergence(SP, top, "total_variation").item() == pytest.approx(0.4, rel=1e-5)
    # k = 1 with a 4-class tail: the tail's classes are merged, so the student's split among them is invisible
    s4, t4 = torch.tensor([[0.4, 0.1, 0.2, 0.3]]).log(), torch.tensor([[0.7, 0.1, 0.1, 0.1]]).log()
    one = top_k_targets(t4, 1)
    assert top_k_divergence(s4, one, "forward_kl").item() == pytest.approx(
        0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6), rel=1e-5
    )


@pytest.mark.parametrize(
    "loss,beta",
    [
        ("forward_kl", 0.5),
        ("reverse_kl", 0.5),
        ("generalized_jsd", 0.0),
        ("generalized_jsd", 0.3),
        ("generalized_jsd", 1.0),
        ("total_variation", 0.5),
    ],
)
@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
def test_top_k_at_full_vocabulary_equals_the_full_loss(loss, beta, mode):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, 13, generator=g), torch.randn(3, 5, 13, generator=g)
    targets = torch.randint(13, (3, 5), generator=g)
    targets[0, :2] = IGNORE_INDEX
    full = divergence(s, t, loss, 1.5, targets, "none", beta=beta)
    top = divergence(s, t, loss, 1.5, targets, "none", beta=beta, top_k=13, top_k_mode=mode)
    torch.testing.assert_close(top, full, rtol=1e-5, atol=1e-6)
    assert (top[0, :2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["generalized_jsd", "total_variation"])
def test_half_precision_inputs_match_float32(dtype, loss):
    s, t = S.to(dtype), T0.to(dtype)  # [0, ln 3] rounds in half precision: compare with the rounded values
    expected = divergence(s.float(), t.float(), loss, 1.0)
    got = divergence(s, t, loss, 1.0)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    top = divergence(s, t, loss, 1.0, top_k=1)
    assert torch.isfinite(top)


def test_masks_and_all_masked_batch():
    s = torch.cat([S, torch.tensor([[5.0, -5.0]])])
    t = torch.cat([T0, torch.tensor([[-5.0, 5.0]])])
    targets = torch.tensor([0, IGNORE_INDEX])
    assert generalized_jsd(s, t, 0.5, targets=targets).item() == pytest.approx(jsd_by_hand(0.5), rel=1e-6)
    assert total_variation(s, t, targets=targets).item() == pytest.approx(0.25)
    none = torch.full((2,), IGNORE_INDEX)
    for loss in ("generalized_jsd", "total_variation"):
        assert divergence(s, t, loss, targets=none).item() == 0.0
        assert divergence(s, t, loss, targets=none, top_k=1).item() == 0.0


def test_alpha_mixes_cross_entropy_with_the_new_divergences():
    targets = torch.tensor([1])
    got = distillation_loss(S, T0, targets, "total_variation", alpha=0.5)
    assert got.item() == pytest.approx(0.5 * -math.log(0.75) + 0.5 * 0.25, rel=1e-6)


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
@pytest.mark.parametrize(
    "loss,options",
    [
        ("generalized_jsd", {"beta": 0.3}),
        ("generalized_jsd", {"beta": 0.0}),
        ("generalized_jsd", {"beta": 1.0}),
        ("forward_kl", {"temperature_scaling": "hinton"}),
        ("reverse_kl", {"top_k": 3, "top_k_mode": "tail_bucket"}),
        ("forward_kl", {"top_k": 2, "top_k_mode": "renormalized"}),
    ],
)
def test_gradients_match_finite_differences(loss, options):
    # The losses compute in float32 whatever the input: central differences in float32 with a loose tolerance.
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 5, generator=g, requires_grad=True)
    t = torch.randn(2, 5, generator=g)
    assert torch.autograd.gradcheck(
        lambda x: divergence(x, t, loss, 1.3, **options), (s,), eps=1e-2, atol=2e-3, rtol=2e-2, fast_mode=False
    )


def test_bad_values_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="beta=1.5"):
        generalized_jsd(S, T0, 1.5)
    with pytest.raises(ValueError, match="top_k=3 is invalid: an integer in 1..2"):
        top_k_targets(T0, 3)
    with pytest.raises(ValueError, match="top_k=0"):
        top_k_targets(T0, 0)
    with pytest.raises(ValueError, match="top_k_mode='sparse'"):
        top_k_targets(T0, 1, mode="sparse")
    with pytest.raises(ValueError, match="loss='l2'"):
        divergence(S, T0, "l2")
    for fields, name in [
        ({"beta": -0.1}, "distillation.beta"),
        ({"beta": 1.01}, "distillation.beta"),
        ({"lmbda": 2.0}, "distillation.lmbda"),
        ({"top_k": 0}, "distillation.top_k"),
        ({"top_k_mode": "x"}, "distillation.top_k_mode"),
        ({"temperature_scaling": "both"}, "distillation.temperature_scaling"),
        ({"loss": "generalized_jsd", "beta": 1.0, "temperature": 0.0}, "distillation.temperature"),
        ({"loss": "reverse_kl", "top_k": 5, "top_k_mode": "renormalized"}, "distillation.top_k_mode"),
        ({"temperature_scaling": "hinton", "temperature": 0.0}, "distillation.temperature"),
    ]:
        with pytest.raises(ConfigError, match=name):
            DistillationConfig(**fields)
