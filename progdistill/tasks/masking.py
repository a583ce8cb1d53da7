"""Masked language modelling data for PCFG sentences (PAPER.md section 2).

Vocabulary: the grammar's terminals (ids 0..T-1, e.g. a, b, c) followed by the special tokens BOS, EOS, PAD
and MASK. A sentence becomes ``BOS tokens EOS``; a batch is padded with PAD to its longest sentence.
Masking follows BERT: each non-special position is *selected* with probability ``mask_rate`` (default 0.3);
a selected position becomes MASK with probability 0.8, a uniformly random terminal with probability 0.1, and
stays unchanged with probability 0.1. Targets hold the original token at selected positions and
``IGNORE_INDEX`` (-100) everywhere else, so losses and accuracy count selected positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import check
from ..losses import IGNORE_INDEX

SPECIALS = ("BOS", "EOS", "PAD", "MASK")


@dataclass(frozen=True)
class Vocabulary:
    """Terminal names (ids 0..T-1) and the special tokens after them."""

    terminals: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.terminals) + len(SPECIALS)

    def special(self, name: str) -> int:
        """The id of special token ``name`` (one of BOS, EOS, PAD, MASK)."""
        check(name in SPECIALS, "special token", name, f"one of {', '.join(SPECIALS)}")
        return len(self.terminals) + SPECIALS.index(name)

    @property
    def bos(self) -> int:
        return self.special("BOS")

    @property
    def eos(self) -> int:
        return self.special("EOS")

    @property
    def pad(self) -> int:
        return self.special("PAD")

    @property
    def mask(self) -> int:
        return self.special("MASK")


def pad_sentences(sentences: Sequence[Sequence[int]], vocab: Vocabulary,
                  max_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS s EOS`` for every sentence, padded with PAD: ids (B, L) int64 and attention mask (B, L) bool,
    L = longest sentence + 2. Raises ``ValueError`` naming the length when L exceeds ``max_positions`` (the
    model's position embeddings) and when a token is not a terminal id."""
    check(len(sentences) > 0, "sentences", len(sentences), "need at least one sentence")
    longest = max(len(s) for s in sentences) + 2
    if max_positions is not None and longest > max_positions:
        raise ValueError(f"a sentence of {longest - 2} tokens needs {longest} positions (with BOS and EOS), "
                         f"more than the model's max_positions={max_positions}")
    ids = torch.full((len(sentences), longest), vocab.pad, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        tokens = torch.as_tensor(sentence, dtype=torch.long)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(vocab.terminals)):
            raise ValueError(f"sentence {i} has a token outside the terminal ids 0..{len(vocab.terminals) - 1}")
        ids[i, 0] = vocab.bos
        ids[i, 1:len(tokens) + 1] = tokens
        ids[i, len(tokens) + 1] = vocab.eos
    return ids, ids != vocab.pad


def mask_tokens(ids: torch.Tensor, vocab: Vocabulary, mask_rate: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking of terminal positions: returns (inputs (B, L), targets (B, L)).

    ``targets`` is the original id at selected positions and -100 elsewhere; special tokens are never selected.
    Raises ``ValueError`` unless 0 < mask_rate < 1. Deterministic given ``generator``.
    """
    return bert_mask(ids, ids < len(vocab.terminals), vocab.mask, (0, len(vocab.terminals)), mask_rate, generator)


def bert_mask(ids: torch.Tensor, selectable: torch.Tensor, mask_id: int, random_ids: tuple[int, int],
              mask_rate: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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
