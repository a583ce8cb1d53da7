"""The resume state of an interrupted training run: one file, written atomically at every record.

:func:`progdistill.train.loop.fit` saves its complete state (weights, optimizer, learning-rate schedule, data
generators, records, member names) with :func:`save_state` and continues from :func:`load_state` on a later
call with the same members, so an interrupted run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` (``torch.save``) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path | None, names: list[str]) -> dict | None:
    """The saved training state at ``path`` if it belongs to exactly the members ``names``, else None (also
    when ``path`` is None or missing, and, with a warning, when the file cannot be read)."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # an unreadable state file cannot be trusted: start over, saying so
        warnings.warn(f"ignoring unreadable resume state {path}: {exc}", stacklevel=2)
        return None
    return state if state.get("names") == names else None
