"""The import rules of progdistill/ (imports tell the architecture) that import-linter's
contracts in pyproject.toml cannot express. Those contracts (run by `lint-imports` in CI and pre-commit) check
the layer order and that no package's modules or sub-packages import each other in a cycle.

Every module under progdistill/ is parsed with ``ast`` (nothing is imported) and its imports resolved,
relative ones included. The tests fail on:

(a) an import of another module's private name: ``from .x import _y``, or ``x._y`` on a progdistill module
    bound by an import (``from . import x``, ``import progdistill.x as x``). Dunders (``__version__``) are public.
(b) a function-level import of anything but an optional dependency: progdistill's own modules, the core
    dependencies (torch, numpy, safetensors, tqdm, matplotlib) and the standard library belong at the top.
    Optional means: a module of a package named in an extra of pyproject.toml (the ``test`` and ``dev`` extras
    aside), and ``torch.utils.tensorboard`` (torch's bridge to the ``tensorboard`` extra). ``torch.distributed``
    and ``torch.nn.parallel`` are not optional: every torch build imports them (``torch.distributed.is_available()``
    may be False, the module still imports), so they go at the top like the rest of torch.

Each check runs on a small planted package first (tests ending in ``_planted``), so none can pass by finding
nothing. The last test checks that ``import progdistill`` alone imports every module that registers a config
variant, so ``ExperimentConfig.from_dict`` of any config.json finds every task, model and schedule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "progdistill"
# Where an optional package's only bridge lives inside a core one.
OPTIONAL_SUBMODULES = ("torch.utils.tensorboard",)
# Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn", "mlflow-skinny": "mlflow"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    line: int
    target: str  # dotted name of the module imported from (``from X import ...``) or imported (``import X``)
    names: tuple[str, ...]  # the names a ``from`` import takes; () for ``import X``
    in_function: bool
    type_checking: bool


def discover(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package_dir`` (a package is named by its __init__)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute dotted name of ``from <level dots><module> import ...`` written in module ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 >= len(base):
        raise ValueError(f"{importer}: relative import with {level} dots goes above the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, node.lineno, alias.name, (), in_function, type_checking))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, is_package, node.level, node.module)
            found.append(
                Import(name, node.lineno, target, tuple(a.name for a in node.names), in_function, type_checking)
            )
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(tree, False, False)
    return found


def edges(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The package modules that ``imp`` imports: ``from pkg import sub`` reaches the submodule ``pkg.sub``."""
    if imp.target not in modules:
        return []
    subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in modules]
    plain = not imp.names or len(subs) < len(imp.names)  # some names are attributes of the target itself
    return subs + ([imp.target] if plain else [])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_private_imports(modules: dict[str, Path]) -> list[str]:
    """``from .x import _y`` and ``x._y`` on an imported package module, as ``file:LINE message``."""
    out = []
    for name, path in modules.items():
        bound: dict[str, str] = {}  # local name -> package module it is bound to
        for imp in imports_of(name, path):
            if imp.target in modules:
                for imported in imp.names:
                    if _private(imported):
                        out.append(f"{_rel(path)}:{imp.line} imports private name {imported} from {imp.target}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        bound[alias.asname] = alias.name
                    elif not alias.asname and alias.name.split(".")[0] in modules:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, path.name == "__init__.py", node.level, node.module)
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{target}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain, value = [], node.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in bound:
                    owner = ".".join([bound[value.id]] + chain[::-1])
                    if owner in modules:
                        out.append(f"{_rel(path)}:{node.lineno} uses private name {node.attr} of {owner}")
    return sorted(set(out))


def optional_modules(pyproject: Path) -> tuple[str, ...]:
    """Import names of the packages in pyproject's extras (the ``test`` and ``dev`` extras aside), plus bridges like
    ``torch.utils.tensorboard``."""
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = set()
    for extra, requirements in extras.items():
        if extra in ("test", "dev"):
            continue
        for requirement in requirements:
            dist = requirement.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                dist = dist.split(sep)[0]
            dist = dist.strip().lower()
            names.add(IMPORT_NAMES.get(dist, dist.replace("-", "_")))
    return tuple(sorted(names)) + OPTIONAL_SUBMODULES


def find_function_imports(modules: dict[str, Path], optional: tuple[str, ...]) -> list[str]:
    """Imports inside functions of anything but an optional dependency, as ``file:LINE message``."""
    out = []
    top = {m.split(".")[0] for m in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path):
            if not imp.in_function or imp.type_checking:
                continue
            if any(imp.target == o or imp.target.startswith(o + ".") for o in optional):
                continue
            kind = "progdistill module" if imp.target.split(".")[0] in top else "non-optional module"
            out.append(f"{_rel(path)}:{imp.line} imports {kind} {imp.target} inside a function")
    return out


def _rel(path: Path) -> str:
    """``path`` from the folder holding its top-level package, e.g. progdistill/tasks/text/task.py."""
    top = path.parent
    while (top.parent / "__init__.py").exists():
        top = top.parent
    return path.relative_to(top.parent).as_posix()


def registering_modules(modules: dict[str, Path]) -> set[str]:
    """Modules with a class decorated ``@register(...)`` (a config variant: task, model, schedule)."""
    out = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for deco in node.decorator_list:
                    func = deco.func if isinstance(deco, ast.Call) else None
                    if (isinstance(func, ast.Name) and func.id == "register") or (
                        isinstance(func, ast.Attribute) and func.attr == "register"
                    ):
                        out.add(name)
    return out


