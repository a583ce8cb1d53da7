"""Plugins: --import of a file or module, entry points, and the "plugins" a run's config.json records."""

import json
import sys
import uuid
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest
from conftest import forget_plugin, plugin_config, write_plugin

from progdistill.cli import main
from progdistill.core import config as config_module
from progdistill.core import plugins
from progdistill.core.config import ENTRY_POINT_GROUP, ConfigError, Unloaded, lookup_variant, to_dict, variants
from progdistill.core.plugins import PluginError, import_plugin, plugin_entries
from progdistill.distill.curricula import CoTraining
from progdistill.distill.schedules import CE
from progdistill.experiment import ExperimentConfig, config_hash, load_config
from progdistill.recipes.presets import get_preset


@pytest.fixture
def plugin(tmp_path):
    """A plugin file with a name of its own (kinds NAME-task, NAME-schedule), forgotten after the test."""
    name = f"plug_{uuid.uuid4().hex[:8]}"
    path = write_plugin(tmp_path, name)
    yield SimpleNamespace(name=name, path=path)
    forget_plugin(name)


def test_a_file_is_imported_under_its_stem_once(plugin):
    module = import_plugin(str(plugin.path))
    assert module.__name__ == plugin.name and import_plugin(str(plugin.path)) is module
    assert lookup_variant("task", f"{plugin.name}-task") is module.MyParity
    assert variants("schedule")[f"{plugin.name}-schedule"] is module.MySchedule


def test_a_module_name_is_imported_by_name(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin.path.parent))
    module = import_plugin(plugin.name)
    assert module.__file__ == str(plugin.path)
    # a top-level module is recorded with its file, to import from anywhere; a package's submodule by name alone
    assert plugin_entries(plugin_config(module)) == [{"module": plugin.name, "file": str(plugin.path)}]
    (plugin.path.parent / "pkg_for_plugin_test").mkdir()
    (plugin.path.parent / "pkg_for_plugin_test" / "__init__.py").write_text("")
    (plugin.path.parent / "pkg_for_plugin_test" / "sub.py").write_text(
        plugin.path.read_text().replace(f'"{plugin.name}-', f'"{plugin.name}-sub-')
    )
    try:
        sub = import_plugin("pkg_for_plugin_test.sub")
        assert plugin_entries(plugin_config(sub)) == [{"module": "pkg_for_plugin_test.sub"}]
    finally:
        forget_plugin("pkg_for_plugin_test.sub")
        sys.modules.pop("pkg_for_plugin_test", None)


def test_a_bad_plugin_is_one_error_naming_it(tmp_path, capsys):
    with pytest.raises(PluginError, match=r"cannot import plugin file .*missing\.py: it does not exist"):
        import_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(PluginError, match=r"cannot import plugin module 'no_such_module_xyz': ModuleNotFoundError"):
        import_plugin("no_such_module_xyz")
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("x = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(
        PluginError,
        match=r"broken_plugin\.py \(as module 'broken_plugin'\): RuntimeError: boom "
        r"\(at .*broken_plugin\.py:2\)",
    ):
        import_plugin(str(broken))
    # from the command line: one line on stderr, exit status 2, for every command
    assert main(["status", str(tmp_path), "--import", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.py" in err[0]
    assert err[0].startswith("progdistill: error: cannot import plugin file")
    assert main(["show", "parity-mlp", "--import", "no_such_module_xyz"]) == 2
    assert "'no_such_module_xyz'" in capsys.readouterr().err


def test_another_module_of_the_same_name_is_refused(tmp_path):
    (tmp_path / "json.py").write_text("")
    with pytest.raises(PluginError, match=r"a different module of that name is already imported"):
        import_plugin(str(tmp_path / "json.py"))


def test_config_json_records_the_plugins_and_round_trips(plugin):
    module = import_plugin(str(plugin.path))
    config = plugin_config(module)
    data = config.to_dict()
    assert data["plugins"] == [{"module": plugin.name, "file": str(plugin.path.resolve())}]
    assert next(iter(data)) == "plugins"
    again = ExperimentConfig.from_dict(json.loads(json.dumps(data)))
    assert again == config and again.to_dict() == data
    # the plugins are no part of the run's identity: a moved plugin file keeps the hash
    moved = {**data, "plugins": [{"module": plugin.name, "file": "/elsewhere/x.py"}]}
    assert config_hash(moved) == config_hash(config) == config_hash(to_dict(config))


def test_configs_of_progdistill_alone_are_unchanged():
    config = get_preset("parity-mlp")
    assert "plugins" not in config.to_dict() and config.to_dict() == to_dict(config)
    assert ExperimentConfig.from_dict(config.to_dict()) == config  # an old config.json (no "plugins") loads


def test_loading_a_config_imports_its_plugins(plugin, tmp_path):
    module = import_plugin(str(plugin.path))
    config = plugin_config(module)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    forget_plugin(plugin.name)  # as in a new process
    with pytest.raises(ConfigError, match="is not a known"):
        ExperimentConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "plugins"})
    loaded = load_config(tmp_path / "config.json")
    assert type(loaded.task).__module__ == plugin.name and loaded.to_dict() == config.to_dict()


