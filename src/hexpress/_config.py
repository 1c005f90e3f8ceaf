"""Nested config dataclasses <-> YAML and ``key.sub=value`` overrides, with types checked.

The engine behind every hexpress config (training, benchmarks): a recipe is a YAML mapping
whose keys are the dataclass fields; :func:`build_dataclass` builds the dataclass from a nested
dict, checking every key (an unknown key is a :class:`~hexpress.errors.ConfigError` that lists
the valid ones, never silently ignored) and converting values to the field types (a strict
subset of ``typing``: ``bool``, ``int``, ``float``, ``str``, ``list[...]``, ``dict[str, ...]``,
unions with ``None``, nested dataclasses, ``Any``). :func:`apply_overrides` applies
``section.key=value`` overrides on top, each value parsed for its field's type. Precedence
(after litgpt): dataclass defaults < YAML recipe < overrides.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from hexpress.errors import ConfigError, InputFileError

__all__ = ["apply_overrides", "build_dataclass", "fail", "read_yaml"]


def fail(path: str, msg: str) -> ConfigError:
    """The error for config key ``path`` (``optim.lr``...): ``config <path>: <msg>``."""
    return ConfigError(f"config {path}: {msg}")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (a small, strict subset of typing)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise fail(path, f"expected {_type_name(tp)}, got {value!r}.")
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail(path, f"expected a mapping of {sorted(_fields(tp))}, got {value!r}.")
        return _build(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # one value where a list is expected: a list of one
        if not isinstance(value, (list, tuple)):
            raise fail(path, f"expected a list, got {value!r}.")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (str, Any)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail(path, f"expected a mapping, got {value!r}.")
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(path, f"expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise fail(path, f"expected an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail(path, f"expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise fail(path, f"expected a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail(path, f"expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail(path, f"expected a string, got {value!r}.")
    return value


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, values: dict, path: str):
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + str(k) for k in unknown)}; valid keys"
            f"{' of ' + path if path else ''}: {', '.join(fields)}."
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, fields[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _parse_value(text: str, tp: Any) -> Any:
    """An override's text as a value of the field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    plain = (
        [a for a in args if a is not type(None)]
        if origin in (typing.Union, types.UnionType)
        else [tp]
    )
    if text.strip().lower() in ("null", "none", "~") and type(None) in args:
        return None
    if plain == [str]:
        return text  # strings stay as written: "01" is not the number 1
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse override value {text!r}: {e}.") from None


def build_dataclass(cls, values: dict, path: str = ""):
    """A config dataclass ``cls`` from a nested dict, every key and type checked (see the module
    docstring); ``path`` prefixes the keys in messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'a config'} must be a mapping, got {type(values).__name__}.")
    return _build(cls, values, path)


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...], root: type) -> dict:
    """Apply ``section.key=value`` overrides to a nested config dict (returns a new dict).

    Keys are checked against the dataclass fields; values are parsed for the field's type
    (YAML syntax for numbers, booleans, lists ``[a,b]`` and mappings ``{k: v}``). Inside a
    free-form mapping (a ``dict`` field such as ``model.kwargs``) deeper keys are allowed.
    ``root`` is the config dataclass the keys belong to.
    """
    out = json.loads(json.dumps(values or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)."
            )
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has no key.")
        _set(out, root, parts, [], text, item)
    return out


def _set(node: dict, tp: Any, parts: list[str], seen: list[str], text: str, item: str) -> None:
    part = parts[0]
    if _is_dataclass_type(tp):
        fields = _fields(tp)
        if part not in fields:
            where = ".".join(seen) or "the config"
            raise ConfigError(
                f"unknown config key {'.'.join([*seen, part])!r} in override {item!r}; valid "
                f"keys of {where}: {', '.join(fields)}."
            )
        sub = fields[part]
    elif typing.get_origin(tp) is dict:
        sub = (typing.get_args(tp) or (str, Any))[1]
    elif tp is Any:
        sub = Any
    else:
        raise ConfigError(
            f"override {item!r}: {'.'.join(seen)!r} is a single value ({_type_name(tp)}), "
            "it has no sub-keys."
        )
    if len(parts) == 1:
        node[part] = _parse_value(text, sub)
        return
    nxt = node.get(part)
    if not isinstance(nxt, dict):
        nxt = {}
        node[part] = nxt
    _set(nxt, sub, parts[1:], [*seen, part], text, item)


def read_yaml(path: str | Path) -> dict:
    """A YAML recipe as a dict (empty file: empty dict)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"config file not found: {path}.")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: a config is a mapping of sections (e.g. data, model, optim, run), got "
            f"{type(doc).__name__}."
        )
    return doc
