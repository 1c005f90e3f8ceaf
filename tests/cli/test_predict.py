"""hexpress predict: every geometry written; results, checkpoints and options checked."""

import json

import anndata as ad
import numpy as np
import pytest
from cli_helpers import helper_module, run
from PIL import Image

from hexpress.infer import open_dense_map

infer_helpers = helper_module("infer_helpers", "infer/infer_helpers.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A slide (mpp 0.5) and a test_pixnet checkpoint at model_mpp 1.0, spots and cells."""
    return infer_helpers.write_predict_inputs(tmp_path_factory.mktemp("predict"))


def test_predict_command_writes_every_geometry(workdir, capsys, caplog):
    out = workdir / "out"
    args = [
        "predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
        "--out", out, "--bins", "8,16", "--discs-um", "55", "--spots", workdir / "spots.csv",
        "--cells", workdir / "cells.geojson", "--preview", "B", "--genes", "A,C",
        "--tile-px", "512", "--no-tissue-detection",
    ]  # fmt: skip
    code, out_text, _ = run(args, capsys)
    assert code == 0
    folder = out / "slide"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["units"]) == {"bins_008um", "bins_016um", "discs_055um", "spots", "cells"}
    assert (folder / "preview_B.png").is_file() and (folder / "map.zarr").is_dir()
    b8 = ad.read_h5ad(folder / "bins_008um.h5ad")
    # 400 x 300 px at 0.5 µm = 200 x 150 µm -> 25 x 18 bins of 8 µm
    assert b8.n_obs == 25 * 18 == summary["units"]["bins_008um"]
    assert list(b8.var_names) == ["A", "C"]
    assert b8.obs_names[0] == "s_008um_00000_00000"
    np.testing.assert_allclose(b8.obsm["spatial"][1], [24.0, 8.0])  # level-0 px
    assert b8.uns["hexpress"]["model_mpp"] == 1.0 and b8.uns["hexpress"]["mpp"] == 0.5
    assert np.isfinite(b8.X).all()
    spots = ad.read_h5ad(folder / "spots.h5ad")
    assert spots.n_obs == 2  # the third spot lies outside the slide: dropped with a warning
    assert "outside" in caplog.text
    cells = ad.read_h5ad(folder / "cells.h5ad")
    assert list(cells.obs["geometry"]) == ["polygon", "polygon"]
    assert "1 slide(s) predicted" in out_text
    # scanpy plots a prediction file as it is: uns["spatial"] holds the slide's thumbnails
    sc = pytest.importorskip("scanpy", reason="scanpy is in the dev extra")
    lib = b8.uns["spatial"]["slide"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(16.0)  # 8 µm / 0.5
    ax = sc.pl.spatial(sc.read_h5ad(folder / "bins_008um.h5ad"), color="A", show=False)[0]
    assert ax.images and ax.collections
    # results exist: refused without --overwrite, replaced with it
    code, _, err = run(args, capsys)
    assert code == 1 and "already holds results" in err
    assert run(args + ["--overwrite"], capsys)[0] == 0


def test_bad_checkpoint_and_missing_mpp(workdir, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(
        ["predict", workdir / "slide.tif", "--checkpoint", bad, "--out", tmp_path / "o"], capsys
    )
    assert code == 1 and "error:" in err
    Image.fromarray(infer_helpers.he_like(60, 80)).save(tmp_path / "slide.png")
    code, _, err = run(
        ["predict", tmp_path / "slide.png", "--checkpoint",
         workdir / "ckpt" / "model", "--out", tmp_path / "o2", "--bins", "8"], capsys,
    )  # fmt: skip
    assert code == 1 and "--mpp" in err


def test_margin_and_precision_options(workdir, capsys, tmp_path):
    args = ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
            "--bins", "16", "--no-tissue-detection"]  # fmt: skip
    assert run([*args, "--out", tmp_path / "m", "--margin", "32"], capsys)[0] == 0
    dm = open_dense_map(tmp_path / "m" / "slide" / "map.zarr")
    assert dm.attrs["tile_grid"]["margin_px"] == 32
    code, _, err = run([*args, "--out", tmp_path / "w", "--margin", "wide"], capsys)
    assert code == 1 and "margin" in err
    code, _, err = run([*args, "--out", tmp_path / "p", "--precision", "bf16"], capsys)
    assert code == 1 and "needs a GPU" in err
    assert not (tmp_path / "p" / "slide" / "map.zarr").exists()  # refused before any work


def test_staged_is_refused_before_any_work_for_a_model_that_cannot_split(workdir, capsys, tmp_path):
    args = ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
            "--bins", "16", "--staged", "--out", tmp_path / "s"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 1 and "cannot be split" in err and "without --staged" in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "s" / "slide").exists()


def test_staged_reaches_the_map(workdir, capsys, tmp_path, monkeypatch):
    """--staged is handed to predict_slide (the staged map itself: tests/infer/test_staged.py)."""
    from hexpress.infer import pipeline, staged

    seen = []
    real = pipeline.predict_slide
    monkeypatch.setattr(staged, "check_staged", lambda model, **kw: None)
    monkeypatch.setattr(
        pipeline, "predict_slide", lambda *a, **kw: seen.append(kw["staged"]) or real(
            *a, **{**kw, "staged": False}
        ),
    )  # fmt: skip
    args = ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
            "--bins", "16", "--staged", "--no-tissue-detection", "--out", tmp_path / "s"]  # fmt: skip
    assert run(args, capsys)[0] == 0
    assert seen == [True]
