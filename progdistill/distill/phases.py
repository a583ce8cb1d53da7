"""Phase-transition detection on evaluation curves (paper §1 and §2).

A *transition* is the short window in which a curve moves from its early plateau to its final level: the
teacher's accuracy jump on sparse parity (``direction="rise"``), or the sharp drop of a masked-LM loss
(``direction="drop"``). The detector is a pure function of (steps, values):

1. smooth with a running median of ``window`` checkpoints (shrunk for short curves, truncated at the ends),
   so single noisy evaluations cannot create or hide a crossing;
2. ``before`` / ``after`` = the medians of the raw values over the first and last m checkpoints, the early
   plateau and the final level, m = max(window // 2 + 1, N // 10) for N checkpoints (see
   :func:`plateau_length`); they also replace the two end points of the smoothed curve;
3. no-transition rule: the change ``after - before`` (``before - after`` for a drop) must be at least
   ``min_change`` (absolute, curve units) *and* at least ``min_snr`` times the evaluation noise (see
   :func:`estimate_noise`; not estimated, so not used, below 9 checkpoints); otherwise
   :class:`NoTransitionError`;
4. normalise to u in [0, 1] (u = 0 at ``before``, 1 at ``after``); ``middle`` is the steepest upward
   crossing of u = 0.5, ``start`` the last crossing of u = 0.1 before it and ``end`` the first crossing of
   u = 0.9 after it (levels set by ``fractions``), each linearly interpolated between checkpoints and then
   snapped to the nearest checkpoint step (ties go to the earlier one).

So ``start <= middle <= end`` are always members of ``steps``; they are distinct when the transition spans
a few checkpoints, and for a jump between two consecutive checkpoints ``start`` and ``end`` are those two.
The early plateau must cover more than half of the first m checkpoints for its level to be read correctly
(a transition in the first ~5% of the run is not located reliably); likewise the final level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DIRECTIONS = ("rise", "drop")
MAD_TO_STD = 1.4826  # std of a Gaussian = 1.4826 * its median absolute deviation


class NoTransitionError(ValueError):
    """The curve has no transition: its total change is below ``min_change`` or below the noise rule.
    ``reason``: why, without ``hint`` (a suggestion for callers of :func:`detect_transition`, such as the other
    ``direction``); the message is both."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason + hint)
        self.reason, self.hint = reason, hint


