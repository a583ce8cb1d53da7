import json

import pytest

from progdistill.core.config import ConfigError, override
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig
from progdistill.distill.schedules import CE
from progdistill.experiment import ExperimentConfig
from progdistill.models.mlp import MLPConfig
from progdistill.recipes.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    config = get_preset(name)
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'parity'.*parity-mlp"):
        get_preset("parity")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, "steps=0"),
        ("batch_size", -3, "batch_size=-3"),
        ("eval_every", 0, "eval_every=0"),
        ("model", None, "model="),
    ],
)
def test_train_config_validation(field, value, message):
    kwargs = {"model": MLPConfig(), field: value}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_model_width_must_be_positive():
    with pytest.raises(ConfigError, match="model.width=0"):
        MLPConfig(width=0)


def test_optimizer_and_distillation_validation():
    with pytest.raises(ConfigError, match="optimizer.name='rmsprop'"):
        OptimizerConfig(name="rmsprop")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        OptimizerConfig(lr=0)
    with pytest.raises(ConfigError, match="reverse_kl needs temperature > 0"):
        DistillationConfig(loss="reverse_kl", temperature=0)
    with pytest.raises(ConfigError, match="distillation.alpha"):
        DistillationConfig(alpha=1.5)


def test_from_dict_errors_name_fields():
    data = get_preset("parity-mlp").to_dict()
    data["student"]["widht"] = 3
    with pytest.raises(ConfigError, match="student: unknown field.*widht"):
        ExperimentConfig.from_dict(data)
    data = get_preset("parity-mlp").to_dict()
    data["schedules"][0] = {"type": "anti-curriculum"}
    with pytest.raises(
        ConfigError,
        match="schedules\\.0\\.type=.anti-curriculum.*valid: 2-shot-auto, ce, "
        "co-training, hint, k-shot, noised-teacher, one-shot, progressive",
    ):
        ExperimentConfig.from_dict(data)
    data = get_preset("parity-mlp").to_dict()
    data["task"]["k"] = 99
    with pytest.raises(ConfigError, match="task.k=99"):
        ExperimentConfig.from_dict(data)


def test_nested_errors_name_the_full_path():
    data = get_preset("parity-mlp").to_dict()
    data["student"]["batch_size"] = -1
    with pytest.raises(ConfigError, match=r"^student\.batch_size=-1"):
        ExperimentConfig.from_dict(data)
    data = get_preset("parity-mlp").to_dict()
    data["teacher"]["model"]["width"] = 0
    with pytest.raises(ConfigError, match=r"^teacher\.model\.width=0"):
        ExperimentConfig.from_dict(data)
    data = get_preset("parity-mlp").to_dict()
    data["schedules"][2]["speed"] = 0
    with pytest.raises(ConfigError, match=r"^schedules\.2\.speed=0"):
        ExperimentConfig.from_dict(data)


def test_override():
    data = get_preset("parity-mlp").to_dict()
    override(data, "student.steps=20123")
    override(data, "schedules.2.speed=2")
    config = ExperimentConfig.from_dict(data)
    assert config.student.steps == 20123 and config.schedules[2].speed == 2.0
    with pytest.raises(ConfigError, match="no field 'student.stepz'"):
        override(data, "student.stepz=1")
    with pytest.raises(ConfigError, match="must look like"):
        override(data, "student.steps")


def test_duplicate_schedule_labels_refused():
    base = get_preset("parity-mlp")
    with pytest.raises(ConfigError, match="distinct"):
        ExperimentConfig(preset="x", task=base.task, teacher=base.teacher, student=base.student, schedules=(CE(), CE()))


def test_override_merges_an_object_into_the_existing_one():
    base = get_preset("parity-mlp")
    data = base.to_dict()
    override(data, 'teacher={"steps": 40000, "model": {"width": 50}}')
    config = ExperimentConfig.from_dict(data)
    assert config.teacher.steps == 40000 and config.teacher.model == MLPConfig(width=50)
    assert config.teacher.optimizer == base.teacher.optimizer and config.student == base.student
    with pytest.raises(ConfigError, match=r"^teacher: unknown field\(s\) stepz; valid: .*steps"):
        ExperimentConfig.from_dict(override(base.to_dict(), 'teacher={"stepz": 1}'))
    data = override(base.to_dict(), 'student.model={"type": "parity-gpt2", "n_layer": 1}')  # another type: replaced
    assert ExperimentConfig.from_dict(data).student.model.n_layer == 1
