import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hexpress.data import Sample, make_units  # noqa: E402
from hexpress.errors import ConfigError  # noqa: E402
from hexpress.io import ArrayImage  # noqa: E402
from hexpress.pl import plot_spots  # noqa: E402


def _sample(geometry="disc"):
    img = ArrayImage(np.full((400, 600, 3), 255, np.uint8), mpp=0.5)
    adata = make_units(
        np.array([[1, 0], [3, 2], [0, 5]]),
        genes=["A", "B"],
        unit_ids=["u0", "u1", "u2"],
        centers_px=np.array([[100.0, 100.0], [300.0, 200.0], [500.0, 300.0]]),
        geometry=geometry,
        size_um=50.0,
        source="test",
        image=img,
    )
    return Sample(adata, img, "s", "p", "synthetic")


def test_discs_drawn_at_true_size():
    fig, ax = plt.subplots()
    out = plot_spots(_sample("disc"), ax=ax, color="B", max_side=300)
    assert out is ax
    (coll,) = ax.collections
    # 50 µm at 0.5 µm/px = 100 level-0 px across; the panel is in level-0 px
    np.testing.assert_allclose(coll._widths * 2, 100.0)
    np.testing.assert_allclose(coll.get_offsets(), [[100, 100], [300, 200], [500, 300]])
    np.testing.assert_array_equal(coll.get_array(), [0, 2, 5])
    assert ax.get_xlim() == pytest.approx((0, 600))  # the whole slide: an alignment check
    assert any(t.get_text().endswith("µm") for t in ax.texts)  # a scale bar
    plt.close(fig)


def test_square_bins_rasterised_on_their_grid():
    fig, ax = plt.subplots()
    plot_spots(_sample("square"), ax=ax, color="B", max_side=300)
    assert not ax.collections
    thumb, bins = ax.images  # the H&E, then the bins as one image
    assert bins.get_extent() == pytest.approx([50, 550, 350, 50])  # 100 px bins, 3 x 5 grid
    arr = np.ma.filled(bins.get_array().astype(float), np.nan)
    assert arr.shape == (3, 5)
    assert (arr[0, 0], arr[1, 2], arr[2, 4]) == (0, 2, 5)
    assert np.isnan(arr).sum() == 12  # nothing drawn where no bin was measured
    plt.close(fig)


def test_outlines_and_categories():
    fig, ax = plt.subplots()
    plot_spots(_sample("square"), ax=ax)  # outlines only: patches, not an image
    (coll,) = ax.collections
    assert len(coll.get_paths()) == 3 and len(ax.images) == 1
    s = _sample("disc")
    s.adata.obs["kind"] = ["a", "b", "a"]
    fig2, ax2 = plt.subplots()
    plot_spots(s, ax=ax2, color="kind")
    colors = ax2.collections[0].get_facecolor()
    assert (colors[0] == colors[2]).all() and not (colors[0] == colors[1]).all()
    plt.close("all")


def test_bad_color():
    with pytest.raises(ConfigError, match="neither a gene"):
        plot_spots(_sample(), color="nope")
    plt.close("all")


@pytest.mark.realdata
def test_her2st_overlay_renders(her2st_dir, tmp_path):
    from hexpress.io import read_legacy_st

    s = read_legacy_st(her2st_dir, "A1")
    ax = plot_spots(s, color="ERBB2", max_side=512)
    ax.figure.savefig(tmp_path / "a1.png")
    assert (tmp_path / "a1.png").stat().st_size > 10_000
    plt.close("all")
