"""Losses as pure functions (PAPER.md, "Distillation loss").

Shapes: ``logits`` and ``teacher_logits`` are (*, C) over C classes; ``targets`` is (*) of class indices,
where ``IGNORE_INDEX`` (-100, PyTorch's default) marks positions that carry no supervision. With
``reduction="mean"`` a loss is averaged over supervised positions only (a batch with none gives 0, never
NaN); with ``reduction="none"`` it is returned per position, shape (*), 0 at ignored positions.

All arithmetic is done in float32 whatever the input dtype (float16 and bfloat16 logits included), so a
temperature close to 0 cannot overflow into inf or NaN. Losses are in nats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


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


def teacher_probabilities(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(teacher_logits / T) in float32, shape (*, C); T = 0 gives the one-hot argmax."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} is invalid: must be >= 0")
    logits = teacher_logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits / temperature, dim=-1)


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
    mask = _mask(logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = -torch.where(q > 0, q * logp, torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


def forward_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """KL(q || p) = sum_c q_c (log q_c - log p_c), q = softmax(teacher_logits / T); 0 when they agree."""
    mask = _mask(logits, targets)
    q = teacher_probabilities(teacher_logits, temperature)
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log(q.clamp(min=torch.finfo(torch.float32).tiny))
    per_position = torch.where(q > 0, q * (logq - logp), torch.zeros_like(logp)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


def reverse_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), q = softmax(teacher_logits / T); needs T > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is invalid for reverse KL: must be > 0 "
                         "(a one-hot teacher makes reverse KL infinite)")
    mask = _mask(logits, targets)
    logq = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = (logp.exp() * (logp - logq)).sum(dim=-1)
    return _reduce(per_position, mask, reduction)


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
