"""How many CPU threads a run uses: chosen from the work and the core count, never from the momentary load.

The thread count changes how float sums are split, so it changes a run's numbers in the last bits; the
choice is therefore a function of the config (the size of a training step) and of the machine (its core
count) alone, so that the same config on the same machine gives the same numbers whatever else is running.

Why not always every core: a small step (the parity MLPs: ~100k parameters at batch 32) gains at most ~1.25x
from a second thread on an idle machine, but on a shared one OpenMP's waiting threads make it 10-50x slower
(docs/benchmarks.md). Such steps run on one thread; larger ones on every core. ``progdistill/__init__.py``
also makes idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless the environment
says otherwise), which changes no number.
"""

from __future__ import annotations

import os

import torch

from progdistill.core.config import ConfigError

# Parameters x examples of the largest training step (teacher, or the stack of students) below which a run
# uses one thread: the parity MLPs' steps (~3.4M for the width-2000 teacher at batch 32) are below it, the
# parity transformer teacher's (~17M) above.
SMALL_STEP = 8_000_000

_CHOICE: dict[str, str] = {}  # "by": what set the current process's thread count (absent: torch's default)


def choose_threads(step_size: int | None, cores: int | None) -> int:
    """The thread count for a run whose largest training step has ``step_size`` parameters x examples, on a
    machine of ``cores`` cores: 1 below :data:`SMALL_STEP`, else every core (also when the size is unknown)."""
    cores = max(1, cores or 1)
    return 1 if step_size is not None and step_size < SMALL_STEP else cores


def set_threads(requested: int | None, step_size: int | None) -> int:
    """Set torch's intra-op thread count for this process and return it: ``requested`` (``--threads``) when
    given, else ``OMP_NUM_THREADS`` when the environment sets it, else :func:`choose_threads`. Raises
    :class:`~progdistill.core.config.ConfigError` naming ``--threads`` for a count below 1; :func:`chosen_by`
    says afterwards which one decided."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested} is invalid: must be a positive integer")
        count, by = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        count, by = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        count = choose_threads(step_size, os.cpu_count())
        by = f"step size {step_size if step_size is not None else 'unknown'} on {os.cpu_count()} cores"
    torch.set_num_threads(count)
    _CHOICE["by"] = by
    return count


def chosen_by() -> str | None:
    """What set this process's thread count (:func:`set_threads`): "--threads", "OMP_NUM_THREADS", or the
    rule's inputs ("step size 3400000 on 2 cores"); None when nothing set it (torch's default)."""
    return _CHOICE.get("by")
