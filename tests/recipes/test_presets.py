"""Every preset builds, round-trips through JSON to an equal config and hash, and keeps the relations its
comments promise (the curricula presets share their base preset's teacher)."""

import json

import pytest

from progdistill.core.config import ConfigError, override
from progdistill.experiment import ExperimentConfig, config_hash, teacher_header

# The names under test, imported in one place.
from progdistill.recipes.presets import ATLAS_SMOKE, PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips_through_json(name):
    config = get_preset(name)
    assert isinstance(config, ExperimentConfig) and config.preset == name
    text = json.dumps(config.to_dict())
    again = ExperimentConfig.from_dict(json.loads(text))
    assert again == config and config_hash(again) == config_hash(config)
    assert get_preset(name) == config  # a preset is a pure function: the same config every time
    assert PRESETS[name][0].strip()  # `progdistill list` shows a description


def test_preset_names_are_distinct_configs():
    hashes = {config_hash(get_preset(name)) for name in PRESETS}
    assert len(hashes) == len(PRESETS)


@pytest.mark.parametrize(
    "curricula, base", [("parity-mlp-curricula", "parity-mlp"), ("pcfg-mlm-curricula", "pcfg-mlm")]
)
def test_curricula_presets_share_their_base_presets_teacher(curricula, base):
    # Same task and teacher config: a run directory of either reuses the other's finished teacher.
    assert teacher_header(get_preset(curricula)) == teacher_header(get_preset(base))


def test_an_unknown_preset_is_an_error_listing_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        get_preset("parity-mpl")
    message = str(info.value)
    assert "unknown preset 'parity-mpl'" in message and "progdistill list" in message
    assert all(name in message for name in PRESETS)


ATLAS = ("atlas-staircase", "atlas-leap", "atlas-majority")


def test_atlas_presets_share_one_shape_and_differ_in_task_and_steps():
    # the atlas compares tasks, not settings: models, optimizers, distillation and schedule types are equal
    configs = [get_preset(name) for name in ATLAS]
    for config in configs[1:]:
        for field in ("distillation", "seeds", "threshold"):
            assert getattr(config, field) == getattr(configs[0], field)
        for which in ("teacher", "student"):
            ours, first = getattr(config, which), getattr(configs[0], which)
            assert (ours.model, ours.optimizer, ours.batch_size) == (first.model, first.optimizer, first.batch_size)
        assert [s.kind for s in config.schedules] == [s.kind for s in configs[0].schedules]
    assert [s.kind for s in configs[0].schedules] == ["ce", "one-shot", "progressive", "2-shot-auto", "noised-teacher"]
    assert {c.task.kind for c in configs} == {"staircase", "sparse-majority"} and configs[1].task.leap == 3
    for config in configs:  # 40 teacher checkpoints: enough for 2-shot-auto to locate a transition
        assert config.teacher.steps // config.teacher.checkpoint_every == 40 and config.seeds == 3


def test_atlas_smoke_overrides_build_smaller_configs_of_every_atlas_preset():
    assert set(ATLAS) <= set(ATLAS_SMOKE)
    for name in ATLAS:
        assignments = ATLAS_SMOKE[name]
        data = get_preset(name).to_dict()
        for assignment in assignments:
            data = override(data, assignment)
        smoke = ExperimentConfig.from_dict(data)
        full = get_preset(name)
        assert smoke.seeds == 1 and smoke.schedules[3].first_steps < smoke.student.steps
        assert smoke.teacher.steps <= full.teacher.steps and smoke.student.steps < full.student.steps
        assert smoke.teacher.steps // smoke.teacher.checkpoint_every >= 20


@pytest.mark.parametrize("name", ["atlas-modular-addition", "atlas-pointer-chasing"])
def test_atlas_smoke_overrides_name_real_fields_and_shrink_the_run(name):
    full = get_preset(name)
    data = full.to_dict()
    for assignment in ATLAS_SMOKE[name]:
        data = override(data, assignment)
    smoke = ExperimentConfig.from_dict(data)
    assert [s.kind for s in smoke.schedules] == [s.kind for s in full.schedules]  # every schedule still trained
    assert smoke.teacher.steps < full.teacher.steps and smoke.student.steps < full.student.steps
    assert smoke.task.kind == full.task.kind and smoke.seeds == 3
