"""predict_slide with runtime="onnx" or "openvino" writes the map runtime="torch" writes; bad
settings refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from infer_helpers import TinyDense, he_like, tiny_meta, tiny_pixnet

from hexpress.errors import ConfigError
from hexpress.infer import ModelInfo, TissueMask, engine, open_dense_map, predict_slide
from hexpress.infer.onnx_export import OnnxTileNet
from hexpress.io import ArrayImage

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'hexpress[onnx]'")
pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'hexpress[onnx]'")


def _graph_runtime(name: str) -> str:
    """``name``, skipping the test where its package is missing (both are in the dev extra)."""
    if name == "openvino":
        pytest.importorskip("openvino", reason="needs the openvino extra of hexpress")
    return name


# tiles of 128 px with 32 px margins: 64 px cores, so the 120 x 160 px slide takes 2 x 3 tiles
TILE_PX, MARGIN_PX = 128, 32


@pytest.fixture
def pixnet_info():
    return ModelInfo(tiny_pixnet(n_genes=3), {"model_mpp": 1.0, "genes": ["A", "B", "C"]})


def _map(info, slide, path, **kw) -> tuple[np.ndarray, dict]:
    timings: dict[str, float] = {}
    predict_slide(
        slide, info, path, tile_px=TILE_PX, margin=MARGIN_PX, tissue=TissueMask.full(slide),
        progress=False, timings=timings, exporter="torchscript", **kw,
    )  # fmt: skip
    dm = open_dense_map(path)
    values, covered = dm.read(0, dm.shape[0], 0, dm.shape[1])
    assert covered.all()
    return values, {"attrs": dm.attrs, "timings": timings}


def _assert_same_map(got: np.ndarray, ref: np.ndarray) -> None:
    # float32 agreement to 1e-4 of the map's spread, plus the float16 rounding of storage
    tol = 1e-4 * float(ref.std()) + 2.0**-10 * np.abs(ref)
    assert got.shape == ref.shape
    assert (np.abs(got - ref) <= tol).all(), float(np.abs(got - ref).max())


@pytest.mark.parametrize(
    "runtime,tta", [("onnx", False), ("onnx", True), ("openvino", False), ("openvino", True)]
)
def test_graph_map_equals_torch_map(tmp_path, pixnet_info, runtime, tta, caplog):
    runtime = _graph_runtime(runtime)
    slide = ArrayImage(he_like(120, 160), mpp=1.0)
    ref, r = _map(pixnet_info, slide, tmp_path / "torch.zarr", tta=tta)
    with caplog.at_level("INFO", logger="hexpress.infer.engine"):
        got, g = _map(pixnet_info, slide, tmp_path / "graph.zarr", tta=tta, runtime=runtime)
    grid = g["attrs"]["tile_grid"]
    assert (grid["n_rows"], grid["n_cols"]) == (2, 3)  # several tiles
    assert g["attrs"]["n_tiles_run"] == 6
    _assert_same_map(got, ref)
    assert set(g["timings"]) == set(r["timings"]) == {"wait_read", "net", "wait_write"}
    name = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}[runtime]
    assert "exported to ONNX" in caplog.text and f"{name} runs it" in caplog.text


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_graph_runtime_on_model_without_region(tmp_path, runtime):
    runtime = _graph_runtime(runtime)
    torch.set_num_threads(1)
    model = TinyDense(mode="density").eval()
    info = ModelInfo(model, tiny_meta(model))
    slide = ArrayImage(he_like(120, 160), mpp=1.0)
    ref, _ = _map(info, slide, tmp_path / "torch.zarr")
    got, _ = _map(info, slide, tmp_path / "graph.zarr", runtime=runtime)
    _assert_same_map(got, ref)


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino"])
def test_graph_runtimes_get_smaller_default_tiles(tmp_path, monkeypatch, runtime):
    """Without tile_px an exported graph gets tiles of at most GRAPH_TILE_PX (its memory)."""
    from hexpress.infer import tiling

    runtime = runtime if runtime == "torch" else _graph_runtime(runtime)
    # the caps scaled down, so that a small slide shows them (8 px margins)
    monkeypatch.setattr(tiling, "DEFAULT_CORE_PX", 8)
    monkeypatch.setattr(engine, "DEFAULT_TILE_PX", 96)
    monkeypatch.setattr(engine, "GRAPH_TILE_PX", 64)
    model = TinyDense(mode="density").eval()
    info = ModelInfo(model, tiny_meta(model))
    slide = ArrayImage(he_like(160, 160), mpp=1.0)
    predict_slide(
        slide, info, tmp_path / "m.zarr", tissue=TissueMask.full(slide), progress=False,
        exporter="torchscript", runtime=runtime,
    )  # fmt: skip
    tile = open_dense_map(tmp_path / "m.zarr").attrs["tile_grid"]["tile_px"]
    # 160 px in 2 cores of 80 px under a 96 px cap, in 4 cores of 40 px under a 64 px one
    assert tile == (96 if runtime == "torch" else 56)


def test_openvino_runs_float32_tile_by_tile(pixnet_info):
    _graph_runtime("openvino")
    net = OnnxTileNet(
        pixnet_info.model, TILE_PX, region=(8, 8, 24, 24), exporter="torchscript",
        runtime="openvino", threads=1,
    )  # fmt: skip
    x = torch.rand(3, 3, TILE_PX, TILE_PX, generator=torch.Generator().manual_seed(1))
    got = net(x, region=(8, 8, 24, 24)).numpy()
    with torch.inference_mode():
        ref = pixnet_info.model.eval()(x, region=(8, 8, 24, 24)).numpy()
    # three tiles give three outputs (not the last one's buffer three times), each at float32
    # agreement (OpenVINO's bfloat16 default on CPUs that have it would miss it by far)
    assert np.abs(got - ref).max() <= 1e-4 * ref.std()
    assert np.abs(got[0] - got[2]).max() > 10 * 1e-4 * ref.std()


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_graph_refuses_other_region_and_tile(pixnet_info, runtime):
    net = OnnxTileNet(
        pixnet_info.model, TILE_PX, region=(8, 8, 24, 24), exporter="torchscript",
        runtime=_graph_runtime(runtime),
    )  # fmt: skip
    x = torch.rand(1, 3, TILE_PX, TILE_PX)
    assert tuple(net(x, region=(8, 8, 24, 24)).shape) == (1, 4, 16, 16)  # 3 genes + total
    with pytest.raises(ConfigError, match="computes the map cells"):
        net(x, region=(0, 0, 32, 32))
    with pytest.raises(ConfigError, match="takes \\(B, 3, 128, 128\\) tiles"):
        net(torch.rand(1, 3, 96, 96), region=(8, 8, 24, 24))


def test_bad_runtime_settings_are_refused(tmp_path, pixnet_info, monkeypatch):
    slide = ArrayImage(he_like(40, 40), mpp=1.0)
    with pytest.raises(ConfigError, match="runtime must be one of"):
        predict_slide(slide, pixnet_info, tmp_path / "a.zarr", runtime="tflite")
    with pytest.raises(ConfigError, match="needs a GPU"):
        predict_slide(slide, pixnet_info, tmp_path / "b.zarr", runtime="onnx", precision="bf16")
    # a CUDA device (pretended: the check runs before anything touches it)
    monkeypatch.setattr(engine, "resolve_device", lambda d: torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="CPU only.*--device cpu.*--runtime torch"):
        predict_slide(slide, pixnet_info, tmp_path / "c.zarr", runtime="onnx", device="cuda")
    with pytest.raises(ConfigError, match="'openvino' runs on the CPU only"):
        predict_slide(slide, pixnet_info, tmp_path / "c.zarr", runtime="openvino", device="cuda")
    assert engine.runtime_device("onnx", "auto") == torch.device("cpu")  # auto: the CPU
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install 'hexpress\\[onnx\\]'"):
        predict_slide(slide, pixnet_info, tmp_path / "d.zarr", runtime="onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match="needs the package openvino.*hexpress\\[openvino\\]"):
        predict_slide(slide, pixnet_info, tmp_path / "e.zarr", runtime="openvino")
    assert not any(tmp_path.iterdir())  # refused before any map was started
