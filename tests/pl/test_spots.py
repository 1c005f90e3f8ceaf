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


@pytest.mark.parametrize("geometry", ["disc", "square"])
def test_units_drawn_at_true_size(geometry):
    fig, ax = plt.subplots()
    out = plot_spots(_sample(geometry), ax=ax, color="B", max_side=300)
    assert out is ax
    (coll,) = ax.collections
    paths = coll.get_paths()
    assert len(paths) == 3
    # 50 µm at 0.5 µm/px = 100 level-0 px; the thumbnail is at half scale -> 50 px across
    ext = paths[0].get_extents()
    assert ext.width == pytest.approx(50, rel=1e-6)
    assert ext.x0 + ext.width / 2 == pytest.approx(50)  # centre 100 px * 0.5
    np.testing.assert_array_equal(coll.get_array(), [0, 2, 5])
    plt.close(fig)


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
