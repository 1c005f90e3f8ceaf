"""infer.pipeline: predict_slides over slides, units and processes; resuming a killed run."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from infer_helpers import write_predict_inputs

from hexpress.errors import GeometryError, OutputExistsError
from hexpress.infer import open_dense_map
from hexpress.infer import pipeline as pipeline_mod
from hexpress.infer.pipeline import PredictOptions, load_model_info, predict_slides


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A slide (mpp 0.5) and a test_pixnet checkpoint at model_mpp 1.0, spots and cells."""
    return write_predict_inputs(tmp_path_factory.mktemp("predict"))


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
    real = pipeline_mod.write_geometries

    def crash(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline_mod, "write_geometries", crash)
    with pytest.raises(RuntimeError):
        predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)
    folder = tmp_path / "o" / "slide"
    assert not (folder / "summary.json").exists()
    assert not list(folder.glob("*.h5ad"))
    monkeypatch.setattr(pipeline_mod, "write_geometries", real)
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


def test_unknown_genes_are_refused_before_the_map(workdir, tmp_path):
    from hexpress.errors import DataMismatchError

    info = load_model_info(workdir / "ckpt" / "model")
    opts = PredictOptions(bins_um=[16], genes=["NOPE"], progress=False, tile_px=512)
    with pytest.raises(DataMismatchError, match="NOPE"):
        predict_slides([workdir / "slide.tif"], info, tmp_path / "o", opts)
    assert not (tmp_path / "o" / "slide" / "map.zarr").exists()
