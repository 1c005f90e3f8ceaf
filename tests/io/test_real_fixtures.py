"""The real fixtures in ../shared/data: pixel sizes, unit sizes and positions on tissue."""

import numpy as np
import pytest

from hexpress.io import read_h5ad, read_visium, read_visium_hd

pytestmark = pytest.mark.realdata


def _on_tissue(sample, factor=2.0):
    """Unit centres sit on stained (coloured) pixels more than the image as a whole does."""
    img, scale = sample.image.thumbnail(2000)
    sat = img.max(2).astype(float) - img.min(2)
    xy = sample.adata.obsm["spatial"] * scale
    at = sat[
        xy[:, 1].astype(int).clip(0, sat.shape[0] - 1),
        xy[:, 0].astype(int).clip(0, sat.shape[1] - 1),
    ]
    return np.median(at) > factor * np.median(sat)


def test_visium_hd_2um_bins(real_fixtures_dir):
    s = read_visium_hd(
        real_fixtures_dir / "visium_hd_mouse_brain_mini" / "binned_outputs", bin_um=2
    )
    assert s.meta["mpp_fullres"] == pytest.approx(0.2738, abs=1e-4)
    assert (s.adata.obs["size_um"] == 2.0).all() and s.n_units == 10
    assert s.image.mpp == pytest.approx(0.2738242950835738 / 0.02505533)  # the lowres PNG
    assert s.adata.X.sum() == 0  # the publisher cut it to zero counts


def test_visium_mouse_brain_folder(real_fixtures_dir):
    s = read_visium(real_fixtures_dir / "visium_mouse_brain_mini")
    assert s.n_units == 100 and (s.adata.obs["size_um"] == 55.0).all()
    assert s.meta["mpp_fullres"] == pytest.approx(0.7268, rel=0.01)  # 100 µm pitch
    assert s.image.mpp == pytest.approx(16.15, rel=0.01) and s.meta["image_kind"] == "lowres"
    assert _on_tissue(s)


def test_visium_mouse_brain_on_its_he_crop_needs_the_crop_offset(real_fixtures_dir):
    # test_img.jpg is a crop of unknown offset: positions do not refer to it, and the reader
    # says so rather than placing spots anywhere
    from hexpress.errors import GeometryError

    with pytest.raises(GeometryError, match="outside"):
        read_visium(
            real_fixtures_dir / "visium_mouse_brain_mini",
            image=real_fixtures_dir / "visium_mouse_brain_mini" / "test_img.jpg",
        )


def test_hest_style_xenium_lung(real_fixtures_dir):
    d = real_fixtures_dir / "xenium_lung_he_hest_style"
    s = read_h5ad(d / "NCBI858.h5ad", mpp=2.125)  # 0.2125 µm/px scan downscaled 10x
    assert s.n_units == 200 and s.adata.n_vars == 338
    assert (s.adata.obs["size_um"] == 20).all()  # cell_diameter of NCBI858.json
    assert s.meta["positions"] == "obs['y_pixel'], obs['x_pixel']"
    assert s.image.path.name == "NCBI858.jpg" and _on_tissue(s, 3.0)
