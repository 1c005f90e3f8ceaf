"""A dense model exported to ONNX for one tile and core gives predict_tiles' numbers in ONNX Runtime."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
import torch
from infer_helpers import TinyDense, tiny_pixnet

from hexpress._device import prepare_model
from hexpress.errors import ConfigError
from hexpress.infer import make_tile_grid
from hexpress.infer.engine import core_region, dense_forward
from hexpress.infer.onnx_export import export_onnx, ort_session
from hexpress.models.fuse import fold_batchnorms
from hexpress.models.pixnet import DFFN

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'hexpress[onnx]'")
pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'hexpress[onnx]'")

TILE_PX, MARGIN_PX = 128, 32


@pytest.fixture
def pixnet():
    """A tiny PixNet with non-trivial batch-norm statistics and DFFN strips of 4 rows."""
    model = tiny_pixnet(n_genes=5)
    for mod in model.modules():
        if isinstance(mod, DFFN):
            mod.strip_bytes = 1  # strips of the minimum 4 rows: the strip path is exported
    return model


def _tile_and_region(model):
    grid = make_tile_grid(
        (TILE_PX, TILE_PX), stride=model.stride, receptive_field_px=MARGIN_PX, tile_px=TILE_PX,
        align_px=model.reduction,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    # an NHWC tile permuted: channels-last strides, as predict_tiles hands tiles to the model
    x = torch.rand(1, TILE_PX, TILE_PX, 3, generator=gen).permute(0, 3, 1, 2)
    return x, core_region(model, grid)


def _torch_path(model, x, region) -> np.ndarray:
    """What predict_tiles computes for one tile on the CPU."""
    net = prepare_model(fold_batchnorms(model), torch.device("cpu"))
    with torch.inference_mode():
        return dense_forward(net, x, region=region).numpy()


def _run(graph, x, level="all") -> np.ndarray:
    sess = ort_session(graph, threads=1, level=level)
    (name,) = (i.name for i in sess.get_inputs())
    return sess.run(None, {name: np.ascontiguousarray(x.numpy())})[0]


def _check_parity(model, graph, x, region, levels=("extended", "all")):
    ref = _torch_path(model, x, region)
    y0, x0, y1, x1 = region
    assert ref.shape == (1, model.n_out, y1 - y0, x1 - x0)
    with torch.inference_mode():  # the model itself, batch norms unfolded, whole map
        whole = model(x).numpy()[..., y0:y1, x0:x1]
    np.testing.assert_allclose(ref, whole, atol=1e-4 * ref.std())
    for level in levels:
        y = _run(graph, x, level)
        assert y.shape == ref.shape, level
        assert np.abs(y - ref).max() <= 1e-4 * ref.std(), level


def test_torchscript_export_matches_predict_tiles_path(pixnet, tmp_path):
    x, region = _tile_and_region(pixnet)
    path = tmp_path / "tile.onnx"
    graph = export_onnx(pixnet, TILE_PX, region=region, path=path, exporter="torchscript")
    assert path.read_bytes() == graph
    assert [p.name for p in tmp_path.iterdir()] == ["tile.onnx"]  # no temporary left behind
    _check_parity(pixnet, path, x, region)


@pytest.mark.slow
def test_dynamo_export_matches_predict_tiles_path(pixnet):
    x, region = _tile_and_region(pixnet)
    with contextlib.redirect_stdout(sys.stderr):
        graph = export_onnx(pixnet, TILE_PX, region=region, exporter="dynamo")
    _check_parity(pixnet, graph, x, region, levels=("all",))


def test_model_without_region_exports_whole_map():
    torch.manual_seed(0)
    model = TinyDense(mode="density").eval()
    x = torch.rand(1, 3, 40, 40)
    graph = export_onnx(model, 40, exporter="torchscript")
    with torch.inference_mode():
        ref = model(x).numpy()
    y = _run(graph, x)
    assert y.shape == ref.shape == (1, 4, 10, 10)
    assert np.abs(y - ref).max() <= 1e-5


def test_bad_arguments_say_what_is_wrong(pixnet):
    with pytest.raises(ConfigError, match="exporter must be one of"):
        export_onnx(pixnet, TILE_PX, exporter="tflite")
    with pytest.raises(ConfigError, match="tile_px must be a positive"):
        export_onnx(pixnet, 0)
    with pytest.raises(ConfigError, match="computes whole maps"):
        export_onnx(TinyDense(), 40, region=(0, 0, 2, 2))
    graph = export_onnx(TinyDense(), 40, exporter="torchscript")
    with pytest.raises(ConfigError, match="level must be one of"):
        ort_session(graph, level="max")