@dataclass(frozen=True)
class Transition:
    """A detected transition. ``start``, ``middle``, ``end`` are checkpoint steps (members of ``steps``);
    ``before`` / ``after`` are the early plateau and final level in the curve's units; ``noise`` is the
    estimated std of the evaluation noise (0 when the curve is too short to estimate it)."""

    direction: str
    start: int
    middle: int
    end: int
    before: float
    after: float
    noise: float

    @property
    def size(self) -> float:
        """Magnitude of the change, |after - before|, in the curve's units."""
        return abs(self.after - self.before)

    @property
    def width(self) -> int:
        """Duration of the transition, ``end - start``, in steps."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": self.size, "width": self.width}


@dataclass(frozen=True)
class Phases:
    """The three phases of a masked-LM loss curve (paper §2) as inclusive (first, last) step
    ranges; adjacent phases share their boundary checkpoint. ``slow_decay`` is (last, last) when the run
    ends inside the sharp drop."""

    plateau: tuple[int, int]
    sharp_drop: tuple[int, int]
    slow_decay: tuple[int, int]
    transition: Transition

    def to_dict(self) -> dict[str, Any]:
        return {
            "plateau": list(self.plateau),
            "sharp_drop": list(self.sharp_drop),
            "slow_decay": list(self.slow_decay),
            "transition": self.transition.to_dict(),
        }


# ----------------------------------------------------------------------------------------------------------
# Validation


def _invalid(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: {allowed}")


def _check_curve(
    steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    steps_arr = np.asarray(steps)
    values_arr = np.asarray(values, dtype=np.float64)
    if steps_arr.ndim != 1 or values_arr.ndim != 1:
        raise ValueError(f"steps and values must be 1-D sequences, got shapes {steps_arr.shape} and {values_arr.shape}")
    if len(steps_arr) != len(values_arr):
        raise ValueError(f"steps and values must have the same length, got {len(steps_arr)} and {len(values_arr)}")
    if len(steps_arr) < 3:
        raise _invalid("len(steps)", len(steps_arr), "need at least 3 checkpoints to locate a transition")
    if not np.issubdtype(steps_arr.dtype, np.integer) and not (
        np.issubdtype(steps_arr.dtype, np.floating)
        and np.all(np.isfinite(steps_arr))
        and np.all(steps_arr == np.round(steps_arr))
    ):
        raise _invalid("steps", steps, "must be integers")
    steps_arr = steps_arr.astype(np.int64)
    bad = np.flatnonzero(np.diff(steps_arr) <= 0)
    if len(bad):
        i = int(bad[0])
        raise _invalid(
            "steps",
            steps,
            f"must be strictly increasing (steps[{i}]={steps_arr[i]} is followed by steps[{i + 1}]={steps_arr[i + 1]})",
        )
    nonfinite = np.flatnonzero(~np.isfinite(values_arr))
    if len(nonfinite):
        i = int(nonfinite[0])
        raise _invalid(f"values[{i}]", float(values_arr[i]), "values must be finite (no NaN or inf)")
    return steps_arr, values_arr


def _check_options(
    direction: str, window: int, min_change: float, min_snr: float, fractions: tuple[float, float, float]
) -> None:
    if direction not in DIRECTIONS:
        raise _invalid("direction", direction, "one of 'rise' (accuracy jumps), 'drop' (loss falls)")
    if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1 and window % 2 == 1):
        raise _invalid("window", window, "must be an odd positive integer")
    if not (np.isfinite(min_change) and min_change >= 0):
        raise _invalid("min_change", min_change, "must be a finite number >= 0")
    if not (np.isfinite(min_snr) and min_snr >= 0):
        raise _invalid("min_snr", min_snr, "must be a finite number >= 0")
    if not (len(fractions) == 3 and 0 < fractions[0] < fractions[1] < fractions[2] < 1):
        raise _invalid("fractions", fractions, "must be three increasing levels in (0, 1), e.g. (0.1, 0.5, 0.9)")


# ----------------------------------------------------------------------------------------------------------
# Pieces


def effective_window(window: int, num_points: int) -> int:
    """The running-median window actually used: ``window`` shrunk to the largest odd number <= a third of
    the curve, so smoothing never eats a plateau of a short curve (1 = no smoothing)."""
    w = min(window, num_points // 3)
    return max(1, w if w % 2 == 1 else w - 1)


def plateau_length(window: int, num_points: int) -> int:
    """m, the number of checkpoints at each end whose median is taken as a plateau level: a tenth of the
    curve, at least the half-window of the running median (1 for a three-point curve)."""
    return max(window // 2 + 1, num_points // 10)


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median, (N,) -> (N,); the window is truncated at the ends (never padded)."""
    half = window // 2
    n = len(values)
    return np.array([np.median(values[max(0, i - half) : i + half + 1]) for i in range(n)])


def estimate_noise(values: np.ndarray) -> float:
    """Std of i.i.d. evaluation noise from consecutive differences, (N,) -> float: 1.4826 * median |diff| /
    sqrt(2). Plateaus contribute pure noise; the few large differences of a transition barely move the
    median, so the estimate is robust to it (0 for a noise-free curve)."""
    return float(MAD_TO_STD * np.median(np.abs(np.diff(values))) / np.sqrt(2))


def _crossing(steps: np.ndarray, u: np.ndarray, i: int, level: float) -> float:
    """Step at which u reaches ``level`` between checkpoints i and i + 1 (linear interpolation)."""
    t = (level - u[i]) / (u[i + 1] - u[i])
    return float(steps[i] + t * (steps[i + 1] - steps[i]))


def _nearest(steps: np.ndarray, step: float) -> int:
    return int(steps[int(np.argmin(np.abs(steps - step)))])


# ----------------------------------------------------------------------------------------------------------
# Public


