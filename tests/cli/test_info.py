import json

import numpy as np
import pytest

from hexpress.cli import app


def _run(runner, *args):
    return runner.invoke(app, ["info", *map(str, args)])


def _json(result):
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.mark.realdata
def test_info_her2st_c2_json(runner, her2st_dir):
    r = _run(runner, her2st_dir, "--format", "legacy-st", "--section", "C2", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert d["n_spots"] == 187 and d["mpp"] == 0.688 and d["spot_size_um"] == 100.0
    assert d["technology"] == "legacy-st" and d["section"] == "C2"
    assert d["image_width_px"] == 9274 and d["n_genes"] > 15000


@pytest.mark.realdata
def test_info_missing_section_lists_them(her2st_dir):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "hexpress", "info", str(her2st_dir), "--format", "legacy-st"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1
    assert "error:" in p.stderr and "A1, C2, C3, C4, C5, C6" in p.stderr


def test_info_visium_text_and_json(tmp_path, runner, io_builders):
    t = io_builders.make_visium(tmp_path / "run")
    r = _run(runner, t.root, "--format", "visium", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert (
        d["n_spots"] == 12
        and d["spot_size_um"] == 55.0
        and d["mpp"] == pytest.approx(2.0, rel=1e-3)
    )
    r = _run(runner, t.root, "--format", "visium")
    assert "n_spots" in r.stdout and "12" in r.stdout


def test_info_unknown_format(runner, tmp_path):
    from hexpress.errors import ConfigError

    r = _run(runner, tmp_path, "--format", "nope")
    assert isinstance(r.exception, ConfigError)
    assert "valid formats: legacy-st, visium" in str(r.exception)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("rel", "mpp"),
    [
        ("visium_fixtures/spaceranger_1.0_human_heart", 16.15),
        ("visium_fixtures/spaceranger_mtx_mouse_brain", 14.24),
        ("real_fixtures/visium_mouse_brain_mini", 16.15),
    ],
)
def test_info_real_visium_pixel_size_and_spot_size(runner, real_fixtures_dir, rel, mpp):
    r = _run(runner, real_fixtures_dir.parent / rel, "--format", "visium", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert d["mpp"] == pytest.approx(mpp, rel=0.01)  # the lowres PNG
    assert d["mpp_fullres"] == pytest.approx(0.7268, rel=0.01) and d["spot_size_um"] == 55.0
    assert "100 µm Visium spot pitch" in d["mpp_source"]


@pytest.mark.realdata
def test_info_real_visium_hd_2um(runner, real_fixtures_dir):
    path = real_fixtures_dir / "visium_hd_mouse_brain_mini" / "binned_outputs"
    d = _json(_run(runner, path, "--format", "visium-hd", "--bin-um", "2", "--json"))
    assert d["mpp_fullres"] == pytest.approx(0.2738, abs=1e-4) and d["spot_size_um"] == 2.0
    assert d["geometry"] == "square"


def test_info_xenium_bundle_without_image(runner, tmp_path, io_builders):
    from PIL import Image

    from hexpress.io import write_tiff

    t = io_builders.make_xenium(tmp_path / "xen")
    he = np.asarray(Image.open(t.root / "he.png").convert("RGB"))
    write_tiff(t.root / "run_he_image.ome.tif", he, mpp=0.5)
    (t.root / "alignment.csv").rename(t.root / "run_he_imagealignment.csv")
    r = _run(runner, t.root, "--format", "xenium", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert d["n_spots"] == 3 and d["image"].endswith("run_he_image.ome.tif") and d["mpp"] == 0.5


def test_info_reads_a_prediction_h5ad(runner, tmp_path, io_builders):
    """What ``hexpress predict`` writes: normalised values (NaN where uncovered), the slide's
    mpp in uns['hexpress'], scanpy's uns['spatial'] thumbnails."""
    import anndata as ad

    from hexpress.io import read_visium
    from hexpress.io.h5ad import spatial_uns

    s = read_visium(io_builders.make_visium(tmp_path / "run").root)
    X = np.log1p(s.adata.X.toarray()).astype(np.float32)
    X[0] = np.nan
    a = ad.AnnData(X=X, obs=s.adata.obs[["geometry", "size_um"]].copy(), var=s.adata.var[[]])
    a.obsm["spatial"] = s.adata.obsm["spatial"]
    a.uns["hexpress"] = {
        "mpp": s.image.mpp,
        "image_path": "",
        "normalization": {"method": "log1p_total", "scale": 10000.0},
        "model": "tiny",
    }
    a.uns["spatial"] = spatial_uns(s.image, a.obs["size_um"], "slide")
    a.write_h5ad(tmp_path / "spots.h5ad")
    r = _run(runner, tmp_path / "spots.h5ad", "--format", "h5ad", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert d["mpp_fullres"] == pytest.approx(s.image.mpp) and d["n_spots"] == 12
    assert d["spot_size_um"] == 55.0 and d["normalization"]["scale"] == 10000.0
