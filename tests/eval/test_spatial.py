import numpy as np
import pandas as pd
import pytest
from eval_helpers import hex_grid, make_section
from scipy import stats

from hexpress.data.preprocess import normalize
from hexpress.errors import ConfigError, DataMismatchError, GeometryError, UnitsError
from hexpress.eval.spatial import (
    morans_i,
    predictability,
    spatial_autocorrelation,
    spatial_weights,
)


def _reference_moran(x, W):
    """Textbook double sum, no vectorisation."""
    n = len(x)
    z = x - x.mean()
    num = sum(W[i, j] * z[i] * z[j] for i in range(n) for j in range(n))
    return n / W.sum() * num / (z @ z)


def test_knn_weights_are_the_k_nearest_row_standardised(rng):
    xy = rng.uniform(0, 100, size=(30, 2))
    W = spatial_weights(xy, k=4)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    for i in range(30):
        assert set(W[i].indices) == set(np.argsort(d[i])[:4])
    np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0)
    assert W.diagonal().sum() == 0


def test_hex_grid_has_six_neighbours_at_one_pitch():
    xy = hex_grid(6, 50.0)
    W = spatial_weights(xy, radius_px=50.0 * 1.01, row_standardize=False)
    inner = [i for i in range(36) if 0 < i // 6 < 5 and 0 < i % 6 < 5]
    assert set(np.asarray(W.sum(1)).ravel()[inner]) == {6.0}


def test_duplicated_positions_never_self_neighbour():
    xy = np.array([[0, 0], [0, 0], [0, 0], [5, 5], [9, 9]], dtype=float)
    W = spatial_weights(xy, k=2)
    assert W.diagonal().sum() == 0
    assert all(W[i].nnz == 2 for i in range(5))


def test_morans_i_matches_reference(rng):
    xy = rng.uniform(0, 10, size=(25, 2))
    X = rng.normal(size=(25, 4))
    X[:, 1] += xy[:, 0]  # some structure
    for W in (spatial_weights(xy, k=3), spatial_weights(xy, radius_px=3.0, row_standardize=False)):
        res = morans_i(X, W, genes=list("abcd"))
        Wd = W.toarray()
        ref = [_reference_moran(X[:, j], Wd) for j in range(4)]
        np.testing.assert_allclose(res["I"].to_numpy(), ref, atol=1e-12)
        assert list(res.index) == list("abcd")


def test_gradient_near_one_shuffle_near_expected(rng):
    xy = hex_grid(20, 10.0)
    n = len(xy)
    grad = xy[:, 0] + 0.5 * xy[:, 1]
    X = np.stack([grad, rng.permutation(grad), np.full(n, 2.0)], axis=1)
    res = morans_i(X, spatial_weights(xy, k=6), genes=["grad", "shuffled", "flat"], n_perms=99)
    assert res.loc["grad", "I"] > 0.9
    expected = -1 / (n - 1)
    assert res.loc["shuffled", "expected"] == pytest.approx(expected)
    assert abs(res.loc["shuffled", "I"] - expected) < 0.1
    assert res.loc["grad", "p_sim"] == pytest.approx(1 / 100)
    assert res.loc["grad", "p_norm"] < 1e-10
    assert res.loc["shuffled", "p_sim"] > 0.01
    # a constant gene has no Moran's I and no test, only the expectation under no structure
    flat = res.loc["flat"]
    assert np.isnan(flat[["I", "z_norm", "p_norm", "p_sim"]].to_numpy(float)).all()
    assert flat["expected"] == pytest.approx(expected)
    # the mean over many shuffles converges to -1/(n-1)
    shuffles = np.stack([rng.permutation(grad) for _ in range(200)], axis=1)
    mean_i = morans_i(shuffles, spatial_weights(xy, k=6))["I"].mean()
    assert mean_i == pytest.approx(expected, abs=0.01)


def test_normal_approximation_variance_matches_permutations(rng):
    xy = rng.uniform(0, 100, size=(150, 2))
    W = spatial_weights(xy, k=6)
    x = rng.normal(size=150)
    perms = np.stack([rng.permutation(x) for _ in range(2000)], axis=1)
    sims = morans_i(perms, W)
    z = sims["z_norm"].to_numpy()
    assert z.std() == pytest.approx(1.0, abs=0.1)
    assert z.mean() == pytest.approx(0.0, abs=0.1)


def test_spatial_autocorrelation_on_anndata():
    adata, _ = make_section(0, n_side=10)
    res = spatial_autocorrelation(normalize(adata), k=6)
    assert len(res) == adata.n_vars
    assert (res["I"] > 0.3).all()  # every synthetic gene follows a gradient
    band = spatial_autocorrelation(normalize(adata), radius_um=110.0)
    assert (band["I"] > 0.3).all()
    sub = spatial_autocorrelation(normalize(adata), genes=["G1"])
    assert list(sub.index) == ["G1"]


def test_spatial_errors(rng):
    adata, _ = make_section(0)
    del adata.obsm["spatial"]
    with pytest.raises(GeometryError, match="run|obsm"):
        spatial_autocorrelation(adata)
    adata, _ = make_section(0)
    adata.uns["hexpress"] = {}
    with pytest.raises(UnitsError, match="mpp"):
        spatial_autocorrelation(adata, radius_um=50)
    with pytest.raises(ConfigError, match="k must be"):
        spatial_weights(rng.normal(size=(5, 2)), k=5)
    with pytest.raises(DataMismatchError, match="weights are"):
        morans_i(np.zeros((4, 2)), spatial_weights(rng.normal(size=(5, 2)), k=2))
    with pytest.raises(GeometryError, match="non-finite"):
        spatial_weights(np.array([[0, 0], [np.nan, 1], [2, 2]]), k=1)


def test_predictability_matches_scipy(rng):
    genes = [f"g{i}" for i in range(30)]
    moran = pd.Series(rng.uniform(0, 1, 30), index=genes)
    abundance = pd.Series(rng.uniform(0, 5, 30), index=genes)
    pcc = pd.Series(moran.to_numpy() + rng.normal(scale=0.2, size=30), index=genes)
    pcc.iloc[3] = np.nan  # undefined PCC: dropped, not zero
    res = predictability(pcc, moran[::-1], abundance)  # aligned by gene, not by order
    keep = pcc.notna()
    ref = stats.spearmanr(pcc[keep], moran[keep])
    assert res.loc["morans_i", "rho"] == pytest.approx(ref.statistic)
    assert res.loc["morans_i", "p"] == pytest.approx(ref.pvalue)
    assert res.loc["morans_i", "n_genes"] == 29
    ref_a = stats.spearmanr(pcc[keep], abundance[keep])
    assert res.loc["mean_abundance", "rho"] == pytest.approx(ref_a.statistic)
    assert res.loc["morans_i", "rho"] > 0.5