def detect_transition(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    direction: str = "rise",
    *,
    window: int = 5,
    min_change: float = 0.1,
    min_snr: float = 4.0,
    fractions: tuple[float, float, float] = (0.1, 0.5, 0.9),
) -> Transition:
    """Locate the sharpest rise (or drop) of a curve sampled at checkpoint ``steps``.

    ``steps``: (N,) strictly increasing integers, N >= 3; ``values``: (N,) finite numbers (accuracy for
    "rise", loss for "drop"). ``min_change`` is absolute, in the curve's units (the default 0.1 suits an
    accuracy in [0, 1]; pass a value suited to a loss's scale). See the module docstring for the method.

    Raises :class:`NoTransitionError` when the change between the early plateau and the final level is
    below ``min_change`` or below ``min_snr`` times the estimated noise (a flat or noisy-flat curve, or a
    curve that moves the other way); ``ValueError`` for malformed input or options.
    """
    _check_options(direction, window, min_change, min_snr, fractions)
    steps_arr, y = _check_curve(steps, values)
    w = effective_window(window, len(y))
    smooth = running_median(y, w)  # (N,)
    noise = estimate_noise(y) if w > 1 else 0.0  # too short a curve to tell noise from signal
    m = plateau_length(w, len(y))
    before, after = float(np.median(y[:m])), float(np.median(y[-m:]))
    smooth[0], smooth[-1] = before, after  # so u[0] = 0 and u[-1] = 1 below

    sign = 1.0 if direction == "rise" else -1.0
    change = sign * (after - before)
    if change <= 0 or change < min_change or change < min_snr * noise:
        other = "drop" if direction == "rise" else "rise"
        opposite = -change >= min_change and -change >= min_snr * noise  # a real transition the other way
        hint = f"; the curve moves the other way, did you mean direction={other!r}?" if opposite else ""
        rule = (
            f"below min_change={min_change:g}"
            if change <= 0 or change < min_change
            else f"below min_snr={min_snr:g} x the estimated noise {noise:.3g}"
        )
        raise NoTransitionError(
            f"no {direction} in the curve: from the early level {before:.4g} to the final "
            f"level {after:.4g} the change is {change:+.4g} in the {direction} direction, "
            f"{rule}",
            hint,
        )

    u = (smooth - before) / (after - before)  # (N,) 0 at the early plateau, 1 at the final level
    low, mid, high = fractions
    ups = np.flatnonzero((u[:-1] < mid) & (u[1:] >= mid))  # upward crossings of the half-way level
    i_mid = int(ups[np.argmax(u[ups + 1] - u[ups])])  # u[0] = 0 and u[-1] = 1, so ups is never empty
    i_start = int(np.flatnonzero(u[: i_mid + 1] <= low)[-1])
    i_end = i_mid + 1 + int(np.flatnonzero(u[i_mid + 1 :] >= high)[0])
    return Transition(
        direction=direction,
        start=_nearest(steps_arr, _crossing(steps_arr, u, i_start, low)),
        middle=_nearest(steps_arr, _crossing(steps_arr, u, i_mid, mid)),
        end=_nearest(steps_arr, _crossing(steps_arr, u, i_end - 1, high)),
        before=before,
        after=after,
        noise=noise,
    )


def detect_phases(
    steps: Sequence[int],
    loss: Sequence[float],
    *,
    window: int = 5,
    min_change: float = 0.1,
    min_snr: float = 4.0,
    fractions: tuple[float, float, float] = (0.1, 0.5, 0.9),
) -> Phases:
    """Split a masked-LM loss curve into plateau, sharp drop and slow decay (paper §2 and §4).

    The sharp drop is the transition found by ``detect_transition(direction="drop")`` (``min_change`` in
    nats); the plateau runs from the first checkpoint to its start, the slow decay from its end to the last
    checkpoint. A checkpoint at step 0 (the untrained model, whose loss of about log(vocabulary size) lies far
    above the plateau and falls within the first few steps) is left out of the detection, or that initial fall
    would read as the sharp drop; it still belongs to the plateau's range. Raises :class:`NoTransitionError`
    when the loss has no drop, ``ValueError`` on bad input.
    """
    steps_arr, values = _check_curve(steps, loss)
    first, last = int(steps_arr[0]), int(steps_arr[-1])
    if len(steps_arr) > 3 and first == 0:
        steps_arr, values = steps_arr[1:], values[1:]
    t = detect_transition(
        steps_arr, values, "drop", window=window, min_change=min_change, min_snr=min_snr, fractions=fractions
    )
    return Phases(plateau=(first, t.start), sharp_drop=(t.start, t.end), slow_decay=(t.end, last), transition=t)
