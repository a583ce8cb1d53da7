"""BERT's 80/10/10 masking of token sequences, shared by the masked LM tasks (paper §2 grammars, §4 text).

Each selectable (non-special) position is *selected* with probability ``mask_rate``; a selected position
becomes MASK with probability 0.8, a uniformly random ordinary token with probability 0.1, and stays unchanged
with probability 0.1. Targets hold the original token at selected positions and ``IGNORE_INDEX`` (-100)
everywhere else, so losses and accuracy count selected positions only.
"""

from __future__ import annotations

import torch

from progdistill.tasks.base import IGNORE_INDEX


def bert_mask(
    ids: torch.Tensor,
    selectable: torch.Tensor,
    mask_id: int,
    random_ids: tuple[int, int],
    mask_rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking of any vocabulary (Devlin et al. 2019, section 3.1).

    ``ids`` (B, L) int64; ``selectable`` (B, L) bool: positions that may be selected (not special tokens);
    each is selected with probability ``mask_rate``, then replaced by ``mask_id`` with probability 0.8, by an
    id drawn uniformly from ``range(*random_ids)`` with probability 0.1, and kept with probability 0.1.
    Returns (inputs, targets), targets = original id at selected positions, -100 elsewhere. Raises
    ``ValueError`` unless 0 < mask_rate < 1.
    """
    if not (isinstance(mask_rate, (int, float)) and 0 < mask_rate < 1):
        raise ValueError(f"mask_rate={mask_rate!r} is invalid: must lie in (0, 1)")
    u = torch.rand(ids.shape, generator=generator)
    selected = selectable & (u < mask_rate)
    action = torch.rand(ids.shape, generator=generator)  # < 0.8: MASK; < 0.9: random token; else keep
    random_tokens = torch.randint(random_ids[0], random_ids[1], ids.shape, generator=generator)
    inputs = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    targets = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, targets
