"""Checkpoints that describe themselves: ``<name>.safetensors`` + ``<name>.json``.

The safetensors file holds the tensors (the model's state dict under ``model.``, optional extra
tensors under ``extra.``); the JSON holds everything needed to rebuild and use the model with no
outside file: registry name and keyword arguments, kind, stride, ``model_mpp``, genes,
normalisation, the resolved training config, and the SHA-256 of the tensor file. Both are written
to temporary files and moved into place with ``os.replace``, tensors first and JSON last, so a
crash leaves either the previous pair or a pair whose hash does not match, which loading detects.
Loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hexpress._files import atomic_path, sha256_file, write_json
from hexpress.errors import CheckpointError, ConfigError

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "checkpoint_paths", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = "hexpress-checkpoint"
FORMAT_VERSION = 1
_MODEL = "model."
_EXTRA = "extra."


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensors, json)`` paths of a checkpoint given either file or the common stem."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _jsonable(name: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"checkpoint {name} must be JSON-serialisable (numbers, strings, lists, dicts): {e}."
        ) from None


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the rebuilt model, in eval mode, on the requested device.
        meta: the JSON metadata (``model_name``, ``model_kwargs``, ``kind``, ``stride``,
            ``model_mpp``, ``genes``, ``normalization``, ``stain``, ``config``, ``patch_um``, ``extra``,
            ``format_version``, ``hexpress_version``).
        extra_tensors: tensors saved with ``extra_tensors=``.
        path: the JSON file.
    """

    model: nn.Module
    meta: dict[str, Any]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    @property
    def genes(self) -> list[str]:
        return list(self.meta["genes"])

    @property
    def model_mpp(self) -> float:
        return float(self.meta["model_mpp"])

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.meta.get("normalization") or {})

    @property
    def config(self) -> dict[str, Any] | None:
        return self.meta.get("config")

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def stain(self) -> dict[str, Any] | None:
        """The stain normalisation inputs go through (:mod:`hexpress.data.stain`), or ``None``."""
        return self.meta.get("stain")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    model_mpp: float,
    genes: list[str],
    normalization: dict[str, Any],
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    stain: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a checkpoint pair atomically.

    Args:
        path: ``run/model`` (or ``run/model.safetensors`` / ``.json``): the common stem.
        model: the model; its state dict is saved.
        model_name: the registry name that rebuilds it.
        model_kwargs: the keyword arguments it was built with (JSON-serialisable);
            ``pretrained``/``encoder_weights`` are not needed to rebuild and are dropped.
        model_mpp: µm per input pixel the model works at.
        genes: gene names, in output order.
        normalization: how targets were normalised (e.g. ``{"method": "log1p_cpt",
            "scale": 10000}``).
        config: the resolved training config.
        extra: more JSON metadata (step, epoch, metrics...).
        extra_tensors: more tensors to keep (e.g. gene means).
        stain: the stain normalisation the model's inputs went through
            (:meth:`hexpress.data.stain.StainNormalizer.to_meta`); inference applies the same.

    Returns:
        ``(tensors_path, json_path)``.
    """
    from safetensors.torch import save_file

    import hexpress

    tensors_path, json_path = checkpoint_paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    n_genes = getattr(model, "n_genes", None)
    if n_genes is not None and len(genes) != n_genes:
        raise ConfigError(f"the model predicts {n_genes} genes but {len(genes)} names were given.")
    if not model_mpp or float(model_mpp) <= 0:
        raise ConfigError(f"model_mpp must be a positive µm per pixel, got {model_mpp!r}.")
    kwargs = {
        k: v
        for k, v in dict(model_kwargs).items()
        if k not in ("pretrained", "encoder_weights") and v is not None
    }
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        # clone: tied/shared storages cannot be saved by safetensors.
        tensors[_MODEL + k] = v.detach().to("cpu").contiguous().clone()
    for k, v in (extra_tensors or {}).items():
        tensors[_EXTRA + k] = torch.as_tensor(v).detach().to("cpu").contiguous().clone()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hexpress_version": hexpress.__version__,
        "model_name": model_name,
        "model_kwargs": _jsonable("model_kwargs", kwargs),
        "kind": getattr(model, "kind", None),
        "stride": getattr(model, "stride", None),
        "mode": getattr(model, "mode", None),
        "patch_um": getattr(model, "patch_um", None),
        "input_px": getattr(model, "input_px", None),
        "n_genes": len(genes),
        "model_mpp": float(model_mpp),
        "genes": [str(g) for g in genes],
        "normalization": _jsonable("normalization", normalization),
        "stain": _jsonable("stain", stain),
        "config": _jsonable("config", config),
        "extra": _jsonable("extra", extra or {}),
    }
    with atomic_path(tensors_path, fsync=True) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT, "model_name": model_name})
    meta["tensors_file"] = tensors_path.name
    meta["tensors_sha256"] = sha256_file(tensors_path)
    write_json(json_path, meta, indent=1, fsync=True)
    log.info("checkpoint written: %s (+ %s)", json_path, tensors_path.name)
    return tensors_path, json_path


def _read_meta(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path} is missing: a hexpress checkpoint is a .safetensors file plus its "
            ".json description, written together by training."
        )
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); the file is corrupt.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{json_path} is not a hexpress checkpoint description (no format: {FORMAT!r})."
        )
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path} has checkpoint format {meta.get('format_version')}, newer than this "
            f"hexpress reads ({FORMAT_VERSION}); upgrade hexpress."
        )
    for key in ("model_name", "model_kwargs", "genes", "model_mpp", "tensors_sha256"):
        if key not in meta:
            raise CheckpointError(f"{json_path} lacks {key!r}; the checkpoint is incomplete.")
    return meta


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint and rebuild its model from the registry (no pickle, no download).

    Args:
        path: the stem, the ``.json`` or the ``.safetensors`` file.
        device: where to put the model.

    Raises:
        CheckpointError: a file is missing, foreign, corrupt, half-written, or does not fit the
            model it names.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hexpress.models.registry import create_model

    tensors_path, json_path = checkpoint_paths(path)
    meta = _read_meta(json_path)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path} is missing; {json_path.name} describes it.")
    if sha256_file(tensors_path) != meta["tensors_sha256"]:
        raise CheckpointError(
            f"{tensors_path} does not match the hash recorded in {json_path.name}: it was "
            "modified or only half written (e.g. training was killed while saving). Use an "
            "earlier checkpoint."
        )
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {tensors_path}: {e}.") from e
    state = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    extra = {k[len(_EXTRA) :]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    kwargs = dict(meta["model_kwargs"])
    kwargs.pop("encoder_weights", None)
    kwargs["pretrained"] = False  # every weight is in the file
    try:
        model = create_model(meta["model_name"], **kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{json_path}: cannot rebuild the model: {e}") from e
    current = model.state_dict()
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in current.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{tensors_path} does not fit model {meta['model_name']!r} with "
            f"{meta['model_kwargs']}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shapes)} shape "
            f"mismatches (e.g. {shapes[:3]})."
        )
    model.load_state_dict(state, strict=True)
    n_genes = getattr(model, "n_genes", None)
    if n_genes is not None and n_genes != len(meta["genes"]):
        raise CheckpointError(
            f"{json_path} lists {len(meta['genes'])} genes but the model predicts {n_genes}."
        )
    model.to(device).eval()
    return Checkpoint(model=model, meta=meta, extra_tensors=extra, path=json_path)
