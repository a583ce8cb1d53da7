"""Losses as pure functions: the paper's distillation loss (its vocabulary; used in paper §1-§4).

Shapes: ``logits`` and ``teacher_logits`` are (*, C) over C classes; ``targets`` is (*) of class indices,
where ``IGNORE_INDEX`` (-100, PyTorch's default) marks positions that carry no supervision. With
``reduction="mean"`` a loss is averaged over supervised positions only (a batch with none gives 0, never
NaN); with ``reduction="none"`` it is returned per position, shape (*), 0 at ignored positions.

Arithmetic: float64 inputs are computed in float64, every other dtype (float16, bfloat16, float32) in float32; a
student and teacher pair in the wider of the two. Every temperature T >= 0 gives finite losses and gradients on
finite logits: T = 0 is the teacher's argmax, and a T so small that ``teacher_logits / T`` overflows (down to
subnormal values, or values that round to 0) gives the limit of softmax(teacher_logits / T) as T -> 0, computed
exactly as softmax((teacher_logits - max) / T). The divergences are never negative, and exactly 0 for equal logits
at T = 1. Losses are in nats.

Ignored positions are masked *before* any softmax: their loss is 0 and their gradient exactly 0 whatever their
logits (all -inf, NaN). A supervised position whose student or teacher logits are all -inf has no distribution.

Zero probabilities, one rule for every divergence and every form of it (the plain functions, :func:`divergence`
with top-k targets or Hinton scaling, the fused soft-target form and the hand-written MLP gradient): a class whose
logit is -inf has probability exactly 0 -- a masked vocabulary (constrained decoding, padded or restricted
vocabularies) -- and so does every class but the argmax of a teacher at T = 0. A divergence where both sides give
a class probability 0 equals the divergence on the vocabulary without that class: finite, with finite gradients.
Where it is infinite mathematically -- KL(a || b) where a gives mass to a class that b gives -inf: forward KL where
the teacher gives mass to a class the student masks, reverse KL where the student gives mass to a class the
teacher masks -- the loss is +inf, never a large finite stand-in, and the training loop stops or skips the step as
for any non-finite loss (``train.on_non_finite``); such a gradient is not meant to be used (forward KL's is the
finite p - q in every form). The generalized JSD at 0 < beta < 1 and total variation are finite whenever both
sides have a distribution. A class with a *finite* teacher logit that rounds to probability 0 (a T too small to
divide by) is not masked: its log-probability is floored at :func:`log_underflow` of the dtype (float32: -104.3),
where exp gives 0, so reverse KL stays finite at every T > 0 while forward KL sees probability 0.

Precision: float64 inputs stay float64. The plain formulas (sum_c q_c (log q_c - log p_c) and the like) have an
absolute error of about epsilon * log C, which a small divergence feels relatively. Under Hinton scaling the
divergence is multiplied by T^2 -- and so is that error, while at a high T the divergence itself is small (the
T^2-scaled KL at T = 20 lost ~5e-4 relative in float32) -- so there forward and reverse KL (and the generalized
JSD's endpoints) take their value from a form that cancels far less: with d = x - y, the difference of the two
scaled logits, KL(softmax x || softmax y) = sum_c a_c delta_c - log1p(sum_c b_c expm1(delta_c)), delta = d - sum_c
b_c d_c, two terms of the order of the spread of d instead of the log-probabilities' size. Its relative error is
about epsilon / sqrt(KL) instead of the plain form's epsilon * log C / KL (float32 at T = 20, KL ~ 1e-4 before
the T^2: ~1e-5 instead of 5e-4; tested against a long-double reference at T = 8 and 20, float64 included), plus
an absolute error of order epsilon * |d| * sqrt(KL) from rounding d itself; the gradient is the plain form's,
unchanged. Without
Hinton scaling the ordinary path is the plain one, kept as it was (its arithmetic, and every preset's numbers).

Errors: ``ValueError`` for a negative (or NaN) temperature, teacher logits whose shape differs from the
student's, targets whose shape is not the logits' without the class dimension, and an unknown reduction.

Divergences (:data:`DIVERGENCES`, chosen by name in :func:`divergence`): forward and reverse KL, the generalized
Jensen-Shannon divergence with TRL's ``beta`` (0 = forward KL, 1 = reverse KL) and total variation distance; the
temperature either divides the teacher's logits only (the default) or both, Hinton-style, with the loss scaled
by T^2; and teacher targets may be cut to their top k classes (:func:`top_k_targets`, O(k) memory).

The plain objective is :func:`distillation_loss`; the training loop's per-position weighting of it and its
fused forward-KL form are at the end of this module (below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def log_underflow(dtype: torch.dtype) -> float:
    """One below the log of the dtype's smallest subnormal (float32: -104.3, float64: -745.1): exp of it rounds
    to 0, so a log-probability floored there still means probability 0."""
    info = torch.finfo(dtype)
    return math.log(info.smallest_normal * info.eps) - 1.0


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 where any input is float64, else float32 (half precision is computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _reduce(per_position: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    per_position = torch.where(mask, per_position, torch.zeros_like(per_position))
    if reduction == "none":
        return per_position
    if reduction == "mean":
        return per_position.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r} is invalid: one of 'mean', 'none'")


def supervised_mask(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Which positions carry supervision: bool (*), ``targets != IGNORE_INDEX`` (all True when ``targets`` is
    None). Raises ``ValueError`` when ``targets`` is not (*) for logits (*, C)."""
    if targets is None:
        return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal logits shape without the class "
            f"dimension, {tuple(logits.shape[:-1])}"
        )
    return targets != IGNORE_INDEX


