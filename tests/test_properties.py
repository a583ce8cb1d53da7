"""Property tests: random and malformed configs and command lines end in a clear error or a valid result,
never in a traceback from deep inside a library."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from progdistill.cli import main
from progdistill.core.config import ConfigError, override
from progdistill.experiment import ExperimentConfig
from progdistill.recipes.presets import get_preset

BASE = get_preset("parity-mlp").to_dict()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (str(i),))
    yield prefix


PATHS = [".".join(p) for p in _paths(BASE) if p]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=json_values)
def test_any_single_field_mutation_is_valid_or_a_config_error(path, value):
    data = json.loads(json.dumps(BASE))
    override(data, f"{path}={json.dumps(value)}")
    try:
        config = ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        assert str(exc)  # a message, naming something
        return
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@settings(max_examples=100, deadline=None)
@given(data=json_values)
def test_arbitrary_json_is_a_config_error(data):
    try:
        ExperimentConfig.from_dict(data)
    except ConfigError:
        return
    raise AssertionError("arbitrary JSON was accepted as a config")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    argv=st.lists(
        st.sampled_from(
            [
                "run",
                "list",
                "show",
                "probe",
                "ablate",
                "monomials",
                "two-shot",
                "parity-mlp",
                "nope",
                "--seeds",
                "-3",
                "0",
                "x",
                "--set",
                "a=b",
                "student.steps=0",
                "task.k=abc",
                "--out",
                "--degrees",
                "--help",
                "=",
                "task=1",
                "schedules.9.speed=1",
            ]
        ),
        max_size=5,
    )
)
def test_random_command_lines_fail_cleanly(argv, tmp_path, capsys):
    # a run command always gets an invalid budget, so that no example can start real training
    extra = ["--out", str(tmp_path / "o"), "--set", "teacher.steps=0"] if argv[:1] == ["run"] else []
    try:
        code = main(argv + extra)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        assert exc.code in (0, 2)
        return
    if argv[:1] == ["run"] and code == 0:
        raise AssertionError(f"{argv} started a full run")
    assert code in (0, 2)
