from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
from conftest import tiny_config

import progdistill.distill.curricula  # noqa: F401  (registers the curricula, as importing progdistill does)
from progdistill.core.config import ConfigError, from_dict, lookup_variant, to_dict
from progdistill.distill.schedules import (
    CE,
    FINAL,
    KShot,
    OneShot,
    Progressive,
    Schedule,
    TeacherSpec,
    TwoShotAuto,
    schedule_kinds,
)

STEPS = [0, 100, 200, 300, 400]


def test_ce_has_no_teacher():
    assert all(CE().checkpoint_at(t, STEPS) is None for t in range(0, 1000, 37))


def test_one_shot_is_final_checkpoint():
    assert {OneShot().checkpoint_at(t, STEPS) for t in range(0, 2000, 13)} == {400}


def test_progressive_follows_teacher_timeline_one_checkpoint_ahead():
    p = Progressive()
    assert [p.checkpoint_at(t, STEPS) for t in (0, 99, 100, 199, 200, 399, 400, 10_000)] == [
        100,
        100,
        200,
        200,
        300,
        400,
        400,
        400,
    ]


def test_progressive_speed_factor_shortens_interval():
    p = Progressive(speed=2.0)  # 100 teacher steps per 50 student steps
    assert [p.checkpoint_at(t, STEPS) for t in (0, 49, 50, 99, 100, 150, 199, 200)] == [
        100,
        100,
        200,
        200,
        300,
        400,
        400,
        400,
    ]
    assert Progressive(speed=0.5).checkpoint_at(199, STEPS) == 100
    assert Progressive(speed=0.5).checkpoint_at(200, STEPS) == 200


def test_progressive_handles_uneven_checkpoints():
    steps = [0, 10, 50, 400]
    assert [Progressive().checkpoint_at(t, steps) for t in (0, 9, 10, 49, 50, 500)] == [10, 10, 50, 50, 400, 400]


def test_k_shot_mapping():
    two = KShot(points=((200, 150), (FINAL, 100)))
    assert two.label == "2-shot"
    assert [two.checkpoint_at(t, STEPS) for t in (0, 149, 150, 249, 250, 5000)] == [200, 200, 400, 400, 400, 400]
    three = KShot(points=((100, 10), (300, 10), (400, 10)))
    assert [three.checkpoint_at(t, STEPS) for t in (0, 10, 20, 29, 30)] == [100, 300, 400, 400, 400]


def test_k_shot_naming_missing_checkpoint_is_an_error():
    with pytest.raises(ConfigError, match=r"schedule.points\.0\.0=150.*available steps"):
        KShot(points=((150, 10), (FINAL, 10))).validate(STEPS)
    KShot(points=((100, 10), (FINAL, 10))).validate(STEPS)


@pytest.mark.parametrize(
    "points, field", [((), "schedule.points"), (((100, 0),), r"points\.0\.1"), (((-5, 10),), r"points\.0\.0")]
)
def test_k_shot_bad_points(points, field):
    with pytest.raises(ConfigError, match=field):
        KShot(points=points)


def test_named_k_shot_schedules_tell_two_2_shots_apart():
    from dataclasses import replace

    from progdistill.experiment import ExperimentConfig
    from progdistill.recipes.presets import get_preset

    early, late = KShot(points=((1000, 10), (FINAL, 10))), KShot(points=((3000, 10), (FINAL, 10)))
    base = get_preset("parity-mlp")
    with pytest.raises(ConfigError, match='labels must be distinct.*a "name"'):
        replace(base, schedules=(early, late))
    named = replace(early, name="2-shot-1000")
    assert named.label == "2-shot-1000" and to_dict(named)["name"] == "2-shot-1000"
    assert [s.label for s in replace(base, schedules=(named, late)).schedules] == ["2-shot-1000", "2-shot"]
    assert from_dict(KShot, {"points": [[1000, 10], [-1, 10]], "name": "2-shot-1000"}) == named
    assert "name" not in to_dict(early)  # left out when unset: existing runs keep their config hash
    assert to_dict(early, complete=True)["name"] is None
    assert ExperimentConfig.from_dict(base.to_dict()) == base
    for bad in ("a/b", "a" * 101, "-x", ""):
        with pytest.raises(ConfigError, match="schedule.name=.*1 to 100 letters, digits"):
            KShot(points=((100, 10),), name=bad)
    for misleading in ("teacher", "3-shot"):
        with pytest.raises(ConfigError, match="must not be 'teacher', nor 'k-shot' with k other than"):
            KShot(points=((100, 10), (FINAL, 10)), name=misleading)
    assert KShot(points=((100, 10), (FINAL, 10)), name="2-shot").label == "2-shot"


def test_progressive_at_speed_one_and_a_half_by_hand():
    # Student step t follows the teacher's time 1.5 t: the first checkpoint saved after it, then the final one.
    p = Progressive(speed=1.5)
    expected = {0: 100, 66: 100, 67: 200, 133: 200, 134: 300, 199: 300, 200: 400, 266: 400, 267: 400, 10**6: 400}
    assert {t: p.checkpoint_at(t, STEPS) for t in expected} == expected
    assert p.checkpoint_at(67, list(reversed(STEPS))) == 200  # the order the steps come in does not matter


def test_schedules_round_trip_and_unknown_kind():
    for sched in (CE(), OneShot(), Progressive(speed=2.0), KShot(points=((100, 5), (FINAL, 5)))):
        data = to_dict(sched)
        assert from_dict(type(sched), {k: v for k, v in data.items() if k != "type"}) == sched
        assert lookup_variant("schedule", data["type"]) is type(sched)
    with pytest.raises(
        ConfigError,
        match="valid: 2-shot-auto, ce, co-training, hint, k-shot, noised-teacher, "
        "one-shot, progressive, temperature-curriculum, weight-path",
    ):
        lookup_variant("schedule", "progresive")
    assert schedule_kinds() == [
        "2-shot-auto",
        "ce",
        "co-training",
        "hint",
        "k-shot",
        "noised-teacher",
        "one-shot",
        "progressive",
        "temperature-curriculum",
        "weight-path",
    ]


def test_no_checkpoints_is_an_error():
    with pytest.raises(ConfigError, match="no checkpoints"):
        OneShot().checkpoint_at(0, [])


def test_a_schedule_answers_for_itself_what_the_library_asks():
    """A new schedule is one class: the experiment, the runner, the loop and the HF trainer ask it, never its type."""
    assert not CE().needs_teacher and all(s.needs_teacher for s in (OneShot(), Progressive(), TwoShotAuto()))
    assert all(s.checkpoints_only for s in (CE(), OneShot(), Progressive(), KShot(points=((0, 1),)), TwoShotAuto()))
    asked = []

    @dataclass(frozen=True)
    class Picky(Schedule):  # not registered: a user's schedule built in Python
        kind: ClassVar[str] = "picky"
        label: ClassVar[str] = "picky"

        def validate_experiment(self, experiment, field):
            asked.append((field, experiment.student.steps))

        def checkpoint_at(self, student_step, checkpoint_steps):
            return min(checkpoint_steps)

    config = tiny_config()
    replace(config, schedules=(CE(), Picky()))
    assert asked == [("schedules.1", config.student.steps)]
    assert Picky().teacher_at(3, [0, 10], 5) == TeacherSpec(0) and Picky().resolve(None) == Picky()
