"""Tests of progdistill.distill.phases: planted transitions are recovered; flat curves and bad input are rejected."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.distill.phases import NoTransitionError, Transition, detect_phases, detect_transition

STEPS = np.arange(0, 10_001, 100)  # 101 checkpoints, spacing 100


def sigmoid_curve(steps, centre, width, low=0.5, high=1.0, noise=0.0, seed=0):
    """Accuracy jumping from ``low`` to ``high`` around ``centre``: logistic with scale ``width`` steps."""
    rng = np.random.default_rng(seed)
    clean = low + (high - low) * 0.5 * (1 + np.tanh((steps - centre) / (2 * width)))  # overflow-free logistic
    return clean + noise * rng.standard_normal(len(steps))


def test_noisy_sigmoid_rise_is_located():
    values = sigmoid_curve(STEPS, centre=6_200, width=150, noise=0.02, seed=1)
    t = detect_transition(STEPS, values)
    assert isinstance(t, Transition)
    assert t.start < t.middle < t.end
    assert {t.start, t.middle, t.end} <= set(STEPS.tolist())
    assert abs(t.middle - 6_200) <= 200
    # the 10%-90% span of a logistic of scale w is 2 ln(9) w ~ 660 steps
    assert abs(t.width - 2 * np.log(9) * 150) <= 300
    assert t.before == pytest.approx(0.5, abs=0.03) and t.after == pytest.approx(1.0, abs=0.03)
    assert t.size == pytest.approx(0.5, abs=0.05)
    assert 0.005 < t.noise < 0.05  # the planted noise is 0.02
    assert json.loads(json.dumps(t.to_dict()))["middle"] == t.middle


def test_clean_sigmoid_crossings_are_exact_up_to_snapping():
    values = sigmoid_curve(STEPS, centre=4_000, width=300)
    t = detect_transition(STEPS, values)
    half_span = np.log(9) * 300  # the 10% and 90% levels sit at centre -/+ ln(9) w
    assert abs(t.middle - 4_000) <= 50
    assert abs(t.start - (4_000 - half_span)) <= 50
    assert abs(t.end - (4_000 + half_span)) <= 50
    assert t.noise < 1e-3  # no planted noise


def test_loss_drop_is_located():
    rng = np.random.default_rng(2)
    steps = np.arange(0, 8_001, 200)
    loss = 1.0 - 0.9 / (1 + np.exp(-(steps - 1_400) / 120)) + 0.01 * rng.standard_normal(len(steps))
    t = detect_transition(steps, loss, "drop")
    assert t.direction == "drop"
    assert t.start < t.middle < t.end
    assert abs(t.middle - 1_400) <= 200
    assert t.before > t.after and t.size == pytest.approx(0.9, abs=0.05)


def test_rise_detector_on_a_falling_curve_says_so():
    values = sigmoid_curve(STEPS, centre=5_000, width=200, low=1.0, high=0.5)
    with pytest.raises(NoTransitionError, match="direction='drop'"):
        detect_transition(STEPS, values, "rise")


def test_step_function_between_two_checkpoints():
    values = np.where(STEPS < 3_050, 0.5, 1.0)  # jump between checkpoints 3000 and 3100
    t = detect_transition(STEPS, values)
    assert (t.start, t.end) == (3_000, 3_100)
    assert t.middle in (3_000, 3_100)
    assert t.before == 0.5 and t.after == 1.0


def test_step_function_survives_outliers():
    rng = np.random.default_rng(3)
    values = np.where(STEPS < 7_000, 0.5, 1.0) + 0.01 * rng.standard_normal(len(STEPS))
    values[20] = 1.0  # a single wild evaluation on the early plateau
    values[90] = 0.5  # and one on the final plateau
    t = detect_transition(STEPS, values)
    assert 6_900 <= t.start <= t.middle <= t.end <= 7_000


def test_two_plateau_levels_not_0_5_to_1():
    values = np.where(STEPS < 2_000, 0.2, 0.35)
    t = detect_transition(STEPS, values)
    assert (t.start, t.end) == (1_900, 2_000)
    assert t.size == pytest.approx(0.15)


def test_three_point_curve():
    t = detect_transition([0, 10, 20], [0.5, 0.5, 1.0])
    assert (t.start, t.end) == (10, 20)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_flat_curve_has_no_transition(level):
    with pytest.raises(NoTransitionError, match=r"no rise.*change is \+0"):
        detect_transition(STEPS, np.full(len(STEPS), level))


def test_noisy_flat_curve_has_no_transition():
    rng = np.random.default_rng(4)
    values = 0.5 + 0.03 * rng.standard_normal(len(STEPS))
    with pytest.raises(NoTransitionError, match="min_change=0.1"):
        detect_transition(STEPS, values)


def test_very_noisy_flat_curve_is_rejected_by_the_noise_rule():
    rng = np.random.default_rng(5)
    values = 0.5 + 0.2 * rng.standard_normal(len(STEPS))
    values[-15:] += 0.2  # a final level that clears min_change but not the noise
    with pytest.raises(NoTransitionError, match="noise"):
        detect_transition(STEPS, values)


def test_small_change_is_detected_when_min_change_allows_it():
    values = sigmoid_curve(STEPS, centre=5_000, width=100, low=0.5, high=0.55)
    with pytest.raises(NoTransitionError, match="change is \\+0.05"):
        detect_transition(STEPS, values)
    assert abs(detect_transition(STEPS, values, min_change=0.01).middle - 5_000) <= 100


def test_detect_phases_on_a_three_phase_loss():
    rng = np.random.default_rng(6)
    steps = np.arange(0, 8_001, 100)
    # plateau ~1.03 to ~600, sharp drop to ~0.17 by ~2000, slow decay to ~0.03 (paper §2)
    drop = 0.86 / (1 + np.exp(-(steps - 1_100) / 150))
    decay = 0.14 * (1 - np.exp(-np.clip(steps - 1_500, 0, None) / 2_000))
    loss = 1.03 - drop - decay + 0.005 * rng.standard_normal(len(steps))
    phases = detect_phases(steps, loss)
    assert phases.plateau[0] == 0 and phases.slow_decay[1] == 8_000
    assert phases.plateau[1] == phases.sharp_drop[0] and phases.sharp_drop[1] == phases.slow_decay[0]
    assert 500 <= phases.sharp_drop[0] <= 900
    assert 1_500 <= phases.sharp_drop[1] <= 3_000
    assert abs(phases.transition.middle - 1_100) <= 200
    assert json.loads(json.dumps(phases.to_dict()))["sharp_drop"] == list(phases.sharp_drop)


def test_detect_phases_flat_loss():
    with pytest.raises(NoTransitionError, match="no drop"):
        detect_phases(STEPS, np.full(len(STEPS), 1.03))


@pytest.mark.parametrize(
    "steps, values, match",
    [
        ([0], [0.5], "at least 3"),
        ([0, 1], [0.5, 1.0], "at least 3"),
        ([0, 1, 2], [0.5, 1.0], "same length"),
        ([0, 2, 1, 3], [0.5, 0.5, 1.0, 1.0], r"strictly increasing \(steps\[1\]=2 is followed by steps\[2\]=1\)"),
        ([0, 1, 1, 3], [0.5, 0.5, 1.0, 1.0], "strictly increasing"),
        ([0, 1.5, 3], [0.5, 0.5, 1.0], "must be integers"),
        ([0, 1, 2, 3], [0.5, float("nan"), 1.0, 1.0], r"values\[1\]=nan"),
        ([0, 1, 2, 3], [0.5, 0.5, float("inf"), 1.0], "finite"),
    ],
)
def test_bad_curves(steps, values, match):
    with pytest.raises(ValueError, match=match) as info:
        detect_transition(steps, values)
    assert not isinstance(info.value, NoTransitionError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "up"}, "direction='up' is invalid: one of 'rise'"),
        ({"window": 4}, "window=4 is invalid: must be an odd positive integer"),
        ({"window": 0}, "window=0"),
        ({"min_change": -0.1}, "min_change=-0.1"),
        ({"min_snr": float("nan")}, "min_snr=nan"),
        ({"fractions": (0.5, 0.1, 0.9)}, "fractions"),
        ({"fractions": (0.0, 0.5, 1.0)}, "fractions"),
    ],
)
def test_bad_options(kwargs, match):
    values = sigmoid_curve(STEPS, centre=5_000, width=100)
    with pytest.raises(ValueError, match=match):
        detect_transition(STEPS, values, **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    centre=st.floats(3_000, 7_000),
    width=st.floats(10, 400),
    seed=st.integers(0, 2**32 - 1),
    direction=st.sampled_from(["rise", "drop"]),
)
def test_random_sigmoids(centre, width, seed, direction):
    values = sigmoid_curve(STEPS, centre, width, noise=0.01, seed=seed)
    if direction == "drop":
        values = 1.5 - values
    t = detect_transition(STEPS, values, direction)
    assert t.start <= t.middle <= t.end
    assert t.start <= centre + 100 and centre - 100 <= t.end
    assert abs(t.middle - centre) <= 100 + 0.5 * width
    assert abs(t.width - 2 * np.log(9) * width) <= 200 + 0.5 * width
    if width >= 60:  # the window spans several checkpoints
        assert t.start < t.middle < t.end


def test_flat_curve_with_min_change_zero_is_still_no_transition():
    with pytest.raises(NoTransitionError, match="change is \\+0"):
        detect_transition(STEPS, np.full(len(STEPS), 0.7), min_change=0.0, min_snr=0.0)


def test_a_flat_curve_gets_no_hint_to_look_the_other_way():
    """The "did you mean" hint names the other direction only when the curve really moves that way."""
    steps = list(range(0, 2000, 100))
    flat = [0.5 + 0.001 * ((i * 7) % 3 - 1) for i in range(20)]
    flat[-3:] = [0.499, 0.498, 0.499]  # a hair lower at the end: no drop to speak of
    with pytest.raises(NoTransitionError) as info:
        detect_transition(steps, flat, "rise")
    assert "did you mean" not in str(info.value)
    falling = [0.9] * 10 + [0.5] * 10
    with pytest.raises(NoTransitionError, match=r"did you mean direction='drop'\?"):
        detect_transition(steps, falling, "rise")
