"""Experiment configuration: frozen, validated dataclasses that round-trip through JSON.

Every config class validates itself on construction and raises :class:`ConfigError` (a ``ValueError``)
naming the field, the value and what is allowed. ``to_dict`` / ``from_dict`` give the JSON form written to
``config.json``; ``from_dict(type(c), to_dict(c)) == c`` for every config ``c``.

Variants (model kinds, schedule kinds) are *tagged unions*: each variant is its own dataclass with a
``kind`` class attribute, serialized as ``{"type": kind, ...fields}``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import functools
import importlib.metadata
import inspect
import json
import math
import os
import traceback
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed (every
    invalid field of a config, when several are: :func:`raise_errors`)."""


def problems(exc: ConfigError) -> list[str]:
    """The messages of the invalid fields that ``exc`` reports (one, or each of :func:`raise_errors`'s)."""
    return list(getattr(exc, "problems", None) or [str(exc)])


def raise_errors(errors: Iterable[ConfigError | str]) -> None:
    """Raise one :class:`ConfigError` reporting every message of ``errors`` (``N invalid settings: a; b``; a
    single one as itself); nothing when ``errors`` is empty."""
    items = [p for e in errors for p in (problems(e) if isinstance(e, ConfigError) else [e])]
    if len(items) == 1:
        raise ConfigError(items[0])
    if items:
        error = ConfigError(f"{len(items)} invalid settings: " + "; ".join(items))
        error.problems = items  # type: ignore[attr-defined]  # read back by problems()
        raise error


def check(condition: bool, field_name: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field_name}={value!r} is invalid: {allowed}")


def check_positive_int(field_name: str, value: Any) -> None:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        field_name,
        value,
        "must be a positive integer",
    )


def check_positive_number(field_name: str, value: Any) -> None:
    check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        field_name,
        value,
        "must be a positive number",
    )


# ----------------------------------------------------------------------------------------------------------
# Field types, checked from the annotations

_TYPED: list[type] = []  # every config class whose fields are type-checked on construction (for the tests)


def a_or_an(name: str) -> str:
    """``name`` with its indefinite article, as it is read aloud: "an MLP", "an OptimizerConfig", "a TrainConfig",
    "a GPT2LMConfig" (an initialism is read letter by letter: F, H, L, M, N, R, S and X take "an")."""
    initialism = len(name) > 1 and name[:2].isupper()
    vowel_sound = name[:1] in "AEFHILMNORSX" if initialism else name[:1].lower() in "aeiou"
    return f"{'an' if name and vowel_sound else 'a'} {name}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp: Any) -> str:
    """What values of annotation ``tp`` look like, in words (for error messages)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        tags = [m for m in tp.__metadata__ if isinstance(m, Tagged)]
        return f"a {tags[0].union} config" if tags else _type_name(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        none = " or None" if type(None) in typing.get_args(tp) else ""
        return " or ".join(names) + none
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_type_name(args[0])}"
        return f"a tuple of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(
        tp, a_or_an(str(getattr(tp, "__name__", tp)))
    )


def _typed_value(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """``value`` checked against annotation ``tp`` (a list given for a tuple becomes a tuple); each mismatch is
    appended to ``errors`` as ``path=value is invalid: must be ...``."""

    def wrong(what: str | None = None) -> Any:
        errors.append(f"{path}={_short(value)} is invalid: must be {what or _type_name(tp)}")
        return value

    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return value
    if origin is Annotated:
        tags = [m for m in tp.__metadata__ if isinstance(m, Tagged)]
        if not tags:
            return _typed_value(typing.get_args(tp)[0], value, path, errors)
        union = tags[0].union
        if getattr(type(value), "union", None) != union and not isinstance(value, tuple(_BASES.get(union, ()))):
            known = ", ".join(sorted(_UNIONS.get(union, {})))
            hint = (
                " (a dict: build the whole config with ExperimentConfig.from_dict)" if isinstance(value, dict) else ""
            )
            return wrong(f"a {union} config, one of the registered types ({known}){hint}")
        return value
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in (m for m in members if m is not type(None)):
            trial: list[str] = []
            out = _typed_value(member, value, path, trial)
            if not trial:
                return out
        return wrong()
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed_value(args[0], v, f"{path}.{i}", errors) for i, v in enumerate(value))
        if len(args) != len(value):
            return wrong()
        return tuple(_typed_value(a, v, f"{path}.{i}", errors) for i, (a, v) in enumerate(zip(args, value)))
    if origin is not None or not isinstance(tp, type):
        return value  # an annotation this check does not model (e.g. a Callable): the class checks it
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return value if ok else wrong()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong()
    if dataclasses.is_dataclass(tp) and not isinstance(value, tp):
        hint = f" (build it with {tp.__name__}(...); a dict: build the whole config with ExperimentConfig.from_dict)"
        return wrong(f"{a_or_an(tp.__name__)}{hint if isinstance(value, dict) else ''}")
    return value if isinstance(value, tp) else wrong()


_HINTS: dict[type, dict[str, Any]] = {}


def _field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``, once per class ({} when one cannot be resolved, e.g. a plugin's
    forward reference: its fields are then left unchecked)."""
    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
        except Exception:
            _HINTS[cls] = {}
    return _HINTS[cls]


