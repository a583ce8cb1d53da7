"""The objective as the training loop applies it (paper §1-§4): per-position weights, and a *fused* form.

:func:`mixture_weights` and :func:`weighted_distillation_loss` give ``alpha * CE + (1 - alpha) * D`` per position,
with CE alone where a position has no teacher. The fast paths use an equivalent fused form with forward KL
(:func:`soft_targets`, :func:`soft_cross_entropy` and :func:`soft_cross_entropy_and_grad`):
``alpha * CE(y) + (1 - alpha) * KL(q || p)`` is one cross-entropy against the mixture target
``alpha * onehot(y) + (1 - alpha) * q`` minus the constant ``(1 - alpha) * H(q)``, so both have the same
gradient. Tests check the fused form against :func:`progdistill.distill.losses.distillation_loss`, values and gradients.
Shapes, dtypes and masking follow :mod:`progdistill.distill.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from progdistill.distill.losses import cross_entropy, divergence, supervised_mask, teacher_probabilities


def mixture_weights(alpha: float, has_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the two terms of the objective at every position: ``(alpha, 1 - alpha)`` where
    ``has_teacher`` (bool, any shape) is True, ``(1, 0)`` -- cross-entropy alone -- where it is False.
    Returns (ce_weight, kd_weight), float32 tensors of ``has_teacher``'s shape."""
    kd_weight = has_teacher.float()
    ce_weight = torch.where(has_teacher, torch.full_like(kd_weight, alpha), torch.ones_like(kd_weight))
    return ce_weight, kd_weight * (1 - alpha)


def weighted_distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                               loss: str, temperature: float | torch.Tensor, ce_weight: torch.Tensor,
                               kd_weight: torch.Tensor, **options) -> torch.Tensor:
    """``ce_weight * CE(targets) + kd_weight * D(teacher || student)`` per position, shape (*), with
    per-position weights from :func:`mixture_weights` (broadcastable to (*)); D named by ``loss`` with the
    keyword ``options`` of :func:`divergence`; 0 at ignored positions. With ``(alpha, 1 - alpha)`` everywhere it
    is :func:`distillation_loss` with ``reduction="none"``."""
    kd = divergence(logits, teacher_logits, loss, temperature, targets, "none", **options)
    return ce_weight * cross_entropy(logits, targets, reduction="none") + kd_weight * kd


def hard_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (*) as one-hot distributions (*, C), float32: the soft-target form of cross-entropy."""
    return F.one_hot(targets, num_classes).float()


def soft_targets(teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor,
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
    mask = supervised_mask(teacher_logits, targets)
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
