"""Seeded random streams: every random draw in progdistill comes from a ``torch.Generator`` named by a seed and
a stream ("teacher-data", "student-init", ...), so the same seed gives the same numbers, bit for bit on CPU."""

from __future__ import annotations

import hashlib

import torch


def seed_for(seed: int, stream: str) -> int:
    """A stable 63-bit seed for the named random stream of ``seed`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator seeded with :func:`seed_for` ``(seed, stream)``."""
    return torch.Generator().manual_seed(seed_for(seed, stream))
