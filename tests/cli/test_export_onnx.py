"""hexpress export-onnx writes a graph ONNX Runtime runs; predict --runtime checks its value."""

import numpy as np
import pytest
import torch
from cli_helpers import helper_module, run

from hexpress.infer.engine import dense_forward
from hexpress.infer.onnx_export import ort_session
from hexpress.infer.pipeline import load_model_info
from hexpress.models import create_model, save_checkpoint
from hexpress.models.fuse import fold_batchnorms

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'hexpress[onnx]'")
pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'hexpress[onnx]'")

infer_helpers = helper_module("infer_helpers", "infer/infer_helpers.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A slide and a test_pixnet checkpoint (receptive field 160 px, stride 4, genes A, B, C)."""
    return infer_helpers.write_predict_inputs(tmp_path_factory.mktemp("export"))


def test_export_writes_a_graph_that_runs_as_the_model(workdir, capsys, tmp_path):
    out = tmp_path / "pixnet.onnx"
    args = ["export-onnx", workdir / "ckpt" / "model", "--out", out, "--tile-px", "384",
            "--exporter", "torchscript"]  # fmt: skip
    code, text, err = run(args, capsys)
    assert code == 0, err
    # 384 px tiles, 160 px margins: a core of 64 px = 16 cells, cells [40, 56) of the 96 x 96 map
    assert "tile: 384 px at 1 µm/px, margin 160 px, core 16 x 16 cells of 4 px" in text
    assert "input:  tile [1, 3, 384, 384]" in text
    assert "output: map [1, 4, 16, 16]" in text and "[40, 40, 56, 56]" in text
    assert [p.name for p in tmp_path.iterdir()] == ["pixnet.onnx"]  # atomic: nothing else
    sess = ort_session(out, threads=1)
    x = torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    got = sess.run(None, {"tile": x.numpy()})[0]
    model = load_model_info(workdir / "ckpt" / "model").model
    with torch.inference_mode():
        ref = dense_forward(fold_batchnorms(model), x, region=(40, 40, 56, 56)).numpy()
        whole = model(x).numpy()[..., 40:56, 40:56]  # the untouched model, whole map
    assert got.shape == ref.shape == (1, 4, 16, 16)
    assert np.abs(got - ref).max() <= 1e-4 * ref.std()
    assert np.abs(got - whole).max() <= 1e-4 * ref.std()


def test_export_refuses_bad_input(workdir, capsys, tmp_path):
    ckpt = workdir / "ckpt" / "model"
    code, _, err = run(["export-onnx", tmp_path / "nope", "--out", tmp_path / "a.onnx"], capsys)
    assert code == 1 and "no such checkpoint" in err
    code, _, err = run(["export-onnx", ckpt, "--out", tmp_path / "b.onnx", "--tile-px", "200"], capsys)  # fmt: skip
    assert code == 1 and "too small for a margin of 160 px" in err and "--tile-px 352" in err
    code, _, err = run(["export-onnx", ckpt, "--out", tmp_path, "--tile-px", "384"], capsys)
    assert code == 1 and "is a folder" in err
    code, _, err = run(["export-onnx", ckpt, "--out", tmp_path / "c.onnx", "--exporter", "x"], capsys)  # fmt: skip
    assert code == 1 and "exporter must be one of" in err
    torch.manual_seed(0)
    patch = create_model("test_patch", n_genes=3, patch_um=24, input_px=32)
    save_checkpoint(
        tmp_path / "patch" / "model", patch, model_name="test_patch",
        model_kwargs={"n_genes": 3, "patch_um": 24, "input_px": 32}, model_mpp=1.0,
        genes=["A", "B", "C"], normalization={"method": "log1p", "scale": 1e4},
    )  # fmt: skip
    code, _, err = run(["export-onnx", tmp_path / "patch" / "model", "--out", tmp_path / "p.onnx"], capsys)  # fmt: skip
    assert code == 1 and "holds a patch model" in err
    code, _, err = run(
        ["predict", workdir / "slide.tif", "--checkpoint", tmp_path / "patch" / "model",
         "--out", tmp_path / "o", "--bins", "16", "--runtime", "onnx"], capsys,
    )  # fmt: skip
    assert code == 1 and "runs dense models" in err
    assert not (tmp_path / "o").exists() and "Traceback" not in err


def test_predict_refuses_unknown_runtime(workdir, capsys, tmp_path):
    code, _, err = run(
        ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
         "--out", tmp_path / "o", "--bins", "16", "--runtime", "tflite"], capsys,
    )  # fmt: skip
    assert code == 1 and "runtime must be one of ('torch', 'onnx', 'openvino')" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_predict_graph_runtime_gives_the_torch_bins(workdir, capsys, tmp_path, caplog, runtime):
    """The whole command with the default (dynamo) exporter, against --runtime torch."""
    import anndata as ad

    if runtime == "openvino":
        pytest.importorskip("openvino", reason="needs the openvino extra of hexpress")
    caplog.set_level("INFO")  # as the command line logs

    args = ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
            "--bins", "16", "--tile-px", "384", "--no-tissue-detection"]  # fmt: skip
    assert run([*args, "--out", tmp_path / "t"], capsys)[0] == 0
    caplog.clear()
    code, text, err = run([*args, "--out", tmp_path / "o", "--runtime", runtime], capsys)
    assert code == 0, err
    exported = [r.getMessage() for r in caplog.records if "exported to ONNX" in r.getMessage()]
    assert len(exported) == 1 and "dynamo exporter" in exported[0]
    # the exporter's own passes are not logged (hundreds of lines), nor printed on stdout
    assert not [r for r in caplog.records if r.name.startswith(("onnx", "torch.onnx"))]
    assert "[torch.onnx]" not in text
    ref = ad.read_h5ad(tmp_path / "t" / "slide" / "bins_016um.h5ad").X
    got = ad.read_h5ad(tmp_path / "o" / "slide" / "bins_016um.h5ad").X
    np.testing.assert_allclose(got, ref, atol=1e-4 * ref.std() + 1e-3 * np.abs(ref).max())
