import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from hexpress.errors import FormatError, InputFileError
from hexpress.io import read_10x_h5, write_10x_h5


def test_roundtrip_follows_the_10x_layout(tmp_path, rng):
    counts = sp.random(7, 5, density=0.4, random_state=0, format="csr") * 10
    counts.data = np.rint(counts.data) + 1
    path = write_10x_h5(tmp_path / "m.h5", counts, [f"bc{i}" for i in range(7)], list("ABCDE"))
    with h5py.File(path) as f:
        assert tuple(f["matrix/shape"][()]) == (5, 7)  # features x barcodes
        assert f["matrix/data"].dtype == np.int32
        assert f["matrix/features/name"][0] == b"A"
        assert f["matrix/features/feature_type"][0] == b"Gene Expression"
        assert f.attrs["filetype"] == b"matrix"
    m = read_10x_h5(path)
    np.testing.assert_array_equal(m.counts.toarray(), counts.toarray())
    assert m.barcodes[3] == "bc3" and m.genes == list("ABCDE") and m.gene_ids == list("ABCDE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temporary file left


def test_errors(tmp_path):
    with pytest.raises(InputFileError):
        read_10x_h5(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_text("x")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        read_10x_h5(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("other")
    with pytest.raises(FormatError, match="not a 10x"):
        read_10x_h5(tmp_path / "empty.h5")


REAL_H5 = [
    "real_fixtures/visium_hd_mouse_brain_mini/binned_outputs/square_002um/filtered_feature_bc_matrix.h5",
    "real_fixtures/visium_mouse_brain_mini/filtered_feature_bc_matrix.h5",
    "visium_fixtures/spaceranger_1.0_human_heart/filtered_feature_bc_matrix.h5",
]


@pytest.mark.realdata
def test_real_h5_agrees_with_its_matrix_market_copy(real_fixtures_dir):
    from hexpress.io._tables import read_mtx_folder

    sq = real_fixtures_dir / "visium_hd_mouse_brain_mini" / "binned_outputs" / "square_002um"
    h5 = read_10x_h5(sq / "filtered_feature_bc_matrix.h5")
    mtx = read_mtx_folder(sq / "filtered_feature_bc_matrix")
    assert h5.barcodes == mtx.barcodes and h5.genes == mtx.genes and h5.gene_ids == mtx.gene_ids
    assert h5.counts.shape == (10, 10)
    np.testing.assert_array_equal(h5.counts.toarray(), mtx.counts.toarray())


@pytest.mark.realdata
@pytest.mark.parametrize("rel", REAL_H5)
def test_real_h5_agrees_with_scanpy(real_fixtures_dir, rel):
    sc = pytest.importorskip("scanpy", reason="scanpy (dev extra) is not installed")
    path = real_fixtures_dir.parent / rel
    if not path.is_file():
        pytest.skip(f"real data not available: {path}")
    ours = read_10x_h5(path)
    peer = sc.read_10x_h5(path)  # gene expression features only, as ours are here
    assert list(peer.obs_names) == ours.barcodes
    assert list(peer.var["gene_ids"]) == ours.gene_ids
    np.testing.assert_array_equal(peer.X.toarray(), ours.counts.toarray())