def typed(prefix: str = ""):
    """Class decorator for a frozen config dataclass: every value given to its constructor is checked against
    the field's annotation before ``__post_init__`` validates the values, and a wrong type raises
    :class:`ConfigError` naming every such field (``prefix.field``, e.g. ``distillation.alpha``), the value and
    the type allowed (a list given for a tuple field is taken as the tuple). Annotations understood: int, float
    (finite; an int is accepted), str, bool, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, a config
    dataclass, and a tagged variant (:data:`ModelSpec`, :data:`ScheduleSpec`, :data:`TaskSpec`); others are left
    to the class; a field's ``metadata["allowed"]`` is quoted after its type. :func:`register` applies it to every
    variant, with the union's name as ``prefix``."""

    def wrap(cls):
        init = cls.__init__
        if getattr(init, "typed_prefix", None) is not None:  # already wrapped (a subclass that kept the init)
            return cls
        signature = inspect.signature(init)
        fields = {f.name: f for f in dataclasses.fields(cls)}

        @functools.wraps(init)
        def checked_init(self, *args: Any, **kwargs: Any) -> None:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise ConfigError(f"{prefix or type(self).__name__}: {exc}") from None
            hints = _field_hints(type(self))
            errors: list[str] = []
            for name, value in list(bound.arguments.items())[1:]:
                if name in hints:
                    where = f"{prefix}.{name}" if prefix else name
                    field_errors: list[str] = []
                    bound.arguments[name] = _typed_value(hints[name], value, where, field_errors)
                    allowed = fields[name].metadata.get("allowed") if name in fields else None
                    errors += [f"{e}; {where} holds {allowed}" for e in field_errors] if allowed else field_errors
            raise_errors(errors)
            init(*bound.args, **bound.kwargs)

        checked_init.typed_prefix = prefix  # type: ignore[attr-defined]  # marks the wrapper (see above)
        cls.__init__ = checked_init
        _TYPED.append(cls)
        return cls

    return wrap


def typed_classes() -> list[type]:
    """Every config class whose fields are type-checked on construction (:func:`typed`), plugins' included."""
    load_entry_points()
    return list(dict.fromkeys(_TYPED))


# ----------------------------------------------------------------------------------------------------------
# Tagged unions

_UNIONS: dict[str, dict[str, type]] = {}
_BASES: dict[str, list[type]] = {}  # union -> base classes whose (unregistered) subclasses are variants too
_ALIASES: dict[str, dict[str, type]] = {}  # former kind names, still read from old config.json files
_RENAMED: dict[str, set[str]] = {}  # former kind name -> the kinds that carry it now


