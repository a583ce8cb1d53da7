"""Non-finite values in training: the error that stops a run, and the check of a step's gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from progdistill.core.distributed import all_true


class NonFiniteError(FloatingPointError):
    """A loss became NaN or inf; the message names the run, the step range and the quantity."""


def grads_finite(params, device) -> bool:
    """Whether every gradient is finite, on every process (one sync). No gradient at all (a step without a
    supervised token) is finite."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return all_true(not sums or bool(torch.isfinite(torch.stack(sums)).all()), device)


def non_finite_error(culprits: Sequence[str], what: str, step: int) -> NonFiniteError:
    return NonFiniteError(f"{', '.join(culprits)}: non-finite {what} at step {step}; everything saved before it "
                          "is kept (on_non_finite='skip' skips such steps)")
