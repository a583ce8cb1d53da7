"""Losses as pure functions: the paper's distillation loss (its vocabulary; used in paper §1-§4).

Shapes: ``logits`` and ``teacher_logits`` are (*, C) over C classes; ``targets`` is (*) of class indices,
where ``IGNORE_INDEX`` (-100, PyTorch's default) marks positions that carry no supervision. With
``reduction="mean"`` a loss is averaged over supervised positions only (a batch with none gives 0, never
NaN); with ``reduction="none"`` it is returned per position, shape (*), 0 at ignored positions.

All arithmetic is done in float32 whatever the input dtype (float16 and bfloat16 logits included). Every
temperature T >= 0 gives finite losses and gradients: T = 0 is the teacher's argmax, and a T so small that
``teacher_logits / T`` overflows float32 (down to subnormal values, or values that round to 0 in float32) gives
the limit of softmax(teacher_logits / T) as T -> 0, computed exactly as softmax((teacher_logits - max) / T).
The divergences are never negative, and exactly 0 for equal logits at T = 1. Losses are in nats.

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
_LOG_TINY = float(torch.log(torch.tensor(torch.finfo(torch.float32).tiny)))  # -87.34: log of the smallest normal


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
    """logits / T (float32, T > 0) for a softmax over the last dimension. Rows where that overflows (T too
    small to divide by) take (logits - max) / T instead, the same softmax without inf - inf: 0 at the maximum,
    at most 0 elsewhere, so those rows are the argmax limit (shared between ties). Other rows are untouched."""
    scaled = logits / temperature  # (*, C)
    overflow = ~torch.isfinite(scaled) & torch.isfinite(logits)  # -inf logits (a masked vocabulary) are fine
    if not bool(overflow.any()):
        return scaled
    top = logits.amax(dim=-1, keepdim=True)
    # At the maximum 0 / T is 0, also where T rounds to 0 in float32 (0 / 0).
    shifted = torch.where(logits == top, torch.zeros_like(logits), (logits - top) / temperature)
    return torch.where(overflow.any(dim=-1, keepdim=True), shifted, scaled)


def _non_negative(divergence: torch.Tensor) -> torch.Tensor:
    """A divergence with rounding's negative values set to 0; the gradient passes unchanged (straight through),
    so clamping never changes an update."""
    return torch.where(divergence < 0, divergence - divergence.detach(), divergence)


def teacher_probabilities(teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """softmax(teacher_logits / T) in float32, shape (*, C); T = 0 gives the one-hot argmax, and a T too small to
    divide by (``teacher_logits / T`` not finite) the T -> 0 limit, the argmax shared between ties. T may be a
    tensor of per-position temperatures broadcastable to (*) (a temperature curriculum). Raises
    ``ValueError`` for T < 0 or NaN."""
    return _teacher(teacher_logits, temperature)[0]


def _teacher(teacher_logits: torch.Tensor, temperature) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, log q), both (*, C) float32: :func:`teacher_probabilities` and its log as a log_softmax (0 at a T = 0
    teacher's argmax; its other entries, where q = 0, are never used). ``temperature``: a number, or a tensor of
    per-position temperatures broadcastable to (*), where an entry 0 gives the T -> 0 limit (the argmax, shared
    between ties)."""
    _check_temperature(temperature)
    logits = teacher_logits.float()
    if torch.is_tensor(temperature):
        scaled = _scaled(logits, temperature.float().to(logits.device)[..., None])  # (*, C)
        return torch.softmax(scaled, dim=-1), torch.log_softmax(scaled, dim=-1)
    if temperature == 0:
        q = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
        return q, torch.zeros_like(q)
    scaled = _scaled(logits, temperature)
    return torch.softmax(scaled, dim=-1), torch.log_softmax(scaled, dim=-1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-log p_student(target): logits (*, C), targets (*) -> scalar (mean) or (*) (none)."""
    mask = supervised_mask(logits, targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(logits.float(), dim=-1)
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
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = -torch.where(q > 0, q * logp, torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


def forward_kl(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    targets: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(q || p) = sum_c q_c (log q_c - log p_c), q = softmax(teacher_logits / T); >= 0, exactly 0 for equal
    logits at T = 1."""
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    # log q as a log_softmax, the student's own formula: log(q) would differ from log p by rounding for equal
    # logits. log q carries no gradient, so the gradient, p - q, is that of the distillation cross-entropy.
    q, logq = _teacher(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = torch.where(q > 0, q * (logq - logp), torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(_non_negative(per_position), mask, reduction)


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
    masked vocabulary) are fine. q is floored at the smallest normal float32 (log q >= -87.3): where the teacher
    rounds a class to probability 0 that the student gives mass to (a T too small to divide by), the divergence
    is large but finite."""
    if not bool(torch.as_tensor(temperature > 0).all()):
        raise ValueError(
            f"temperature={temperature!r} is invalid for reverse KL: must be > 0 "
            "(a one-hot teacher makes reverse KL infinite)"
        )
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    logq = _teacher(teacher_logits, temperature)[1].clamp(min=_LOG_TINY)
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # Where p = 0 the log ratio may be -inf - (-inf): set it to 0 before the product, whose gradient uses it.
    log_ratio = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    per_position = (p * log_ratio).sum(dim=-1)
    return _reduce(_non_negative(per_position), mask, reduction)


DIVERGENCES = ("forward_kl", "reverse_kl", "generalized_jsd", "total_variation")
TEMPERATURE_SCALINGS = ("teacher", "hinton")
TOP_K_MODES = ("renormalized", "tail_bucket")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_c a_c (log a_c - log b_c) over the last dimension, from float32 log-probabilities (-inf
    allowed): classes with a_c = 0 contribute 0; log b is floored at the smallest normal float32 (as in
    :func:`reverse_kl`), so a class b rounds to 0 gives a large but finite term."""
    a = log_a.exp()
    log_ratio = torch.where(a > 0, log_a - log_b.clamp(min=_LOG_TINY), torch.zeros_like(log_a))
    return (a * log_ratio).sum(dim=-1)


def _generalized_jsd(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """The generalized JSD of :func:`generalized_jsd` from log-probabilities (*, C) -> (*)."""
    if beta == 0:
        return _kl(logq, logp)  # forward KL(teacher || student)
    if beta == 1:
        return _kl(logp, logq)  # reverse KL(student || teacher)
    log_m = torch.logsumexp(torch.stack([logq + math.log(beta), logp + math.log(1 - beta)]), dim=0)  # (*, C)
    return beta * _kl(logq, log_m) + (1 - beta) * _kl(logp, log_m)


def _divergence_of_log_probs(logp: torch.Tensor, logq: torch.Tensor, loss: str, beta: float) -> torch.Tensor:
    """D(teacher || student) per position (*) from the student's and the teacher's float32 log-probabilities
    (*, C); ``loss`` one of :data:`DIVERGENCES`."""
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


def _teacher_log_probs(teacher_logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """log softmax(teacher_logits / T), float32 (*, C), -inf where the teacher's probability is 0 (T = 0)."""
    q, logq = _teacher(teacher_logits, temperature)
    return torch.where(q > 0, logq, torch.full_like(logq, float("-inf")))


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

    The endpoints are *defined* as the two KLs, as in TRL's ``GKDTrainer``: the formula for 0 < beta < 1 tends
    to 0 (not to a KL) as beta -> 0 or 1; near them it behaves like beta * (1 - beta) times the nearer KL.
    beta = 0.5 is the symmetric Jensen-Shannon divergence, at most log 2. Shapes, mask and reduction as the
    other losses; nats. Raises ``ValueError`` for beta outside [0, 1], and for beta = 1 with T = 0.
    """
    _check_beta(beta)
    if beta == 1 and temperature == 0:
        raise ValueError("beta=1 is reverse KL, which needs temperature > 0 (a one-hot teacher makes it infinite)")
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = _generalized_jsd(logp, _teacher_log_probs(teacher_logits, temperature), beta)
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
    _check_pair(logits, teacher_logits)
    mask = supervised_mask(logits, targets)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = _divergence_of_log_probs(
        logp, _teacher_log_probs(teacher_logits, temperature), "total_variation", 0.0
    )
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
    scale: float | torch.Tensor = 1.0
    if temperature_scaling == "hinton":
        if not temperature > 0:
            raise ValueError(
                f"temperature={temperature!r} is invalid with temperature_scaling='hinton': must be "
                "> 0 (the student's logits are divided by it)"
            )
        logits, scale = logits.float() / temperature, temperature**2
    if top_k is not None:
        _check_pair(logits, teacher_logits)
        targets_k = top_k_targets(teacher_logits, top_k, temperature, top_k_mode)
        return scale * top_k_divergence(logits, targets_k, loss, targets, reduction, beta)
    if loss == "forward_kl":
        kd = forward_kl(logits, teacher_logits, temperature, targets, reduction)
    elif loss == "reverse_kl":
        kd = reverse_kl(logits, teacher_logits, temperature, targets, reduction)
    elif loss == "generalized_jsd":
        kd = generalized_jsd(logits, teacher_logits, beta, temperature, targets, reduction)
    else:
        kd = total_variation(logits, teacher_logits, temperature, targets, reduction)
    return scale * kd


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

    ``indices`` (*, k) int64 class ids, most probable first; ``log_probs`` (*, k) float32 their teacher
    log-probabilities; ``tail_log_mass`` (*) float32 the log of the mass of the other C - k classes, as one
    bucket (-inf in "renormalized" mode, whose k probabilities sum to 1)."""

    indices: torch.Tensor
    log_probs: torch.Tensor
    tail_log_mass: torch.Tensor


def top_k_targets(
    teacher_logits: torch.Tensor, k: int, temperature: float | torch.Tensor = 1.0, mode: str = "tail_bucket"
) -> TopKTargets:
    """The teacher's k most probable classes of q = softmax(teacher_logits / T), teacher_logits (*, C).

    ``mode``: "renormalized" keeps q on the k classes divided by their total (the other classes get
    probability 0); "tail_bucket" keeps their exact probabilities and the remaining mass 1 - sum_k q as one more
    bucket, so nothing is lost but the split of the tail. With k = C both are q itself. Raises ``ValueError`` for
    k < 1, k > C or an unknown mode."""
    num_classes = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"top_k={k!r} is invalid: an integer in 1..{num_classes} (the vocabulary)")
    if mode not in TOP_K_MODES:
        raise ValueError(f"top_k_mode={mode!r} is invalid: one of {', '.join(TOP_K_MODES)}")
    logq = _teacher_log_probs(teacher_logits, temperature)  # (*, C), transient
    log_probs, indices = logq.topk(k, dim=-1)  # (*, k)
    if mode == "renormalized":
        log_probs = log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)
        tail = torch.full(log_probs.shape[:-1], float("-inf"), device=logq.device)
    else:  # the tail's log mass summed over its own classes: no 1 - sum cancellation
        tail = torch.logsumexp(logq.scatter(-1, indices, float("-inf")), dim=-1)
    return TopKTargets(indices, log_probs, tail)


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
    same). Raises ``ValueError`` for reverse KL (or generalized JSD with beta = 1) against renormalized targets,
    which give the tail probability 0: use "tail_bucket" there."""
    _check_beta(beta)
    renormalized = bool(torch.isneginf(teacher.tail_log_mass).all()) and teacher.indices.shape[-1] < logits.shape[-1]
    if renormalized and (loss == "reverse_kl" or (loss == "generalized_jsd" and beta == 1)):
        raise ValueError(
            f"loss={loss!r} against renormalized top-k targets is infinite (the teacher gives the tail "
            "probability 0): use top_k_mode='tail_bucket'"
        )
    if teacher.indices.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"top-k targets of shape {tuple(teacher.indices.shape)} do not match the student logits "
            f"{tuple(logits.shape)}: one teacher distribution per student position"
        )
    mask = supervised_mask(logits, targets)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (*, C)
    student_k = logp.gather(-1, teacher.indices)  # (*, k)
    student_tail = torch.logsumexp(logp.scatter(-1, teacher.indices, float("-inf")), dim=-1)  # (*)
    cells_p = torch.cat([student_k, student_tail[..., None]], dim=-1)  # (*, k + 1)
    cells_q = torch.cat([teacher.log_probs, teacher.tail_log_mass[..., None]], dim=-1)
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
# dtypes and masking are as above.


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

    - target (*, C): ``ce_weight * onehot(targets) + kd_weight * q``, q = softmax(teacher_logits / T), float32;
    - correction (*): ``kd_weight * H(q)`` in nats,

    both 0 at ignored positions, such that ``soft_cross_entropy(logits, target) - correction`` equals
    ``ce_weight * CE(targets) + kd_weight * KL(q || p)`` (:func:`distillation_loss` with forward KL when the
    weights are ``(alpha, 1 - alpha)``) and has the same gradient w.r.t. ``logits``.
    """
    mask = supervised_mask(teacher_logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)  # (*, C)
    onehot = hard_targets(torch.where(mask, targets, torch.zeros_like(targets)), q.shape[-1])
    target = ce_weight[..., None] * onehot + kd_weight[..., None] * q
    entropy = -torch.where(q > 0, q * q.clamp(min=1e-38).log(), torch.zeros_like(q)).sum(-1)  # (*)
    correction = kd_weight * entropy
    return (
        torch.where(mask[..., None], target, torch.zeros_like(target)),
        torch.where(mask, correction, torch.zeros_like(correction)),
    )


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_c target_c log softmax(logits)_c per position, shape (*): logits (*, C); target (*, C)
    distributions (:func:`soft_targets`, :func:`hard_targets`) or (*) class indices without ignored positions.

    PyTorch's fused kernel, in the logits' dtype (unlike the functions above, which work in float32)."""
    num_classes = logits.shape[-1]
    flat = target.reshape(-1) if target.dim() < logits.dim() else target.reshape(-1, num_classes)
    return F.cross_entropy(logits.reshape(-1, num_classes), flat, reduction="none").view(logits.shape[:-1])


def soft_cross_entropy_and_grad(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`soft_cross_entropy` and its gradient, without autograd: logits (*, C), target (*, C) distributions.

    Returns (loss (*), grad (*, C)) with grad = d loss / d logits = softmax(logits) - target, one position's
    loss differentiated w.r.t. its own logits (a mean over B positions scales it by 1 / B). For optimizers with
    gradients written by hand (:meth:`progdistill.models.mlp.MLP.sgd_step`)."""
    logp = torch.log_softmax(logits, dim=-1)  # (*, C)
    loss = (target * logp).sum(dim=-1).neg_()  # (*)
    return loss, logp.exp().sub_(target)
