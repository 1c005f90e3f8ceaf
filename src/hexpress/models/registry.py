"""Build models by name: ``create_model``, ``list_models``, ``describe_model`` (after timm).

Importing :mod:`hexpress.models` registers every model family (PixNet, patch regressors, ridge
and mean baselines), so these functions see them all.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from hexpress.errors import ConfigError
from hexpress.models._registry import get_entry, list_models, register_model
from hexpress.models.encoders import encoder_spec, encoder_weights_available, list_encoders

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "describe_model",
    "encoder_info",
]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Keyword arguments that are ``None`` are dropped, so an unset command-line option never
    overrides a model's own default.

    Args:
        name: a registered model (:func:`list_models`).
        **kwargs: the factory's arguments (``n_genes``, ``pretrained``, ``encoder_weights``,
            ``mode``, ``patch_um``, ...; see :func:`describe_model`).

    Raises:
        ConfigError: unknown name or argument.
    """
    entry = get_entry(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        inspect.signature(entry.fn).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(
            f"model {name!r} does not take these arguments ({e}); its arguments and defaults: "
            f"{entry.defaults()}."
        ) from None
    try:
        return entry.fn(**kwargs)
    except TypeError as e:
        # A factory forwarding **kwargs to a constructor that does not know one of them.
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(
            f"model {name!r} does not take these arguments ({e}); see `hexpress models` and "
            f"the model's docstring for its arguments (factory defaults: {entry.defaults()})."
        ) from None


def describe_model(name: str) -> dict[str, Any]:
    """What the registry knows about ``name``.

    Returns:
        dict with ``name``, ``kind`` (``dense``/``patch``), ``encoder``, ``description``,
        ``defaults`` (factory keyword defaults), ``pretrained_available`` (whether the
        encoder's pretrained weights are on this machine; None when it has no encoder) and any
        notes (e.g. ``loss="mse"`` for ST-Net).
    """
    entry = get_entry(name)
    info: dict[str, Any] = {
        "name": entry.name,
        "kind": entry.kind,
        "encoder": entry.encoder,
        "description": entry.description,
        "defaults": entry.defaults(),
        "pretrained_available": (
            encoder_weights_available(entry.encoder) if entry.encoder else None
        ),
    }
    info.update(entry.notes)
    return info


def encoder_info(name: str) -> dict[str, Any]:
    """What the encoder registry knows about ``name`` (see :func:`list_encoders`)."""
    spec = encoder_spec(name)
    return {
        "name": spec.name,
        "timm_name": spec.timm_name,
        "weights": spec.weights,
        "pretrained_available": encoder_weights_available(name),
        "dense": spec.dense,
        "description": spec.description,
    }


__all__ += ["list_encoders"]