def register(union: str):
    """Class decorator: register a dataclass with a ``kind`` as one variant of the tagged union ``union``; the
    names in its optional ``aliases`` (a tuple) are read as that kind too (configs written under a former name),
    and written as ``kind``. Its fields are type-checked on construction (:func:`typed`, prefix ``union``)."""

    def wrap(cls):
        typed(union)(cls)
        known = _UNIONS.setdefault(union, {})
        existing = known.get(cls.kind)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            # the same class imported again (a module reloaded) replaces itself; another class must not take the name
            raise ConfigError(
                f"{union} type {cls.kind!r} of {cls.__module__}.{cls.__qualname__} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; give the new class another kind"
            )
        known[cls.kind] = cls
        for alias in getattr(cls, "aliases", ()):
            _ALIASES.setdefault(union, {})[alias] = cls
            _RENAMED.setdefault(alias, set()).add(cls.kind)
        cls.union = union
        return cls

    return wrap


def union_base(union: str):
    """Class decorator: instances of the class and its subclasses, registered or not (a user's schedule built in
    Python), are accepted where a variant of ``union`` is expected (:func:`typed`)."""

    def wrap(cls):
        _BASES.setdefault(union, []).append(cls)
        return cls

    return wrap


def current_names(data: Any) -> Any:
    """``data`` (a config's JSON form, or part of one: a teacher header) with every variant written under a former
    name (a registered class's ``aliases``) renamed to its ``kind``, so that runs written before a rename compare
    equal to the same config written today. Nothing else changes; ``data`` is not modified."""
    if isinstance(data, list):
        return [current_names(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: current_names(v) for k, v in data.items()}
    kind = out.get("type")
    if isinstance(kind, str) and not any(kind in known for known in _UNIONS.values()):
        renamed = _RENAMED.get(kind, set())
        if len(renamed) == 1:  # a former name of exactly one variant
            out["type"] = next(iter(renamed))
    return out


def variants(union: str) -> dict[str, type]:
    """The registered variants of ``union``, by kind (installed plugins' included: :mod:`progdistill.core.plugins`)."""
    load_entry_points()
    return dict(_UNIONS.get(union, {}))


class PluginError(ConfigError):
    """A plugin (a file, a module, an entry point: :mod:`progdistill.core.plugins`) could not be imported; the
    message names it."""


def failure_reason(exc: BaseException) -> str:
    """An exception raised by importing a plugin, as one line, with the innermost frame outside importlib."""
    if isinstance(exc, SyntaxError):  # its message names the file and line already
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # progdistill/: its frames say nothing
    own = [
        f
        for f in frames
        if "importlib" not in f.filename and not f.filename.startswith("<frozen") and not f.filename.startswith(library)
    ]
    where = f" (at {own[-1].filename}:{own[-1].lineno})" if own else ""
    return f"{type(exc).__name__}: {exc}{where}"


ENTRY_POINT_GROUP = "progdistill.plugins"
_entry_points_loaded: list[bool] = []  # [True] once the entry points were imported (no `global` rebinding)


def load_entry_points() -> None:
    """Import every entry point of the group ``progdistill.plugins`` (installed packages' tasks, models and
    schedules), once per process: called the first time a kind is not registered, or the kinds are listed.
    Raises :class:`PluginError` naming the entry point and its package when one fails to import."""
    if _entry_points_loaded:
        return
    _entry_points_loaded.append(True)  # a failing one is reported once, not at every lookup
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            dist = getattr(ep.dist, "name", None)
            raise PluginError(
                f"cannot import plugin entry point {ep.name!r} = {ep.value!r} (group "
                f"{ENTRY_POINT_GROUP}{f', package {dist}' if dist else ''}): {failure_reason(exc)}; "
                "fix or uninstall that package"
            ) from exc


def lookup_variant(union: str, kind: str, field_name: str = "type") -> type:
    """The variant class of ``union`` named ``kind``; an unknown name is an error listing the valid ones. A name
    not registered yet imports the installed plugins first (entry points of ``progdistill.plugins``); within
    :func:`unloaded_variants`, an unknown name gives an :class:`Unloaded` stand-in instead of an error."""
    if kind in _ALIASES.get(union, {}) and kind not in _UNIONS.get(union, {}):  # a former name of a variant
        return _ALIASES[union][kind]
    if kind not in _UNIONS.get(union, {}):
        reasons = _unloaded.get()
        try:
            load_entry_points()
        except ConfigError as exc:
            if reasons is None:
                raise
            reasons.append(str(exc))
        if reasons is not None and kind not in _UNIONS.get(union, {}):
            return _stand_in(union, str(kind))
    known = _UNIONS.get(union, {})
    if kind not in known:
        hint = difflib.get_close_matches(str(kind), list(known), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{field_name}={kind!r} is not a known {union}{extra}; valid: {', '.join(sorted(known))}")
    return known[kind]


class Unloaded:
    """Stands in for a variant whose class is not registered -- a plugin's, whose module could not be imported --
    when a config is read to show what is on disk (``progdistill status``, ``compare``): it keeps the variant's
    ``kind`` and its fields as written, serializes back to the same JSON, and is labelled by its ``name`` field or
    else its kind. Asking anything else of it raises ``ConfigError`` naming the type and why its class is missing."""

    kind: str
    union: str
    reasons: tuple[str, ...] = ()

    def __init__(self, **fields: Any):
        object.__setattr__(self, "fields", fields)

    @property
    def label(self) -> str:
        name = self.fields.get("name")
        return name if isinstance(name, str) and name else self.kind

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "fields":
            raise AttributeError(name)
        why = "; ".join(type(self).reasons) or "no module registers it (pass --import with the module that defines it)"
        raise ConfigError(f"{self.union} type {self.kind!r} is not available ({why}): its {name!r} cannot be read")

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Unloaded) and (other.union, other.kind, other.fields) == (
            self.union,
            self.kind,
            self.fields,
        )

    def __hash__(self) -> int:
        return hash((self.union, self.kind, json.dumps(self.fields, sort_keys=True)))

    def __repr__(self) -> str:
        return f"Unloaded({self.union} {self.kind!r}, {self.fields!r})"


_unloaded: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("unloaded", default=None)


@contextlib.contextmanager
def unloaded_variants(reasons: list[str] | None = None) -> Iterator[list[str]]:
    """Within: :func:`from_dict` turns a variant of an unknown kind into an :class:`Unloaded` stand-in instead of
    raising. ``reasons``: why plugins are missing (messages of the imports that failed), quoted by the stand-ins;
    the list yielded gathers them, plus any installed plugin that fails to import meanwhile."""
    gathered = list(reasons or ())
    token = _unloaded.set(gathered)
    try:
        yield gathered
    finally:
        _unloaded.reset(token)


def _stand_in(union: str, kind: str) -> type:
    reasons = tuple(_unloaded.get() or ())
    return type(f"Unloaded_{union}", (Unloaded,), {"kind": kind, "union": union, "reasons": reasons})


@dataclass(frozen=True)
class Tagged:
    """Type annotation marker: the field holds a variant of the tagged union ``union``."""

    union: str


ModelSpec = Annotated[Any, Tagged("model")]
ScheduleSpec = Annotated[Any, Tagged("schedule")]
TaskSpec = Annotated[Any, Tagged("task")]


# ----------------------------------------------------------------------------------------------------------
# Serialization


def to_dict(obj: Any, complete: bool = False) -> Any:
    """JSON-ready form of a config (dataclasses become dicts; tagged variants carry ``"type"``). A field marked
    ``omit_if_default`` (one added later, so that configs leaving it unset keep their hash) is left out at its
    default unless ``complete`` (the form ``--set`` edits, where every field can be set)."""
    if isinstance(obj, Unloaded):
        return {"type": obj.kind, **obj.fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if getattr(type(obj), "union", None):
            out["type"] = getattr(obj, "kind", None)  # every registered variant has one
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not complete and f.metadata.get("omit_if_default") and value == f.default:
                continue
            out[f.name] = to_dict(value, complete)
        return out
    if isinstance(obj, (tuple, list)):
        return [to_dict(v, complete) for v in obj]
    return obj


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(members) == 1:
            return _convert(members[0], value, path)
        return value
    if origin is Annotated:
        tags = [m for m in tp.__metadata__ if isinstance(m, Tagged)]
        if not tags:
            return _convert(typing.get_args(tp)[0], value, path)
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise ConfigError(
                f"{path}={value!r} is invalid: must be an object with a 'type' field naming a "
                f"{tags[0].union}; valid: {', '.join(sorted(_UNIONS.get(tags[0].union, {})))}"
            )
        cls = lookup_variant(tags[0].union, value["type"], f"{path}.type")
        fields = {k: v for k, v in value.items() if k != "type"}
        return cls(**fields) if issubclass(cls, Unloaded) else from_dict(cls, fields, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} is invalid: must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}.{i}") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}={value!r} is invalid: must have {len(args)} items")
        return tuple(_convert(a, v, f"{path}.{i}") for i, (a, v) in enumerate(zip(args, value)))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} is invalid: must be an object")
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if tp is int and not ok:
            example = (
                f" (e.g. {int(value)}, not {value:g})"
                if isinstance(value, float) and math.isfinite(value) and value == int(value)
                else ""
            )
            raise ConfigError(f"{path}={value!r} is invalid: must be an integer{example}")
        if not ok or (tp is float and not math.isfinite(value)):
            raise ConfigError(f"{path}={value!r} is invalid: must be a finite {tp.__name__}")
    return value


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build config ``cls`` from its JSON form, recursively. Unknown keys are an error naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}={data!r} is invalid: must be an object")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{path or cls.__name__}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(
            f"{path or 'config'}: required field(s) {', '.join(missing)} missing; fields: {', '.join(sorted(names))}"
        )
    kwargs = {}
    errors: list[ConfigError] = []
    for f in dataclasses.fields(cls):  # every field is converted, and every bad one reported at once
        if f.init and f.name in data:
            try:
                kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{path}.{f.name}" if path else f.name)
            except ConfigError as exc:
                errors.append(exc)
    raise_errors(errors)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None
    except ConfigError as exc:
        if not path:
            raise
        raise_errors([_at_path(path, p) for p in problems(exc)])
        raise  # unreachable: raise_errors raised


