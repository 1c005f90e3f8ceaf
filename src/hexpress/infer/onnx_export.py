"""A dense model as an ONNX graph for one tile shape, run on the CPU by ONNX Runtime or OpenVINO.

The graph is what :func:`hexpress.infer.engine.predict_tiles` runs for one tile: the model with
its batch norms folded (:func:`hexpress.models.fuse.fold_batchnorms`), input ``(1, 3, T, T)``
float32 RGB in [0, 1], and for models that accept a ``region`` (PixNet) only the tile core's
cells as output. The tile side and the region are fixed in the graph (PixNet's decoder slices
depend on them), so a graph serves one tile grid.

:class:`OnnxTileNet` is such a graph in an ONNX Runtime session or compiled by OpenVINO for the
CPU, called as the model is: what ``hexpress predict --runtime onnx`` (or ``--runtime
openvino``) runs on each tile (:func:`hexpress.infer.engine.tile_net`); ``hexpress export-onnx``
writes the graph to a file.

Needs the ``onnx`` extra, ``pip install 'hexpress[onnx]'`` (onnx and onnxscript for torch's
exporter, onnxruntime to run the graph), or the ``openvino`` extra for OpenVINO.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from hexpress._files import write_file
from hexpress.errors import ConfigError
from hexpress.models.fuse import fold_batchnorms

__all__ = [
    "FixedRegion",
    "OnnxTileNet",
    "export_onnx",
    "ort_session",
    "openvino_model",
    "require_onnx",
    "GRAPH_RUNTIMES",
    "EXPORTERS",
    "GRAPH_LEVELS",
]

EXPORTERS = ("dynamo", "torchscript")
"""torch's exporters: ``torch.export``-based (torch's default) and the older tracing one."""

GRAPH_RUNTIMES = {"onnx": ("onnxruntime", "ONNX Runtime"), "openvino": ("openvino", "OpenVINO")}
"""What runs an exported graph on the CPU: runtime name (also the name of the hexpress extra that
installs it) -> (its Python package, its name in messages)."""

GRAPH_LEVELS = ("disable", "basic", "extended", "layout", "all")
"""ONNX Runtime graph optimisation levels, by the names of ``GraphOptimizationLevel``."""


def _require(module: str, what: str, extra: str = "onnx") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{what} needs the package {module}: pip install 'hexpress[{extra}]'."
        ) from e


# loggers of torch's dynamo exporter, which log each of its graph passes at INFO
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress (stdout) to stderr, its INFO logs off unless debugging."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def require_onnx(exporter: str = "dynamo", *, run: bool = True, runtime: str = "onnx") -> None:
    """Refuse, before any work, a missing package that exporting (and running, ``run``) needs.

    ``runtime`` is what runs the graph (:data:`GRAPH_RUNTIMES`): ``"onnx"`` (ONNX Runtime) or
    ``"openvino"``; each has a hexpress extra of its name that installs it with the exporter.

    Raises:
        ConfigError: an unknown exporter or runtime, or onnx / onnxscript / the runtime's
            package missing.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}.")
    if runtime not in GRAPH_RUNTIMES:
        raise ConfigError(f"graph runtime must be one of {tuple(GRAPH_RUNTIMES)}, got {runtime!r}.")
    _require("onnx", "ONNX export", runtime)
    if exporter == "dynamo":
        _require("onnxscript", "ONNX export", runtime)
    if run:
        module, name = GRAPH_RUNTIMES[runtime]
        _require(module, f"{name} inference", runtime)


