"""Field types checked from the annotations (progdistill.core.config.typed): the Python API refuses what the
CLI's JSON reader refuses, with one ConfigError naming the field."""

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import progdistill  # noqa: F401  # registers every task, model and schedule
from progdistill.core.config import ConfigError, Tagged, a_or_an, typed_classes, variants
from progdistill.core.settings import DistillationConfig, OptimizerConfig, TrainConfig, Way
from progdistill.distill.schedules import FINAL, KShot, Progressive
from progdistill.experiment import ExperimentConfig
from progdistill.models.mlp import MLPConfig
from progdistill.recipes.presets import get_preset
from progdistill.recipes.runner import run
from progdistill.tasks.parity import ParityTask
from progdistill.tasks.pcfg.task import GrammarSpec
from tests.conftest import tiny_config

EXAMPLES = {KShot: KShot(points=((0, 1),)), TrainConfig: TrainConfig(model=MLPConfig()), Way: Way("w")}


def _example(cls):
    if cls is ExperimentConfig:
        return tiny_config()
    return EXAMPLES.get(cls) or cls()


def _own_classes():
    return [c for c in typed_classes() if c.__module__.startswith("progdistill.")]


def _fields():
    out = []
    for cls in _own_classes():
        hints = typing.get_type_hints(cls, include_extras=True)
        out += [(cls, f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init and hints[f.name] is not Any]
    return out


ANYTHING = st.one_of(
    st.text(max_size=5),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["type", "a"]), st.text(max_size=3), max_size=2),
)


def _fits(tp, value) -> bool:
    """Whether ``value`` has the type of annotation ``tp`` (the test's own reading of the annotations)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        tags = [m for m in tp.__metadata__ if isinstance(m, Tagged)]
        return type(value) in variants(tags[0].union).values() if tags else _fits(typing.get_args(tp)[0], value)
    if origin in (Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(args) == len(value) and all(_fits(a, v) for a, v in zip(args, value))
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)
    if tp in (int, str, bool):
        return type(value) is tp
    return isinstance(value, tp)


def test_every_registered_config_class_is_type_checked():
    registered = {c for union in ("task", "model", "schedule") for c in variants(union).values()}
    assert registered | {OptimizerConfig, DistillationConfig, TrainConfig, ExperimentConfig, GrammarSpec} <= set(
        typed_classes()
    )


@pytest.mark.parametrize("cls, name, tp", _fields(), ids=lambda v: getattr(v, "__name__", str(v))[:40])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=ANYTHING)
def test_a_wrong_typed_field_is_a_config_error_naming_it(cls, name, tp, value):
    if _fits(tp, value):
        return  # a right type: the class's own checks judge its value
    prefix = cls.__init__.typed_prefix
    where = f"{prefix}.{name}" if prefix else name
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(_example(cls), **{name: value})
    assert f"{where}=" in str(info.value) or f"{where}." in str(info.value)


def test_the_cases_a_user_met():
    with pytest.raises(ConfigError, match=r"^distillation\.alpha='x' is invalid: must be a finite number"):
        DistillationConfig(alpha="x")
    with pytest.raises(ConfigError, match=r"^schedules\.0='progressive' is invalid: must be a schedule config"):
        dataclasses.replace(tiny_config(), schedules=("progressive",))
    with pytest.raises(ConfigError, match=r"^schedule\.points\.0=\(31000,\) is invalid: must be a tuple of 2 items"):
        KShot(points=((31000,),))
    with pytest.raises(
        ConfigError, match=r"^teacher=\{\} is invalid: must be a TrainConfig.*ExperimentConfig.from_dict"
    ):
        dataclasses.replace(tiny_config(), teacher={})
    with pytest.raises(ConfigError, match=r"^optimizer\.lr=nan is invalid"):
        OptimizerConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"^model\.width=True is invalid: must be an integer"):
        MLPConfig(width=True)


def test_a_list_for_a_tuple_is_taken_as_the_tuple():
    listed = KShot(points=[[100, 5], [FINAL, 1]])
    assert listed.points == ((100, 5), (FINAL, 1)) and hash(listed) == hash(KShot(points=((100, 5), (FINAL, 1))))
    config = dataclasses.replace(tiny_config(), schedules=[Progressive()])
    assert config.schedules == (Progressive(),)


def test_run_refuses_what_is_not_a_config(tmp_path):
    data = get_preset("parity-mlp").to_dict()
    with pytest.raises(
        ConfigError, match=r"^config must be an ExperimentConfig \(got dict; use ExperimentConfig.from_dict"
    ):
        run(data, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"got str; use get_preset\(name\)"):
        run("parity-mlp", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_top_k_above_the_vocabulary_is_refused_with_the_config():
    base = tiny_config()
    with pytest.raises(ConfigError, match=r"^distillation\.top_k=3 is invalid: at most the task's 2 classes"):
        dataclasses.replace(base, distillation=DistillationConfig(temperature=1.0, top_k=3))
    assert dataclasses.replace(base, distillation=DistillationConfig(temperature=1.0, top_k=2)).distillation.top_k == 2
    assert ParityTask().config_num_classes == 2


def test_every_invalid_setting_is_reported_at_once():
    # Shrinking the steps with --set: the 2-shot points, 2-shot-auto's first steps and the teacher's checkpoints
    # fail together, in one message naming each field.
    data = get_preset("parity-mlp").to_dict()
    data["student"]["steps"] = 1000
    data["teacher"]["steps"] = 1000
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(data)
    message = str(info.value)
    assert message.startswith("4 invalid settings: ")
    for field in (
        "schedules.3.points=",
        "schedules.3.points.0.0=31000",
        "schedules.4.first_steps=20000",
        "schedules.4: 2-shot-auto needs at least 3",
    ):
        assert field in message, field
    data = get_preset("parity-mlp").to_dict()
    data["student"]["batch_size"] = 0
    data["teacher"]["steps"] = "x"
    with pytest.raises(ConfigError, match=r"^2 invalid settings: teacher\.steps='x'.*; student\.batch_size=0"):
        ExperimentConfig.from_dict(data)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("MLP", "an MLP"),
        ("OptimizerConfig", "an OptimizerConfig"),
        ("TrainConfig", "a TrainConfig"),
        ("GPT2LMConfig", "a GPT2LMConfig"),
        ("LanguageModel", "a LanguageModel"),
        ("integer", "an integer"),
    ],
)
def test_messages_use_the_article_of_the_name_read_aloud(name, expected):
    assert a_or_an(name) == expected
