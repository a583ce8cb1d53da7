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

The plain objective is :func:`distillation_loss`. The training loop's fast paths use an equivalent *fused*
form of it with forward KL (:func:`mixture_weights`, :func:`soft_targets`, :func:`soft_cross_entropy` and
:func:`soft_cross_entropy_and_grad`): ``alpha * CE(y) + (1 - alpha) * KL(q || p)`` is one cross-entropy
against the mixture target ``alpha * onehot(y) + (1 - alpha) * q`` minus the constant ``(1 - alpha) * H(q)``,
so both have the same gradient. Tests check the fused form against the plain one, values and gradients.
"""

from __future__ import annotations

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


def _mask(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal logits shape without the class "
                         f"dimension, {tuple(logits.shape[:-1])}")
    return targets != IGNORE_INDEX


def _check_pair(logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    # Broadcasting would silently pair a student position with another position's teacher.
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal the student logits shape "
                         f"{tuple(logits.shape)}: one teacher distribution per student position")


def _check_temperature(temperature) -> None:
    if torch.is_tensor(temperature):  # per-position temperatures (a temperature curriculum)
        if not bool((temperature >= 0).all()):  # NaN included
            raise ValueError(f"temperature={temperature!r} is invalid: every entry must be >= 0")
    elif not temperature >= 0:  # NaN included
        raise ValueError(f"temperature={temperature!r} is invalid: must be >= 0")


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
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
    mask = _mask(logits, targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return _reduce(per_position, mask, reduction)


def distillation_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                               targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """-sum_c q_c log p_c with q = softmax(teacher_logits / T), p = softmax(student logits).

    Equals forward KL plus the teacher's entropy, so the two have the same gradients. ``targets`` is only
    used for its ignore mask. T = 0 is cross-entropy on the teacher's argmax.
    """
    _check_pair(logits, teacher_logits)
    mask = _mask(logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = -torch.where(q > 0, q * logp, torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


def forward_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """KL(q || p) = sum_c q_c (log q_c - log p_c), q = softmax(teacher_logits / T); >= 0, exactly 0 for equal
    logits at T = 1."""
    _check_pair(logits, teacher_logits)
    mask = _mask(logits, targets)
    # log q as a log_softmax, the student's own formula: log(q) would differ from log p by rounding for equal
    # logits. log q carries no gradient, so the gradient, p - q, is that of the distillation cross-entropy.
    q, logq = _teacher(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = torch.where(q > 0, q * (logq - logp), torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(_non_negative(per_position), mask, reduction)


def reverse_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), q = softmax(teacher_logits / T); needs T > 0. >= 0, exactly 0
    for equal logits at T = 1.

    Columns where the student's probability is 0 contribute 0 (0 log 0 = 0), so -inf logits on both sides (a
    masked vocabulary) are fine. q is floored at the smallest normal float32 (log q >= -87.3): where the teacher
    rounds a class to probability 0 that the student gives mass to (a T too small to divide by), the divergence
    is large but finite."""
    if not bool(torch.as_tensor(temperature > 0).all()):
        raise ValueError(f"temperature={temperature!r} is invalid for reverse KL: must be > 0 "
                         "(a one-hot teacher makes reverse KL infinite)")
    _check_pair(logits, teacher_logits)
    mask = _mask(logits, targets)
    logq = _teacher(teacher_logits, temperature)[1].clamp(min=_LOG_TINY)
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # Where p = 0 the log ratio may be -inf - (-inf): set it to 0 before the product, whose gradient uses it.
    log_ratio = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    per_position = (p * log_ratio).sum(dim=-1)
    return _reduce(_non_negative(per_position), mask, reduction)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
                      loss: str = "forward_kl", temperature: float = 1.0, alpha: float = 0.0,
                      reduction: str = "mean") -> torch.Tensor:
    """``alpha * CE(targets) + (1 - alpha) * D(teacher || student)``, D named by ``loss``
    ("forward_kl" or "reverse_kl"). ``targets`` may be None only when ``alpha == 0``."""
    if loss == "forward_kl":
        kd = forward_kl(logits, teacher_logits, temperature, targets, reduction)
    elif loss == "reverse_kl":
        kd = reverse_kl(logits, teacher_logits, temperature, targets, reduction)
    else:
        raise ValueError(f"loss={loss!r} is invalid: one of 'forward_kl', 'reverse_kl'")
    if alpha == 0:
        return kd
    if targets is None:
        raise ValueError("alpha > 0 mixes in cross-entropy on true labels, so targets are required")
    return alpha * cross_entropy(logits, targets, reduction) + (1 - alpha) * kd


def mixture_weights(alpha: float, has_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the two terms of the objective at every position: ``(alpha, 1 - alpha)`` where
    ``has_teacher`` (bool, any shape) is True, ``(1, 0)`` -- cross-entropy alone -- where it is False.
    Returns (ce_weight, kd_weight), float32 tensors of ``has_teacher``'s shape."""
    kd_weight = has_teacher.float()
    ce_weight = torch.where(has_teacher, torch.full_like(kd_weight, alpha), torch.ones_like(kd_weight))
    return ce_weight, kd_weight * (1 - alpha)


def weighted_distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                               loss: str, temperature: float, ce_weight: torch.Tensor,
                               kd_weight: torch.Tensor) -> torch.Tensor:
    """``ce_weight * CE(targets) + kd_weight * D(teacher || student)`` per position, shape (*), with
    per-position weights from :func:`mixture_weights` (broadcastable to (*)); D named by ``loss``; 0 at ignored
    positions. With ``(alpha, 1 - alpha)`` everywhere it is :func:`distillation_loss` with ``reduction="none"``."""
    kd = forward_kl if loss == "forward_kl" else reverse_kl if loss == "reverse_kl" else None
    if kd is None:
        raise ValueError(f"loss={loss!r} is invalid: one of 'forward_kl', 'reverse_kl'")
    return ce_weight * cross_entropy(logits, targets, reduction="none") \
        + kd_weight * kd(logits, teacher_logits, temperature, targets, reduction="none")


def hard_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (*) as one-hot distributions (*, C), float32: the soft-target form of cross-entropy."""
    return F.one_hot(targets, num_classes).float()


def soft_targets(teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                 ce_weight: torch.Tensor, kd_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    mask = _mask(teacher_logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)  # (*, C)
    onehot = hard_targets(torch.where(mask, targets, torch.zeros_like(targets)), q.shape[-1])
    target = ce_weight[..., None] * onehot + kd_weight[..., None] * q
    entropy = -torch.where(q > 0, q * q.clamp(min=1e-38).log(), torch.zeros_like(q)).sum(-1)  # (*)
    correction = kd_weight * entropy
    return (torch.where(mask[..., None], target, torch.zeros_like(target)),
            torch.where(mask, correction, torch.zeros_like(correction)))


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