def _at_path(path: str, message: str) -> str:
    """A nested config's error message with the field named by its full path, e.g. student.batch_size,
    schedules.2.speed (the --set form)."""
    first = message.split("=", 1)[0].split(".", 1)
    if len(first) == 2 and (
        first[0] in ("model", "task", "optimizer", "distillation", "schedule") or path.split(".")[-1] == first[0]
    ):
        message = message.split(".", 1)[1]
    return f"{path}.{message}"


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths at which two JSON-form configs differ, with both values (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def flatten(data: Any, path: str = "") -> dict[str, Any]:
    """A JSON-form config as {dotted path: leaf value}, list items by index, e.g. ``distillation.temperature``,
    ``schedules.2.speed`` (the paths ``--set`` takes). An empty list or object is a leaf."""
    items: Iterable[tuple[str, Any]]
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, (list, tuple)) and data:
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {path: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{path}.{key}" if path else key))
    return out


def override(data: dict, assignment: str) -> dict:
    """Apply one ``dotted.path=value`` override to a JSON-form config (value parsed as JSON, else string). A JSON
    object given for an object is merged into it, key by key (``teacher={"steps": 100}`` changes the teacher's
    steps only); one with another ``"type"`` (a variant of another kind) replaces it."""

    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is invalid: must look like field.path=value")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        field: str | int = part  # a list's index or a dict's key
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {key}: {'.'.join(parts[: i + 1])} is not a valid index; valid here: "
                    + (f"0..{len(node) - 1}" if node else "none (the list is empty)")
                )
            field = int(part)
        elif not isinstance(node, dict) or part not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise ConfigError(f"--set {key}: no field {'.'.join(parts[: i + 1])!r}; valid here: {valid}")
        if i == len(parts) - 1:
            node[field] = _merged(node[field], value)
        else:
            node = node[field]
    return data


def _merged(old: Any, new: Any) -> Any:
    """``new`` merged into ``old``, recursively, where both are objects of one variant type; else ``new``."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or new.get("type", old.get("type")) != old.get("type"):
        return new
    return {**old, **{k: _merged(old[k], v) if k in old else v for k, v in new.items()}}
