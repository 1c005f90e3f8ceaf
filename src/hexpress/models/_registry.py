"""The model registry: small decorated factory functions, looked up by name (after timm).

A model variant is a function that builds and returns an ``nn.Module``; decorating it with
:func:`register_model` makes it available to :func:`hexpress.models.create_model` under its
function name. The decorator records what ``hexpress models`` lists: the kind of model, its
encoder and a one-line description (the first line of the factory's docstring).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hexpress.errors import ConfigError

__all__ = ["ModelEntry", "register_model", "register_alias", "get_entry", "list_models"]

KINDS = ("dense", "patch")


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model variant."""

    name: str
    fn: Callable[..., nn.Module]
    kind: str
    encoder: str | None
    description: str
    notes: dict[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Keyword arguments of the factory with their default values."""
        sig = inspect.signature(self.fn)
        return {
            k: p.default
            for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    def accepts(self, kwarg: str) -> bool:
        """Whether the factory takes keyword ``kwarg`` (or ``**kwargs``)."""
        params = inspect.signature(self.fn).parameters
        return kwarg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_MODELS: dict[str, ModelEntry] = {}
#: Old names that still build a model (checkpoints and configs written before a rename).
_ALIASES: dict[str, str] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    kind: str = "dense",
    encoder: str | None = None,
    **notes: Any,
):
    """Register a model factory under its function name.

    Usable bare (``@register_model``) or with metadata
    (``@register_model(kind="patch", encoder="resnet18", loss="mse")``); extra keywords are
    kept as notes that :func:`hexpress.models.describe_model` returns (e.g. a recommended loss).

    Raises:
        ConfigError: a model of that name is already registered or ``kind`` is unknown.
    """
    if kind not in KINDS:
        raise ConfigError(f"model kind must be one of {KINDS}, got {kind!r}.")

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS or name in _ALIASES:
            raise ConfigError(f"a model named {name!r} is already registered.")
        doc = inspect.getdoc(f) or ""
        _MODELS[name] = ModelEntry(
            name=name,
            fn=f,
            kind=kind,
            encoder=encoder,
            description=doc.splitlines()[0] if doc else "",
            notes=dict(notes),
        )
        return f

    return wrap(fn) if fn is not None else wrap


def register_alias(alias: str, name: str) -> None:
    """Make ``alias`` build the registered model ``name`` (not listed by :func:`list_models`)."""
    if alias in _MODELS or alias in _ALIASES:
        raise ConfigError(f"a model named {alias!r} is already registered.")
    get_entry(name)
    _ALIASES[alias] = name


def list_models(pattern: str | None = None, *, kind: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by a glob and by kind."""
    import fnmatch

    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if kind:
        names = [n for n in names if _MODELS[n].kind == kind]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid names.
    """
    try:
        return _MODELS[_ALIASES.get(name, name)]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}. Registered models: {', '.join(list_models())}. "
            "Run `hexpress models` to see what each one is."
        ) from None