class FixedRegion(nn.Module):
    """``model(x, region=region)`` as a one-argument module (``region=None``: ``model(x)``)."""

    def __init__(self, model: nn.Module, region: tuple[int, int, int, int] | None) -> None:
        super().__init__()
        self.model = model
        self.region = None if region is None else tuple(int(v) for v in region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.region is None:
            return self.model(x)
        return self.model(x, region=self.region)


def export_onnx(
    model: nn.Module,
    tile_px: int,
    *,
    region: tuple[int, int, int, int] | None = None,
    path: str | os.PathLike | None = None,
    exporter: str = "dynamo",
    opset: int = 18,
) -> bytes:
    """The ONNX graph (serialised) of ``model`` on one ``(1, 3, tile_px, tile_px)`` tile.

    Args:
        model: a dense model; it is not changed (a copy with batch norms folded is exported).
        tile_px: the input side, margins included.
        region: the map cells ``(y0, x0, y1, x1)`` to compute, as
            :func:`hexpress.infer.engine.core_region` gives them; ``None``: the whole map.
        path: when given, the graph is also written there (atomically).
        exporter: ``"dynamo"`` (``torch.export``) or ``"torchscript"`` (tracing).
        opset: the ONNX opset.

    Raises:
        ConfigError: an unknown exporter, a tile side below 1, a region for a model that takes
            none, or the onnx packages missing.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}.")
    if int(tile_px) < 1:
        raise ConfigError(f"tile_px must be a positive number of px, got {tile_px}.")
    if region is not None and not getattr(model, "accepts_region", False):
        raise ConfigError(
            f"{type(model).__name__} computes whole maps; export it with region=None."
        )
    require_onnx(exporter, run=False)
    net = FixedRegion(fold_batchnorms(model).float().cpu(), region).eval()
    x = torch.zeros(1, 3, int(tile_px), int(tile_px))
    names = {"input_names": ["tile"], "output_names": ["map"]}
    with torch.no_grad():
        if exporter == "dynamo":
            with _quiet_exporter():
                program = torch.onnx.export(
                    net, (x,), None, dynamo=True, opset_version=opset, verbose=False, **names
                )
            data = program.model_proto.SerializeToString()
        else:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                # the tile shape is fixed in the graph: shapes read as Python numbers are meant
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset, **names)
            data = buf.getvalue()
    if path is not None:
        write_file(path, data)
    return data


def ort_session(
    graph: bytes | str | os.PathLike,
    *,
    threads: int | None = None,
    level: str = "all",
    config: dict[str, str] | None = None,
):
    """An ONNX Runtime session on the CPU execution provider for a graph (bytes or a file).

    ``threads`` sets the intra-op threads (``None``: ONNX Runtime's default, one per core) and
    one inter-op thread; ``level`` is the graph optimisation level (:data:`GRAPH_LEVELS`;
    ``"layout"`` and ``"all"`` add ONNX Runtime's blocked NCHWc layout for convolutions on the
    CPU); ``config`` adds session config entries (``SessionOptions.add_session_config_entry``).
    """
    ort = _require("onnxruntime", "ONNX Runtime inference")
    if level not in GRAPH_LEVELS:
        raise ConfigError(f"level must be one of {GRAPH_LEVELS}, got {level!r}.")
    opts = ort.SessionOptions()
    name = "ORT_DISABLE_ALL" if level == "disable" else f"ORT_ENABLE_{level.upper()}"
    if not hasattr(ort.GraphOptimizationLevel, name):
        raise ConfigError(f"onnxruntime {ort.__version__} has no level {level!r}; upgrade it.")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for k, v in (config or {}).items():
        opts.add_session_config_entry(str(k), str(v))
    src = graph if isinstance(graph, bytes) else os.fspath(graph)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def openvino_model(graph: bytes | str | os.PathLike, *, threads: int | None = None):
    """A graph (ONNX bytes or a file) compiled by OpenVINO for the CPU, in float32.

    OpenVINO's CPU plugin would otherwise run in bfloat16 on CPUs that have it (its default
    inference precision there); the map must not depend on which CPU made it, so the precision
    is float32 everywhere. ``threads`` sets its inference threads (``None``: OpenVINO's default),
    in one stream with the latency hint: one tile at a time, all threads on it.
    """
    ov = _require("openvino", "OpenVINO inference", "openvino")
    core = ov.Core()
    src = core.read_model(graph if isinstance(graph, bytes) else os.fspath(graph))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(src, "CPU", config)


class OnnxTileNet:
    """A dense model exported for one tile side and core, run on the CPU by ONNX Runtime or OpenVINO.

    Called as the model is, ``net(x, region=region)`` on ``(B, 3, T, T)`` float input in [0, 1]
    (``B`` tiles run one after another), it gives the model's float32 output for the region
    the graph was exported with. It has the model's ``stride``, so
    :func:`hexpress.models.tta.dense_tta` runs it under its 8 transforms: a centred square
    region of a square tile maps onto itself under each of them, so one graph serves all.

    Attributes:
        tile_px: the input side fixed in the graph.
        region: the map cells the graph computes (``None``: the whole map).
        runtime: what runs the graph: ``"onnx"`` (ONNX Runtime, graph optimisation ``level``)
            or ``"openvino"`` (:func:`openvino_model`).
        graph: the serialised ONNX graph.
    """

    def __init__(
        self,
        model: nn.Module,
        tile_px: int,
        *,
        region: tuple[int, int, int, int] | None = None,
        threads: int | None = None,
        level: str = "all",
        exporter: str = "dynamo",
        runtime: str = "onnx",
    ) -> None:
        require_onnx(exporter, runtime=runtime)
        self.tile_px = int(tile_px)
        self.region = None if region is None else tuple(int(v) for v in region)
        self.stride = int(getattr(model, "stride", 1))
        self.runtime = runtime
        self.graph = export_onnx(model, self.tile_px, region=self.region, exporter=exporter)
        if runtime == "openvino":
            request = openvino_model(self.graph, threads=threads).create_infer_request()
            # a copy of the output, not a view of the request's buffer that the next call reuses
            self._run = lambda t: request.infer({0: t}, share_outputs=False)[0]
        else:
            session = ort_session(self.graph, threads=threads, level=level)
            names = [session.get_outputs()[0].name]
            feed = session.get_inputs()[0].name
            self._run = lambda t: session.run(names, {feed: t})[0]

    def __call__(
        self, x: torch.Tensor, region: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        got = None if region is None else tuple(int(v) for v in region)
        if got != self.region:
            raise ConfigError(
                f"this ONNX graph computes the map cells {self.region}, not {got}: export "
                "the model again for this tile grid."
            )
        if tuple(x.shape[1:]) != (3, self.tile_px, self.tile_px):
            raise ConfigError(
                f"this ONNX graph takes (B, 3, {self.tile_px}, {self.tile_px}) tiles, got "
                f"{tuple(x.shape)}: export the model again for this tile side."
            )
        arr = x.detach().to("cpu", torch.float32).numpy()
        outs = [self._run(np.ascontiguousarray(t)) for t in np.split(arr, len(arr))]
        return torch.from_numpy(np.concatenate(outs))