def test_a_recorded_plugin_that_is_gone_is_one_error_naming_it(plugin, tmp_path):
    config = plugin_config(import_plugin(str(plugin.path)))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    forget_plugin(plugin.name)
    plugin.path.rename(tmp_path / "moved.py")
    with pytest.raises(
        PluginError,
        match=rf"cannot import plugin file {plugin.path}: it does not exist\. The run's "
        rf"config.json records it as plugin module '{plugin.name}': restore the "
        "file, or pass --import with its new location",
    ):
        load_config(tmp_path / "config.json")
    # --import of the file at its new place (imported under the recorded name) stands in for it
    plugins.import_file(tmp_path / "moved.py", plugin.name)
    assert load_config(tmp_path / "config.json").task.kind == f"{plugin.name}-task"


def test_lenient_loading_keeps_type_names_and_the_json(plugin, tmp_path):
    config = plugin_config(import_plugin(str(plugin.path)), seeds=2)
    data = config.to_dict()
    forget_plugin(plugin.name)
    plugin.path.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = ExperimentConfig.from_dict(data, lenient=True)
    assert len(caught) == 1 and "it does not exist" in str(caught[0].message)
    assert isinstance(loaded.task, Unloaded) and loaded.task.kind == f"{plugin.name}-task"
    assert [s.label for s in loaded.schedules] == ["ce", f"{plugin.name}-schedule"]
    assert loaded.to_dict() == {k: v for k, v in data.items() if k != "plugins"}
    assert config_hash(loaded) == config_hash(data)
    with pytest.raises(
        ConfigError,
        match=rf"task type '{plugin.name}-task' is not available \(cannot import "
        r"plugin file .*\): its 'num_classes' cannot be read",
    ):
        _ = loaded.task.num_classes


def test_entry_points_are_imported_when_a_kind_is_unknown(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin.path.parent))
    loaded = []

    class EntryPoint:
        name, value, dist = "mine", plugin.name, None

        def load(self):
            loaded.append(import_plugin(plugin.name))

    monkeypatch.setattr(config_module, "_entry_points_loaded", [])
    monkeypatch.setattr(
        config_module.importlib.metadata,
        "entry_points",
        lambda group: [EntryPoint()] if group == ENTRY_POINT_GROUP else [],
    )
    lookup_variant("task", "parity")  # a known kind: no entry point is imported
    assert not loaded
    assert lookup_variant("task", f"{plugin.name}-task").__module__ == plugin.name
    assert len(loaded) == 1


def test_a_broken_entry_point_is_one_error_naming_it(monkeypatch):
    class EntryPoint:
        name, value, dist = "broken", "broken_pkg.plugin", SimpleNamespace(name="broken-pkg")

        def load(self):
            raise ImportError("No module named 'broken_pkg'")

    monkeypatch.setattr(config_module, "_entry_points_loaded", [])
    monkeypatch.setattr(config_module.importlib.metadata, "entry_points", lambda group: [EntryPoint()])
    with pytest.raises(
        PluginError,
        match=r"cannot import plugin entry point 'broken' = 'broken_pkg.plugin' \(group "
        r"progdistill.plugins, package broken-pkg\): ImportError",
    ):
        lookup_variant("task", "no-such-task")


def test_lenient_loading_of_a_missing_task_beside_a_schedule_that_reads_the_task(plugin):
    # co-training asks the task whether its targets are per position: a stand-in task cannot say, so the
    # experiment's cross-field checks are skipped when showing files, instead of failing on the stand-in
    config = replace(plugin_config(import_plugin(str(plugin.path))), schedules=(CE(), CoTraining()))
    data = config.to_dict()
    forget_plugin(plugin.name)
    plugin.path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ExperimentConfig.from_dict(data, lenient=True)
    assert isinstance(loaded.task, Unloaded) and [s.label for s in loaded.schedules] == ["ce", "co-training"]
    with pytest.raises(PluginError, match="it does not exist"):
        ExperimentConfig.from_dict(data)  # strict loading still refuses


def test_a_plugin_recorded_from_an_interactive_session_is_one_clear_error():
    data = {**get_preset("parity-mlp").to_dict(), "plugins": [{"module": "__main__"}]}
    with pytest.raises(PluginError, match=r"'__main__' is recorded without a file: .* define them in a file"):
        ExperimentConfig.from_dict(data)


def test_a_plugin_cannot_take_a_registered_kind(tmp_path):
    duplicate = tmp_path / f"dup_{uuid.uuid4().hex[:8]}.py"
    duplicate.write_text(
        "from dataclasses import dataclass\nfrom typing import ClassVar\n"
        "from progdistill.core.config import register\n\n"
        '@register("task")\n@dataclass(frozen=True)\nclass Mine:\n    kind: ClassVar[str] = "parity"\n'
    )
    with pytest.raises(PluginError, match=rf"task type 'parity' of {duplicate.stem}.Mine is already registered by "):
        import_plugin(str(duplicate))
    assert variants("task")["parity"].__module__ == "progdistill.tasks.parity"  # the built-in is kept


def test_a_directory_is_not_a_plugin_file(tmp_path, capsys):
    assert main(["show", "parity-mlp", "--import", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot import plugin {tmp_path}: it is a directory" in err and "\n" not in err


def test_a_syntax_error_names_the_plugins_line_not_the_library(tmp_path, capsys):
    broken = tmp_path / f"syn_{uuid.uuid4().hex[:8]}.py"
    broken.write_text("def (:\n")
    assert main(["show", "parity-mlp", "--import", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "SyntaxError" in err and f"{broken.name}, line 1" in err and "plugins.py" not in err
