"""Plugins: a user's own tasks, models and schedules, defined outside the package and registered with
``@register(...)`` (:mod:`progdistill.core.config`) when their module is imported.

Three ways to import one:

- ``--import MODULE_OR_FILE`` on every command (:func:`import_plugin`): a dotted module name is imported with
  :func:`importlib.import_module`; a file path (``my_task.py``) under the module name of its stem (``my_task``),
  the same name on every import, so that a run records one name for it;
- an installed package's entry point in the group ``progdistill.plugins``
  (:func:`progdistill.core.config.load_entry_points`), imported the first time a config names a kind that is not
  registered (or the list of kinds is asked for);
- the ``"plugins"`` of a run's config.json (:func:`plugin_entries`, :func:`import_recorded`): the module of every
  task, model and schedule of the config that is not part of progdistill, with its absolute file path for a
  module imported from a file. Loading the config imports them again, so that `run` on the run's config.json,
  `status`, `report`, `compare` and `probe` need no ``--import``.

A module that cannot be imported is one :class:`PluginError` naming it (and its file or entry point). A script
run as ``__main__`` that defines variants is recorded with its file and imported under its stem, as
:mod:`multiprocessing` imports the main module of a spawned process: code that should not run on import (a call
of ``progdistill.run``) belongs under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from progdistill.core.config import ConfigError, PluginError, failure_reason

_FILES: dict[str, str] = {}  # module name -> absolute path of the file it was imported from


def is_file_spec(spec: str) -> bool:
    """Whether ``--import`` ``spec`` names a file (ends in .py, contains a path separator, or is an existing file)
    rather than a dotted module name."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec or Path(spec).is_file()


def module_name_of(path: str | Path) -> str:
    """The module name a plugin file is imported under: its stem, made a valid identifier (``my-task.py`` ->
    ``my_task``)."""
    name = re.sub(r"\W", "_", Path(path).stem)
    return f"_{name}" if name[:1].isdigit() or not name else name


def import_file(path: str | Path, name: str | None = None) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (default :func:`module_name_of`); importing the same
    file again returns the module already imported. Raises :class:`PluginError` naming the file when it does not
    exist, fails to import, or another module of that name is already imported."""
    path = Path(path).expanduser().resolve()
    name = name or module_name_of(path)
    loaded = sys.modules.get(name)
    if loaded is not None:
        if _same_file(getattr(loaded, "__file__", None), path):
            return loaded
        raise PluginError(
            f"cannot import plugin file {path} as module {name!r}: a different module of that name is "
            f"already imported (from {getattr(loaded, '__file__', None) or 'a built-in'}); rename "
            "the file"
        )
    if path.is_dir():
        raise PluginError(
            f"cannot import plugin {path}: it is a directory; pass its .py file, or a package's dotted name with the "
            "package's parent folder on PYTHONPATH"
        )
    if not path.is_file():
        raise PluginError(f"cannot import plugin file {path}: it does not exist")
    package = [str(path.parent)] if path.name == "__init__.py" else None  # a package's relative imports work
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}: not a Python file (give a .py file or a module name)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"cannot import plugin file {path} (as module {name!r}): {failure_reason(exc)}") from exc
    _FILES[name] = str(path)
    return module


def import_module(name: str) -> ModuleType:
    """Import the module of dotted name ``name``; raises :class:`PluginError` naming it when that fails."""
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise PluginError(f"cannot import plugin module {name!r}: {failure_reason(exc)}") from exc


def import_plugin(spec: str) -> ModuleType:
    """Import ``spec`` of ``--import``: a file path (:func:`import_file`) or a dotted module name
    (:func:`import_module`)."""
    return import_file(spec) if is_file_spec(spec) else import_module(spec)


def _same_file(a: str | None, b: str | Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _variants(obj: Any):
    """Every registered variant (an object whose class has a ``union``) in the config tree ``obj``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if getattr(type(obj), "union", None):
            yield obj
        for f in dataclasses.fields(obj):
            yield from _variants(getattr(obj, f.name))
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _variants(item)


def plugin_entries(config: Any) -> list[dict[str, str]]:
    """The ``"plugins"`` of ``config``'s JSON form: ``{"module": name}`` for each module outside progdistill that
    defines one of its variants (tasks, models, schedules), plus ``"file"`` (absolute path) for a top-level module
    (one imported from a file, a script, a module beside it); sorted by module name. Empty for a config of
    progdistill's own variants."""
    entries: dict[str, dict[str, str]] = {}
    for variant in _variants(config):
        name = type(variant).__module__
        if name == "progdistill" or name.startswith("progdistill.") or name in entries:
            continue
        module = sys.modules.get(name)
        # a top-level module's file, so that it imports again from elsewhere (a script's neighbour, imported
        # because the script's folder was on sys.path); a package's submodule is imported by name
        file = _FILES.get(name) or (getattr(module, "__file__", None) if "." not in name else None)
        entries[name] = {"module": name, **({"file": str(Path(file).resolve())} if file else {})}
    return [entries[name] for name in sorted(entries)]


def check_entries(entries: Any) -> list[dict[str, str]]:
    """``entries`` (a config.json's ``"plugins"``) checked for shape; raises ``ConfigError`` naming the problem."""
    ok = isinstance(entries, list) and all(
        isinstance(e, dict)
        and isinstance(e.get("module"), str)
        and set(e) <= {"module", "file"}
        and isinstance(e.get("file", ""), str)
        for e in entries
    )
    if not ok:
        raise ConfigError(
            f'plugins={entries!r} is invalid: must be a list of {{"module": name, "file": path}} '
            'objects ("file" only for a module imported from a file)'
        )
    return entries


def import_entry(entry: dict[str, str]) -> ModuleType:
    """Import one recorded plugin: a module already imported under its name is used as it is (so that
    ``--import NEW/PATH/my_task.py`` stands in for a file that has moved); else its file, when recorded and there,
    under that name (a script's under its stem); else the module by name."""
    name, file = entry["module"], entry.get("file")
    if name == "__main__" and not file:
        raise PluginError(
            "plugin module '__main__' is recorded without a file: its tasks, models or schedules were defined in an "
            "interactive session or notebook, which cannot be imported again; define them in a file and pass "
            "--import FILE (or import it before loading the config)"
        )
    if name != "__main__" and name in sys.modules:
        return sys.modules[name]
    if name == "__main__" and _same_file(getattr(sys.modules.get("__main__"), "__file__", None), file or ""):
        return sys.modules["__main__"]
    if file and (Path(file).is_file() or name == "__main__"):
        return import_file(file, None if name == "__main__" else name)
    if file:  # gone from its place: it may still be importable by name (installed, or on the path)
        try:
            return importlib.import_module(name)
        except Exception:
            raise PluginError(
                f"cannot import plugin file {file}: it does not exist. The run's config.json records "
                f"it as plugin module {name!r}: restore the file, or pass --import with its new "
                "location"
            ) from None
    return import_module(name)


def import_recorded(entries: Any, lenient: bool = False) -> list[str]:
    """Import the plugins a config.json records (:func:`check_entries`; None: none). Raises :class:`PluginError`
    for the first that fails, unless ``lenient``: then returns the messages of those that failed."""
    failures = []
    for entry in check_entries([] if entries is None else entries):
        try:
            import_entry(entry)
        except PluginError as exc:
            if not lenient:
                raise
            failures.append(str(exc))
    return failures
