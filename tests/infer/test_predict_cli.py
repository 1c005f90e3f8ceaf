import json
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from infer_helpers import he_like
from PIL import Image

from hexpress.cli import main
from hexpress.errors import GeometryError, OutputExistsError
from hexpress.infer import open_dense_map
from hexpress.infer import pipeline as pipeline_mod
from hexpress.infer.pipeline import PredictOptions, load_model_info, predict_slides
from hexpress.io import write_tiff


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A slide (mpp 0.5) and a test_pixnet checkpoint at model_mpp 1.0."""
    from hexpress.models import create_model, save_checkpoint

    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = create_model("test_pixnet", n_genes=3)
    save_checkpoint(
        d / "ckpt" / "model", model, model_name="test_pixnet", model_kwargs={"n_genes": 3},
        model_mpp=1.0, genes=["A", "B", "C"], normalization={"method": "log1p", "scale": 1e4},
    )  # fmt: skip
    write_tiff(d / "slide.tif", he_like(300, 400), mpp=0.5, tile=128, min_level_side=128)
    pd.DataFrame(
        {"x": [200.0, 100.0, 5000.0], "y": [150.0, 100.0, 20.0], "diameter_um": 55.0}
    ).to_csv(d / "spots.csv", index=False)
    cells = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": "cell1", "geometry": {"type": "Polygon", "coordinates": [
                [[190, 140], [215, 140], [215, 160], [190, 162], [190, 140]]]}},
            {"type": "Feature", "id": "cell2", "geometry": {"type": "Polygon", "coordinates": [
                [[100, 90], [110, 90], [105, 99]]]}},
        ],
    }  # fmt: skip
    (d / "cells.geojson").write_text(json.dumps(cells))
    return d


def run_cli(monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["hexpress", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_predict_command_writes_every_geometry(workdir, monkeypatch, capsys, caplog):
    out = workdir / "out"
    args = [
        "predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
        "--out", out, "--bins", "8,16", "--discs-um", "55", "--spots", workdir / "spots.csv",
        "--cells", workdir / "cells.geojson", "--preview", "B", "--genes", "A,C",
        "--tile-px", "512", "--no-tissue-detection",
    ]  # fmt: skip
    assert run_cli(monkeypatch, *args) == 0
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
    assert "1 slide(s) predicted" in capsys.readouterr().out
    # scanpy plots a prediction file as it is: uns["spatial"] holds the slide's thumbnails
    sc = pytest.importorskip("scanpy", reason="scanpy is in the dev extra")
    lib = b8.uns["spatial"]["slide"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(16.0)  # 8 µm / 0.5
    ax = sc.pl.spatial(sc.read_h5ad(folder / "bins_008um.h5ad"), color="A", show=False)[0]
    assert ax.images and ax.collections
    # results exist: refused without --overwrite, replaced with it
    assert run_cli(monkeypatch, *args) == 1
    assert "already holds results" in capsys.readouterr().err
    assert run_cli(monkeypatch, *args, "--overwrite") == 0


def test_bad_checkpoint_and_missing_mpp(workdir, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code = run_cli(
        monkeypatch, "predict", workdir / "slide.tif", "--checkpoint", bad, "--out", tmp_path / "o"
    )
    assert code == 1 and "error:" in capsys.readouterr().err
    Image.fromarray(he_like(60, 80)).save(tmp_path / "slide.png")
    code = run_cli(
        monkeypatch, "predict", tmp_path / "slide.png", "--checkpoint",
        workdir / "ckpt" / "model", "--out", tmp_path / "o2", "--bins", "8",
    )  # fmt: skip
    assert code == 1 and "--mpp" in capsys.readouterr().err


def test_spots_all_outside_is_an_error(workdir, tmp_path):
    pd.DataFrame({"x": [9000.0], "y": [10.0], "diameter_um": 55.0}).to_csv(
        tmp_path / "s.csv", index=False
    )
    info = load_model_info(workdir / "ckpt" / "model")
    opts = PredictOptions(spots=str(tmp_path / "s.csv"), progress=False, tile_px=512)
    with pytest.raises(GeometryError, match="all 1 spots lie outside"):
        predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)


def test_run_killed_after_the_map_resumes(workdir, tmp_path, monkeypatch):
    info = load_model_info(workdir / "ckpt" / "model")
    opts = PredictOptions(bins_um=[16], progress=False, tile_px=512, detect_tissue=False)
    real = pipeline_mod.aggregate_units

    def crash(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline_mod, "aggregate_units", crash)
    with pytest.raises(RuntimeError):
        predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)
    folder = tmp_path / "o" / "slide"
    assert not (folder / "summary.json").exists()
    assert not list(folder.glob("*.h5ad"))
    monkeypatch.setattr(pipeline_mod, "aggregate_units", real)
    seconds = open_dense_map(folder / "map.zarr").attrs["seconds"]
    [summary] = predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)
    assert summary["units"]["bins_016um"] == 12 * 9
    assert open_dense_map(folder / "map.zarr").attrs["seconds"] == seconds  # map kept, not redone
    with pytest.raises(OutputExistsError):
        predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)


@pytest.mark.slow
def test_two_slides_in_two_processes(workdir, tmp_path):
    import shutil

    shutil.copy(workdir / "slide.tif", tmp_path / "second.tif")
    opts = PredictOptions(bins_um=[16], progress=False, tile_px=512, detect_tissue=False)
    slides = [workdir / "slide.tif", tmp_path / "second.tif"]
    summaries = predict_slides(slides, workdir / "ckpt" / "model", tmp_path / "o", opts, workers=2)
    assert [s["units"]["bins_016um"] for s in summaries] == [108, 108]
    a = ad.read_h5ad(tmp_path / "o" / "slide" / "bins_016um.h5ad")
    b = ad.read_h5ad(tmp_path / "o" / "second" / "bins_016um.h5ad")
    np.testing.assert_array_equal(a.X, b.X)  # same pixels, same model: same predictions


def test_torchrun_rank_takes_every_world_size_th_slide(workdir, tmp_path, monkeypatch):
    import shutil

    for name in ("b.tif", "c.tif"):
        shutil.copy(workdir / "slide.tif", tmp_path / name)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = load_model_info(workdir / "ckpt" / "model")
    opts = PredictOptions(progress=False, tile_px=512, detect_tissue=False, device="cpu")
    slides = [workdir / "slide.tif", tmp_path / "b.tif", tmp_path / "c.tif"]
    summaries = predict_slides(slides, info, tmp_path / "o", opts)
    assert [s["slide"] for s in summaries] == [str(tmp_path / "b.tif")]


def test_margin_and_precision_options(workdir, monkeypatch, capsys, tmp_path):
    args = ["predict", workdir / "slide.tif", "--checkpoint", workdir / "ckpt" / "model",
            "--bins", "16", "--no-tissue-detection"]  # fmt: skip
    code = run_cli(monkeypatch, *args, "--out", tmp_path / "m", "--margin", "32")
    assert code == 0
    dm = open_dense_map(tmp_path / "m" / "slide" / "map.zarr")
    assert dm.attrs["tile_grid"]["margin_px"] == 32
    code = run_cli(monkeypatch, *args, "--out", tmp_path / "w", "--margin", "wide")
    assert code == 1 and "margin" in capsys.readouterr().err
    code = run_cli(monkeypatch, *args, "--out", tmp_path / "p", "--precision", "bf16")
    assert code == 1 and "needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "p" / "slide" / "map.zarr").exists()  # refused before any work