def imported_at_import(modules: dict[str, Path], root: str) -> set[str]:
    """Modules that ``import root`` runs: reachable along module-level imports (and each module's packages)."""
    g: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path):
            if not imp.in_function and not imp.type_checking:
                g[name].update(edges(imp, modules))
    seen, todo = set(), [root]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        parts = v.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(g[v])
    return seen


# ----------------------------------------------------------------------------------------------------------
# The planted package: every check must find exactly what was planted.

PLANTED = {
    "__init__.py": "",
    "a.py": "from .b import f\n_hidden = 1\n",
    "b.py": "from . import c\n\ndef f():\n    pass\n",
    "c.py": "from .a import _hidden\n",  # takes a private name
    "d.py": "import pkg.a as alias\nfrom . import b\n\nprint(alias._hidden, b._x, alias.__doc__)\n",
    "e.py": (
        "def g():\n    import numpy\n    from .a import f\n    import transformers\n"
        "    from transformers import BertConfig\n    import torch.utils.tensorboard\n    import json\n"
    ),
    "sub/__init__.py": "",
    "sub/h.py": "from ..d import alias\nfrom .. import e\n",  # two dots from a submodule: pkg.d, pkg.e
    "t.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .u import X\n",
    "u.py": "from .t import TYPE_CHECKING\n",
    "v.py": "from .config import register\n\n@register('task')\nclass V:\n    pass\n",
    "config.py": "def register(union):\n    return lambda cls: cls\n",
}


@pytest.fixture
def planted(tmp_path) -> dict[str, Path]:
    for rel, text in PLANTED.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return discover(tmp_path / "pkg")


def test_discover_and_resolve_planted(planted):
    assert sorted(planted) == [
        "pkg",
        "pkg.a",
        "pkg.b",
        "pkg.c",
        "pkg.config",
        "pkg.d",
        "pkg.e",
        "pkg.sub",
        "pkg.sub.h",
        "pkg.t",
        "pkg.u",
        "pkg.v",
    ]
    assert resolve("pkg.sub.h", False, 2, "d") == "pkg.d"
    assert resolve("pkg.sub", True, 1, "h") == "pkg.sub.h"
    assert resolve("pkg.sub", True, 2, None) == "pkg"
    with pytest.raises(ValueError, match="above the top-level package"):
        resolve("pkg.a", False, 3, "x")
    h = imports_of("pkg.sub.h", planted["pkg.sub.h"])
    assert [(imp.line, edges(imp, planted)) for imp in h] == [(1, ["pkg.d"]), (2, ["pkg.e"])]
    assert [(imp.target, imp.type_checking) for imp in imports_of("pkg.t", planted["pkg.t"])] == [
        ("typing", False),
        ("pkg.u", True),
    ]


def test_private_imports_planted(planted):
    assert find_private_imports(planted) == [
        "pkg/c.py:1 imports private name _hidden from pkg.a",
        "pkg/d.py:4 uses private name _hidden of pkg.a",
        "pkg/d.py:4 uses private name _x of pkg.b",
    ]


def test_function_imports_planted(planted):
    assert find_function_imports(planted, ("transformers", "torch.utils.tensorboard")) == [
        "pkg/e.py:2 imports non-optional module numpy inside a function",
        "pkg/e.py:3 imports progdistill module pkg.a inside a function",
        "pkg/e.py:7 imports non-optional module json inside a function",
    ]


def test_registering_modules_planted(planted):
    assert registering_modules(planted) == {"pkg.v"}
    assert "pkg.v" not in imported_at_import(planted, "pkg")
    assert imported_at_import(planted, "pkg.sub.h") >= {"pkg", "pkg.sub", "pkg.d", "pkg.a", "pkg.b", "pkg.c", "pkg.e"}


def test_optional_modules_read_from_pyproject():
    optional = optional_modules(ROOT / "pyproject.toml")
    assert {"transformers", "tokenizers", "gensim", "tensorboard", "accelerate", "datasets", "wandb", "mlflow"} <= set(
        optional
    )
    assert not {"torch", "numpy", "safetensors", "tqdm", "matplotlib", "pytest", "ruff", "mypy"} & set(optional)


# ----------------------------------------------------------------------------------------------------------
# The real package


@pytest.fixture(scope="module")
def package() -> dict[str, Path]:
    return discover(PACKAGE)


def test_no_private_imports(package):
    found = find_private_imports(package)
    assert not found, "imports of another module's private names:\n" + "\n".join(found)


def test_function_level_imports_only_for_optional_dependencies(package):
    found = find_function_imports(package, optional_modules(ROOT / "pyproject.toml"))
    assert not found, (
        "function-level imports of non-optional modules (move them to the top; a cycle they hid "
        "is a layering problem):\n" + "\n".join(found)
    )


def test_import_progdistill_registers_every_variant(package):
    missing = registering_modules(package) - imported_at_import(package, "progdistill")
    assert not missing, (
        f"{', '.join(sorted(missing))} register config variants but `import progdistill` does "
        "not import them, so from_dict of a config naming their kinds fails; import them in "
        "progdistill/__init__.py"
    )