def _supervised_only(x: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """x (*, C) with the rows of ignored positions replaced by zeros, before any softmax: whatever those rows
    hold (all -inf, NaN), they give finite values and receive exactly zero gradient. Supervised rows keep their
    values bit for bit."""
    if targets is None:
        return x
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _inputs(
    logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask (*), student logits, teacher logits): both (*, C) in the pair's computation dtype, the rows of
    ignored positions zeroed (:func:`_supervised_only`)."""
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    dtype = _compute_dtype(logits, teacher_logits)
    return (
        mask,
        _supervised_only(logits.to(dtype), mask, targets),
        _supervised_only(teacher_logits.to(dtype), mask, targets),
    )


def _check_pair(logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    # Broadcasting would silently pair a student position with another position's teacher.
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} must equal the student logits shape "
            f"{tuple(logits.shape)}: one teacher distribution per student position"
        )


def _check_temperature(temperature) -> None:
    if torch.is_tensor(temperature):  # per-position temperatures (a temperature curriculum)
        if not bool((temperature >= 0).all()):  # NaN included
            raise ValueError(f"temperature={temperature!r} is invalid: every entry must be >= 0")
    elif not temperature >= 0:  # NaN included
        raise ValueError(f"temperature={temperature!r} is invalid: must be >= 0")


def _scaled(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """logits / T (T > 0) for a softmax over the last dimension. Rows where that overflows (T too small to
    divide by) take (logits - max) / T instead, the same softmax without inf - inf: 0 at the maximum, at most 0
    elsewhere, so those rows are the argmax limit (shared between ties). Other rows are untouched."""
    scaled = logits / temperature  # (*, C)
    overflow = ~torch.isfinite(scaled) & torch.isfinite(logits)  # -inf logits (a masked vocabulary) are fine
    if not bool(overflow.any()):
        return scaled
    top = logits.amax(dim=-1, keepdim=True)
    # At the maximum 0 / T is 0, also where T rounds to 0 (0 / 0).
    shifted = torch.where(logits == top, torch.zeros_like(logits), (logits - top) / temperature)
    return torch.where(overflow.any(dim=-1, keepdim=True), shifted, scaled)


def _non_negative(divergence: torch.Tensor) -> torch.Tensor:
    """A divergence with rounding's negative values set to 0; the gradient passes unchanged (straight through),
    so clamping never changes an update."""
    return torch.where(divergence < 0, divergence - divergence.detach(), divergence)


def _logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """torch.logsumexp over ``dim``, with -inf and a zero gradient (not NaN) for a slice that is all -inf."""
    empty = torch.isneginf(x).all(dim=dim, keepdim=True)
    out = torch.logsumexp(torch.where(empty, torch.zeros_like(x), x), dim=dim, keepdim=True)
    return torch.where(empty, torch.full_like(out, float("-inf")), out).squeeze(dim)


@dataclass(frozen=True)
class _Teacher:
    """The teacher at temperature T, all (*, C) in the computation dtype: ``scaled`` logits whose softmax is q
    (log q itself at T = 0), ``q`` and ``log_q`` (floored at :func:`log_underflow` where a finite logit rounds
    to probability 0; -inf where the logit is -inf), and ``floored``, where that floor applies."""

    scaled: torch.Tensor
    q: torch.Tensor
    log_q: torch.Tensor
    floored: torch.Tensor


def _teacher(teacher_logits: torch.Tensor, temperature) -> _Teacher:
    """:func:`teacher_probabilities` with its log-probabilities (:class:`_Teacher`). ``temperature``: a number,
    or a tensor of per-position temperatures broadcastable to (*), where an entry 0 gives the T -> 0 limit (the
    argmax, shared between ties)."""
    _check_temperature(temperature)
    logits = teacher_logits.to(_compute_dtype(teacher_logits))
    if torch.is_tensor(temperature):
        scaled = _scaled(logits, temperature.to(logits.dtype).to(logits.device)[..., None])  # (*, C)
        q, log_q = torch.softmax(scaled, dim=-1), torch.log_softmax(scaled, dim=-1)
    elif temperature == 0:
        q = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
        log_q = torch.where(q > 0, torch.zeros_like(q), torch.full_like(q, float("-inf")))
        scaled = log_q
    else:
        scaled = _scaled(logits, temperature)
        q, log_q = torch.softmax(scaled, dim=-1), torch.log_softmax(scaled, dim=-1)
    # Where q > 0 nothing changes; where a finite logit's probability rounds to 0, log q is at most the floor.
    floored = (q == 0) & torch.isfinite(logits) & ~(log_q > log_underflow(logits.dtype))
    log_q = torch.where(floored, torch.full_like(log_q, log_underflow(logits.dtype)), log_q)
    return _Teacher(scaled, q, log_q, floored)


def teacher_probabilities(teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """softmax(teacher_logits / T), shape (*, C), float32 (float64 for float64 logits); T = 0 gives the one-hot
    argmax, and a T too small to divide by (``teacher_logits / T`` not finite) the T -> 0 limit, the argmax shared
    between ties. T may be a tensor of per-position temperatures broadcastable to (*) (a temperature curriculum).
    Raises ``ValueError`` for T < 0 or NaN."""
    return _teacher(teacher_logits, temperature).q


def _centred(x: torch.Tensor) -> torch.Tensor:
    """x (*, C) less its maximum in rows where that exceeds 64 in magnitude (a teacher at a tiny T), so that it
    does not round the other side's logits away in a difference; x itself (no copy) where no row does."""
    top = x.amax(dim=-1, keepdim=True)
    large = torch.isfinite(top) & (top.abs() > 64)
    return x - torch.where(large, top, torch.zeros_like(top)) if bool(large.any()) else x


@torch.no_grad()
def _precise_kl(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per position (*), a = softmax(x) and b = softmax(y) of scaled logits x, y (*, C), without the
    cancellation of sum_c a_c (log a_c - log b_c) (the module docstring's "Precision"). No gradient.

    With d = x - y: log a_c - log b_c = d_c - log sum_j b_j e^(d_j), so KL = sum_c a_c delta_c - log1p(sum_c b_c
    expm1(delta_c)) for delta = d - m and any m; m = sum_c b_c d_c makes both terms of the order of the spread
    of d, so that a small divergence keeps its relative precision. Classes where x or y is -inf: a class a gives
    0 adds -b_c to the sum (expm1(-inf)); one b gives 0 makes the divergence +inf, which the plain form gives."""
    d = _centred(x) - _centred(y)  # (*, C)
    if bool(torch.isfinite(d).all()):  # the usual case: no mask, no floor of -inf
        m = (b * d).sum(dim=-1, keepdim=True)
        delta = d - m
        return (a * delta).sum(dim=-1) - torch.log1p((b * torch.expm1(delta)).sum(dim=-1))
    finite = torch.isfinite(d)
    m = torch.where(finite, b * d, torch.zeros_like(d)).sum(dim=-1, keepdim=True)
    delta = torch.where(finite, d - m, torch.zeros_like(d))
    e = torch.where(
        finite, torch.expm1(delta), torch.where(torch.isneginf(d), -torch.ones_like(d), torch.zeros_like(d))
    )
    return torch.where(a > 0, a * delta, torch.zeros_like(a)).sum(dim=-1) - torch.log1p((b * e).sum(dim=-1))


def _kl_value(plain: torch.Tensor, precise: torch.Tensor) -> torch.Tensor:
    """The precise value with the plain form's gradient; where the plain value is not finite (an infinite
    divergence, no distribution) or the precise one is not (distributions so far apart that e^delta overflows,
    where the plain form has no cancellation to fear), the plain value itself."""
    use = torch.isfinite(plain) & torch.isfinite(precise)
    return torch.where(use, plain - plain.detach() + precise, plain)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log p_student(target): logits (*, C), targets (*) -> scalar (mean) or (*) (none)."""
    mask = supervised_mask(logits, targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(_supervised_only(logits.to(_compute_dtype(logits)), mask, targets), dim=-1)
    per_position = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return _reduce(per_position, mask, reduction)


def distillation_cross_entropy(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """-sum_c q_c log p_c with q = softmax(teacher_logits / T), p = softmax(student logits).

    Equals forward KL plus the teacher's entropy, so the two have the same gradients. ``targets`` is only
    used for its ignore mask. T = 0 is cross-entropy on the teacher's argmax.
    """
    mask, student, teacher = _inputs(logits, teacher_logits, targets)
    q = _teacher(teacher, temperature).q
    logp = torch.log_softmax(student, dim=-1)
    per_position = -torch.where(q > 0, q * logp, torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


def _forward_kl(student: torch.Tensor, teacher: _Teacher, precise: bool = False) -> torch.Tensor:
    """KL(q || p) per position (*) from the student's logits (*, C) (already masked, computation dtype);
    ``precise``: its value without cancellation (the module docstring's "Precision"), same gradient."""
    # log q as a log_softmax, the student's own formula: log(q) would differ from log p by rounding for equal
    # logits. log q carries no gradient, so the gradient, p - q, is that of the distillation cross-entropy.
    q, logq = teacher.q, teacher.log_q
    logp = torch.log_softmax(student, dim=-1)
    # q == 0 (not q > 0): a teacher row of all -inf has no distribution, NaN rather than a silent 0.
    plain = torch.where(q == 0, torch.zeros_like(logp), q * (logq - logp)).sum(dim=-1)
    if not precise:
        return plain
    return _kl_value(plain, _precise_kl(teacher.scaled, student.detach(), q, logp.detach().exp()))


def _reverse_kl(student: torch.Tensor, teacher: _Teacher, precise: bool = False) -> torch.Tensor:
    """KL(p || q) per position (*) from the student's logits (*, C) (already masked, computation dtype);
    ``precise`` as in :func:`_forward_kl`."""
    logq = teacher.log_q
    logp = torch.log_softmax(student, dim=-1)
    p = logp.exp()
    # Where p = 0 the log ratio may be -inf - (-inf): set it to 0 before the product, whose gradient uses it.
    log_ratio = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    plain = (p * log_ratio).sum(dim=-1)
    if not precise:
        return plain
    # The teacher's logits (relative to their maximum where large) with its floor, log q = floor, carried over:
    # both forms see the same teacher.
    scaled = _centred(teacher.scaled)
    scaled = torch.where(teacher.floored, logq + torch.logsumexp(scaled, dim=-1, keepdim=True), scaled)
    return _kl_value(plain, _precise_kl(student.detach(), scaled, p.detach(), teacher.q))


def forward_kl(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(q || p) = sum_c q_c (log q_c - log p_c), q = softmax(teacher_logits / T); >= 0, exactly 0 for equal
    logits at T = 1. +inf where the teacher gives mass to a class whose student logit is -inf (the module
    docstring's rule)."""
    mask, student, teacher = _inputs(logits, teacher_logits, targets)
    per_position = _forward_kl(student, _teacher(teacher, temperature))
    return _reduce(_non_negative(per_position), mask, reduction)


def _check_reverse_temperature(temperature, what: str) -> None:
    if not bool(torch.as_tensor(temperature > 0).all()):
        raise ValueError(
            f"temperature={temperature!r} is invalid for {what}: must be > 0 "
            "(a one-hot teacher makes reverse KL infinite)"
        )


def reverse_kl(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), q = softmax(teacher_logits / T); needs T > 0. >= 0, exactly 0
    for equal logits at T = 1.

    Columns where the student's probability is 0 contribute 0 (0 log 0 = 0), so -inf logits on both sides (a
    masked vocabulary) are fine; +inf where the student gives mass to a class whose teacher logit is -inf. A
    class whose finite teacher logit rounds to probability 0 (a T too small to divide by) has log q floored at
    :func:`log_underflow`, so the divergence is large but finite (the module docstring's rules)."""
    _check_reverse_temperature(temperature, "reverse KL")
    mask, student, teacher = _inputs(logits, teacher_logits, targets)
    per_position = _reverse_kl(student, _teacher(teacher, temperature))
    return _reduce(_non_negative(per_position), mask, reduction)


DIVERGENCES = ("forward_kl", "reverse_kl", "generalized_jsd", "total_variation")
TEMPERATURE_SCALINGS = ("teacher", "hinton")
TOP_K_MODES = ("renormalized", "tail_bucket")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_c a_c (log a_c - log b_c) over the last dimension, from log-probabilities (-inf
    allowed): classes with a_c = 0 contribute 0 (no gradient); a class with a_c > 0 and log b_c = -inf makes it
    +inf."""
    a = log_a.exp()
    log_ratio = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * log_ratio).sum(dim=-1)


def _generalized_jsd(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """The generalized JSD of :func:`generalized_jsd` from log-probabilities (*, C) -> (*)."""
    if beta == 0:
        return _kl(logq, logp)  # forward KL(teacher || student)
    if beta == 1:
        return _kl(logp, logq)  # reverse KL(student || teacher)
    # A class 0 on both sides is 0 in the mixture, with no gradient (not logsumexp's NaN at -inf, -inf).
    log_m = _logsumexp(torch.stack([logq + math.log(beta), logp + math.log(1 - beta)], dim=-1))  # (*, C)
    return beta * _kl(logq, log_m) + (1 - beta) * _kl(logp, log_m)


def _divergence_of_log_probs(logp: torch.Tensor, logq: torch.Tensor, loss: str, beta: float) -> torch.Tensor:
    """D(teacher || student) per position (*) from the student's and the teacher's log-probabilities (*, C);
    ``loss`` one of :data:`DIVERGENCES`."""
    if loss == "forward_kl":
        return _kl(logq, logp)
    if loss == "reverse_kl":
        return _kl(logp, logq)
    if loss == "generalized_jsd":
        return _generalized_jsd(logp, logq, beta)
    if loss == "total_variation":
        return 0.5 * (logp.exp() - logq.exp()).abs().sum(dim=-1)
    raise ValueError(f"loss={loss!r} is invalid: one of {', '.join(DIVERGENCES)}")


def _check_beta(beta: float) -> None:
    if not 0 <= beta <= 1:  # NaN included
        raise ValueError(f"beta={beta!r} is invalid: must lie in [0, 1] (0 = forward KL, 1 = reverse KL)")


def generalized_jsd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The generalized Jensen-Shannon divergence of Agarwal et al. (GKD), with TRL's ``beta`` convention.

    With q = softmax(teacher_logits / T) (the teacher), p = softmax(logits) (the student) and the mixture
    m = beta * q + (1 - beta) * p::

        JSD_beta(q, p) = beta * KL(q || m) + (1 - beta) * KL(p || m)      for 0 < beta < 1
        JSD_0 = KL(q || p)   forward KL, teacher || student  (mode covering)
        JSD_1 = KL(p || q)   reverse KL, student || teacher  (mode seeking; needs T > 0)

    The endpoints are *defined* as the two KLs, as in TRL's ``GKDTrainer``, and computed as :func:`forward_kl`
    and :func:`reverse_kl` themselves (the same values, infinities included): the formula for 0 < beta < 1 tends
    to 0 (not to a KL) as beta -> 0 or 1; near them it behaves like beta * (1 - beta) times the nearer KL.
    beta = 0.5 is the symmetric Jensen-Shannon divergence, at most log 2. Shapes, mask and reduction as the
    other losses; nats. Raises ``ValueError`` for beta outside [0, 1], and for beta = 1 with T = 0.
    """
    _check_beta(beta)
    if beta == 1:
        _check_reverse_temperature(temperature, "beta=1 (reverse KL)")
    mask, student, teacher_logits = _inputs(logits, teacher_logits, targets)
    teacher = _teacher(teacher_logits, temperature)
    if beta == 0:
        per_position = _forward_kl(student, teacher)
    elif beta == 1:
        per_position = _reverse_kl(student, teacher)
    else:
        logp = torch.log_softmax(student, dim=-1)
        per_position = _generalized_jsd(logp, teacher.log_q, beta)
    return _reduce(_non_negative(per_position), mask, reduction)


def total_variation(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Total variation distance 1/2 sum_c |p_c - q_c| between the student p = softmax(logits) and the teacher
    q = softmax(teacher_logits / T): in [0, 1], symmetric, 0 for equal distributions. Shapes, mask and reduction
    as the other losses (a probability, not nats)."""
    mask, student, teacher = _inputs(logits, teacher_logits, targets)
    logp = torch.log_softmax(student, dim=-1)
    per_position = _divergence_of_log_probs(logp, _teacher(teacher, temperature).log_q, "total_variation", 0.0)
    return _reduce(per_position, mask, reduction)


def divergence(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str = "forward_kl",
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
    beta: float = 0.5,
    temperature_scaling: str = "teacher",
    top_k: int | None = None,
    top_k_mode: str = "tail_bucket",
) -> torch.Tensor:
    """D(teacher || student) named by ``loss`` (one of :data:`DIVERGENCES`: :func:`forward_kl`,
    :func:`reverse_kl`, :func:`generalized_jsd` with ``beta``, :func:`total_variation`).

    ``temperature_scaling``: "teacher" (the default, this library's convention since paper §1: only the teacher's
    logits are divided by T) or "hinton" (Hinton et al. 2015: the student's logits are divided by T as well and
    the divergence is multiplied by T^2, so its gradient keeps its scale as T changes; needs T > 0).
    ``top_k``: compare on the teacher's k most probable classes only (:func:`top_k_targets`, mode
    ``top_k_mode``), None for the whole vocabulary. Raises ``ValueError`` for an unknown name or a bad value."""
    if temperature_scaling not in TEMPERATURE_SCALINGS:
        raise ValueError(
            f"temperature_scaling={temperature_scaling!r} is invalid: one of {', '.join(TEMPERATURE_SCALINGS)}"
        )
    if loss not in DIVERGENCES:
        raise ValueError(f"loss={loss!r} is invalid: one of {', '.join(DIVERGENCES)}")
    _check_beta(beta)
    if loss == "reverse_kl" or (loss == "generalized_jsd" and beta == 1):
        _check_reverse_temperature(temperature, f"loss={loss!r}" + (" with beta=1" if beta == 1 else ""))
    scale: float | torch.Tensor = 1.0
    if temperature_scaling == "hinton":
        if not temperature > 0:
            raise ValueError(
                f"temperature={temperature!r} is invalid with temperature_scaling='hinton': must be "
                "> 0 (the student's logits are divided by it)"
            )
        _check_pair(logits, teacher_logits)
        # Ignored rows zeroed first, so that a T too small to divide by sees only supervised rows.
        mask = supervised_mask(logits, targets)
        student = _supervised_only(logits.to(_compute_dtype(logits, teacher_logits)), mask, targets)
        logits, scale = _scaled(student, temperature), temperature**2
    if top_k is not None:
        _check_pair(logits, teacher_logits)
        teacher_rows = _supervised_only(teacher_logits, supervised_mask(logits, targets), targets)
        targets_k = top_k_targets(teacher_rows, top_k, temperature, top_k_mode)
        return scale * top_k_divergence(logits, targets_k, loss, targets, reduction, beta)
    if loss == "total_variation":
        return scale * total_variation(logits, teacher_logits, temperature, targets, reduction)
    # Under Hinton scaling the divergence is multiplied by T^2, its rounding error too: computed precisely.
    mask, student, teacher_rows = _inputs(logits, teacher_logits, targets)
    teacher = _teacher(teacher_rows, temperature)
    precise = temperature_scaling == "hinton"
    if loss == "forward_kl" or (loss == "generalized_jsd" and beta == 0):
        per_position = _forward_kl(student, teacher, precise)
    elif loss == "reverse_kl" or beta == 1:  # the generalized JSD from here on
        per_position = _reverse_kl(student, teacher, precise)
    else:
        per_position = _generalized_jsd(torch.log_softmax(student, dim=-1), teacher.log_q, beta)
    return scale * _reduce(_non_negative(per_position), mask, reduction)


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    loss: str = "forward_kl",
    temperature: float | torch.Tensor = 1.0,
    alpha: float = 0.0,
    reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """``alpha * CE(targets) + (1 - alpha) * D(teacher || student)``, D named by ``loss`` (:func:`divergence`,
    whose keyword ``options`` -- beta, temperature_scaling, top_k, top_k_mode -- pass through). ``targets``
    may be None only when ``alpha == 0``."""
    kd = divergence(logits, teacher_logits, loss, temperature, targets, reduction, **options)
    if alpha == 0:
        return kd
    if targets is None:
        raise ValueError("alpha > 0 mixes in cross-entropy on true labels, so targets are required")
    return alpha * cross_entropy(logits, targets, reduction) + (1 - alpha) * kd


@dataclass(frozen=True)
class TopKTargets:
    """A teacher distribution kept on its k most probable classes: O(k) memory per position instead of O(C).

    ``indices`` (*, k) int64 class ids, most probable first; ``log_probs`` (*, k) float32 (float64 from float64
    logits) their teacher log-probabilities; ``tail_log_mass`` (*) the log of the mass of the other C - k
    classes, as one bucket (-inf in "renormalized" mode, whose k probabilities sum to 1). ``num_classes``: C, the
    teacher's vocabulary (None: unknown, e.g. targets built by hand; the indices are then checked against the
    student's vocabulary, one device sync). ``renormalized``: whether the tail is 0 by construction (None: read
    from ``tail_log_mass`` all -inf with k < C)."""

    indices: torch.Tensor
    log_probs: torch.Tensor
    tail_log_mass: torch.Tensor
    num_classes: int | None = None
    renormalized: bool | None = None


def top_k_targets(
    teacher_logits: torch.Tensor, k: int, temperature: float | torch.Tensor = 1.0, mode: str = "tail_bucket"
) -> TopKTargets:
    """The teacher's k most probable classes of q = softmax(teacher_logits / T), teacher_logits (*, C).

    ``mode``: "renormalized" keeps q on the k classes divided by their total (the other classes get
    probability 0); "tail_bucket" keeps their exact probabilities and the remaining mass 1 - sum_k q as one more
    bucket, so nothing is lost but the split of the tail. With k = C both are q itself. Classes the teacher gives
    -inf come last (probability 0, as in the module docstring's rule). Raises ``ValueError`` for k < 1, k > C or
    an unknown mode."""
    num_classes = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"top_k={k!r} is invalid: an integer in 1..{num_classes} (the vocabulary)")
    if mode not in TOP_K_MODES:
        raise ValueError(f"top_k_mode={mode!r} is invalid: one of {', '.join(TOP_K_MODES)}")
    logq = _teacher(teacher_logits, temperature).log_q  # (*, C), transient
    log_probs, indices = logq.topk(k, dim=-1)  # (*, k)
    if mode == "renormalized":
        log_probs = log_probs - _logsumexp(log_probs)[..., None]
        tail = torch.full(log_probs.shape[:-1], float("-inf"), dtype=logq.dtype, device=logq.device)
    else:  # the tail's log mass summed over its own classes: no 1 - sum cancellation
        tail = _logsumexp(logq.scatter(-1, indices, float("-inf")))
    return TopKTargets(indices, log_probs, tail, num_classes, mode == "renormalized")


def _check_top_k_fits(logits: torch.Tensor, teacher: TopKTargets) -> None:
    """Top-k targets must index the student's vocabulary: ``ValueError`` naming both sizes, before any gather
    (on CUDA an out-of-range index is a device-side assert)."""
    num_classes, k = logits.shape[-1], teacher.indices.shape[-1]
    if teacher.num_classes is not None and teacher.num_classes > num_classes:
        raise ValueError(
            f"top-k targets from a teacher vocabulary of {teacher.num_classes} classes do not fit the student's "
            f"vocabulary of {num_classes} classes: cut or map the teacher's vocabulary to the student's"
        )
    if k > num_classes:
        raise ValueError(f"top-k targets keep k={k} classes, more than the student's vocabulary of {num_classes}")
    if teacher.num_classes is None and teacher.indices.numel():
        low, high = int(teacher.indices.min()), int(teacher.indices.max())
        if low < 0 or high >= num_classes:
            larger = (
                f": the targets come from a vocabulary of at least {high + 1} classes" if high >= num_classes else ""
            )
            raise ValueError(
                f"top-k targets index class {high if high >= num_classes else low}, outside the student's "
                f"vocabulary of {num_classes} classes (0..{num_classes - 1}){larger}"
            )


def top_k_divergence(
    logits: torch.Tensor,
    teacher: TopKTargets,
    loss: str = "forward_kl",
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
    beta: float = 0.5,
) -> torch.Tensor:
    """D(teacher || student) on the k + 1 cells of ``teacher`` (:func:`top_k_targets`): the teacher's k classes
    and the bucket of all others, where the student's probabilities are p at the k classes and the rest of its
    mass. logits (*, C) -> (*) or scalar as the other losses. Forward KL here equals forward KL against the
    top-k teacher on the whole vocabulary (the bucket, or with "renormalized" targets the zero tail, adds the
    same); with k = C every divergence equals its full-vocabulary form, infinities included (the module
    docstring's rule). Raises ``ValueError`` for reverse KL (or generalized JSD with beta = 1) against
    renormalized targets, which give the tail probability 0: use "tail_bucket" there; and for targets that do
    not fit the student's vocabulary (a teacher vocabulary larger than C, an index outside 0..C-1), naming both
    sizes."""
    _check_beta(beta)
    if teacher.indices.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"top-k targets of shape {tuple(teacher.indices.shape)} do not match the student logits "
            f"{tuple(logits.shape)}: one teacher distribution per student position"
        )
    _check_top_k_fits(logits, teacher)
    renormalized = teacher.renormalized
    if renormalized is None:
        renormalized = bool(torch.isneginf(teacher.tail_log_mass).all())
    renormalized = renormalized and teacher.indices.shape[-1] < logits.shape[-1]
    if renormalized and (loss == "reverse_kl" or (loss == "generalized_jsd" and beta == 1)):
        raise ValueError(
            f"loss={loss!r} against renormalized top-k targets is infinite (the teacher gives the tail "
            "probability 0): use top_k_mode='tail_bucket'"
        )
    mask = supervised_mask(logits, targets)
    dtype = _compute_dtype(logits, teacher.log_probs)
    student = _supervised_only(logits.to(dtype), mask, targets)
    logp = torch.log_softmax(student, dim=-1)  # (*, C)
    student_k = logp.gather(-1, teacher.indices)  # (*, k)
    student_tail = _logsumexp(logp.scatter(-1, teacher.indices, float("-inf")))  # (*); -inf for k = C
    cells_p = torch.cat([student_k, student_tail[..., None]], dim=-1)  # (*, k + 1)
    cells_q = torch.cat([teacher.log_probs, teacher.tail_log_mass[..., None]], dim=-1).to(dtype)
    cells_q = _supervised_only(cells_q, mask, targets)  # an ignored row's teacher: anything finite
    per_position = _divergence_of_log_probs(cells_p, cells_q, loss, beta)
    return _reduce(_non_negative(per_position), mask, reduction)


# The objective as the training loop applies it (paper §1-§4): per-position weights, and a *fused* form.
#
# :func:`mixture_weights` and :func:`weighted_distillation_loss` give ``alpha * CE + (1 - alpha) * D`` per position,
# with CE alone where a position has no teacher. The fast paths use an equivalent fused form with forward KL
# (:func:`soft_targets`, :func:`soft_cross_entropy` and :func:`soft_cross_entropy_and_grad`):
# ``alpha * CE(y) + (1 - alpha) * KL(q || p)`` is one cross-entropy against the mixture target
# ``alpha * onehot(y) + (1 - alpha) * q`` minus the constant ``(1 - alpha) * H(q)``, so both have the same
# gradient. Tests check the fused form against :func:`distillation_loss`, values and gradients. Shapes,
# dtypes and masking are as above, and so is the rule for zero probabilities: a class the target gives 0
# contributes nothing whatever its logit, one it gives mass with logit -inf makes the loss +inf (its gradient
# is still softmax(logits) - target), and a row of zeros (an ignored position) has loss 0 and gradient 0.


def mixture_weights(alpha: float, has_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the two terms of the objective at every position: ``(alpha, 1 - alpha)`` where
    ``has_teacher`` (bool, any shape) is True, ``(1, 0)`` -- cross-entropy alone -- where it is False.
    Returns (ce_weight, kd_weight), float32 tensors of ``has_teacher``'s shape."""
    kd_weight = has_teacher.float()
    ce_weight = torch.where(has_teacher, torch.full_like(kd_weight, alpha), torch.ones_like(kd_weight))
    return ce_weight, kd_weight * (1 - alpha)


def weighted_distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    loss: str,
    temperature: float | torch.Tensor,
    ce_weight: torch.Tensor,
    kd_weight: torch.Tensor,
    **options,
) -> torch.Tensor:
    """``ce_weight * CE(targets) + kd_weight * D(teacher || student)`` per position, shape (*), with
    per-position weights from :func:`mixture_weights` (broadcastable to (*)); D named by ``loss`` with the
    keyword ``options`` of :func:`divergence`; 0 at ignored positions. With ``(alpha, 1 - alpha)`` everywhere it
    is :func:`distillation_loss` with ``reduction="none"``."""
    kd = divergence(logits, teacher_logits, loss, temperature, targets, "none", **options)
    return ce_weight * cross_entropy(logits, targets, reduction="none") + kd_weight * kd


def hard_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (*) as one-hot distributions (*, C), float32: the soft-target form of cross-entropy."""
    return F.one_hot(targets, num_classes).float()


def soft_targets(
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
    ce_weight: torch.Tensor,
    kd_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused form of forward-KL distillation: the mixture target and the entropy correction (the paper's
    distillation loss "equal to forward KL up to the teacher's entropy"; the sparse-parity loop, paper §1).

    teacher_logits (*, C); targets (*) class indices (``IGNORE_INDEX`` allowed); ce_weight and kd_weight
    broadcastable to (*) (:func:`mixture_weights`). Returns

    - target (*, C): ``ce_weight * onehot(targets) + kd_weight * q``, q = softmax(teacher_logits / T), float32
      (float64 from float64 logits);
    - correction (*): ``kd_weight * H(q)`` in nats,

    both 0 at ignored positions, such that ``soft_cross_entropy(logits, target) - correction`` equals
    ``ce_weight * CE(targets) + kd_weight * KL(q || p)`` (:func:`distillation_loss` with forward KL when the
    weights are ``(alpha, 1 - alpha)``) and has the same gradient w.r.t. ``logits``, +inf included where the
    teacher gives mass to a class whose student logit is -inf.
    """
    mask = supervised_mask(teacher_logits, targets)
    teacher = _supervised_only(teacher_logits.to(_compute_dtype(teacher_logits)), mask, targets)
    q = teacher_probabilities(teacher, temperature)  # (*, C)
    onehot = hard_targets(torch.where(mask, targets, torch.zeros_like(targets)), q.shape[-1]).to(q.dtype)
    target = ce_weight[..., None] * onehot + kd_weight[..., None] * q
    entropy = -torch.where(q > 0, q * q.clamp(min=torch.finfo(q.dtype).tiny).log(), torch.zeros_like(q)).sum(-1)
    correction = kd_weight * entropy
    return (
        torch.where(mask[..., None], target, torch.zeros_like(target)),
        torch.where(mask, correction, torch.zeros_like(correction)),
    )


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_c target_c log softmax(logits)_c per position, shape (*): logits (*, C); target (*, C)
    distributions (:func:`soft_targets`, :func:`hard_targets`; a row of zeros is an ignored position: loss 0,
    gradient 0 whatever its logits) or (*) class indices without ignored positions.

    In the logits' dtype (unlike the functions above, which work in float32 or float64)."""
    num_classes = logits.shape[-1]
    if target.dim() < logits.dim():  # class indices: PyTorch's fused kernel
        flat = target.reshape(-1)
        return F.cross_entropy(logits.reshape(-1, num_classes), flat, reduction="none").view(logits.shape[:-1])
    # The soft-label cross-entropy as PyTorch computes it, -(log_softmax * target).sum, with the zero rule
    # (0 * -inf would be NaN) and ignored rows masked before the softmax.
    supervised = (target != 0).any(dim=-1, keepdim=True)  # (*, 1)
    logp = torch.log_softmax(torch.where(supervised, logits, torch.zeros_like(logits)), dim=-1)
    return -torch.where(target != 0, logp * target, torch.zeros_like(logp)).sum(dim=-1)


def zero_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(``target == 0`` (*, C), its rows of zeros (*, 1) or None where there are none) for
    :func:`soft_cross_entropy_and_grad`; one device sync."""
    zero = target == 0
    ignored = zero.all(dim=-1, keepdim=True)
    return zero, ignored if bool(ignored.any()) else None


def soft_cross_entropy_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    zero: torch.Tensor | None = None,
    ignored: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`soft_cross_entropy` and its gradient, without autograd: logits (*, C), target (*, C) distributions.

    Returns (loss (*), grad (*, C)) with grad = d loss / d logits = softmax(logits) - target, one position's
    loss differentiated w.r.t. its own logits (a mean over B positions scales it by 1 / B); a row of zeros (an
    ignored position) gets loss 0 and gradient 0, and the rule for zero probabilities is
    :func:`soft_cross_entropy`'s. For optimizers with gradients written by hand
    (:meth:`progdistill.models.mlp.MLP.sgd_step`). ``zero`` (``target == 0``, (*, C)) and with it ``ignored``
    (its rows of zeros, (*, 1), None where there are none) may be computed once for many steps
    (:func:`zero_targets`): on a step of a small model each elementwise pass is a measurable share of the time.
    ``out``: a tensor (*) the loss is written to (and returned)."""
    if zero is None:
        zero, ignored = zero_targets(target)
    grad, logp = soft_cross_entropy_grad(logits, target, ignored)
    return soft_cross_entropy_from_log_probs(logp, target, zero, out=out), grad


def soft_cross_entropy_grad(
    logits: torch.Tensor, target: torch.Tensor, ignored: torch.Tensor | None, logp_out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient half of :func:`soft_cross_entropy_and_grad`: (softmax(logits) - target (*, C), log
    softmax(logits) (*, C)), the latter written to ``logp_out`` when given, so that
    :func:`soft_cross_entropy_from_log_probs` can give the losses of many steps at once later (the same floats
    as step by step). ``ignored``: rows of zeros of ``target`` (*, 1), or None where there are none."""
    logp = torch.log_softmax(logits if ignored is None else logits.masked_fill(ignored, 0.0), dim=-1, out=logp_out)
    grad = logp.exp().sub_(target)
    return (grad if ignored is None else grad.masked_fill_(ignored, 0.0)), logp


def soft_cross_entropy_from_log_probs(
    logp: torch.Tensor, target: torch.Tensor, zero: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """-sum_c target_c logp_c (*) from log-probabilities ``logp`` (*, C), with ``zero`` = ``target == 0`` (*, C)
    contributing nothing (0 * -inf would be NaN): :func:`soft_cross_entropy` given the log softmax."""
    return torch.sum((target * logp).masked_fill_(zero, 0.0), dim=-1, out=out).neg_()
