"""The neighbour ceiling against a brute-force reference on small lattices."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from hexpress import _keys as K
from hexpress.errors import ConfigError, DataMismatchError
from hexpress.eval.ceiling import (
    ceiling_metrics,
    detect_lattice,
    neighbour_predictions,
    neighbour_weights,
)


def _square(nx, ny, pitch=200.0, jitter=0.0, rng=None):
    xx, yy = np.meshgrid(np.arange(nx) * pitch, np.arange(ny) * pitch)
    xy = np.stack([xx.ravel(), yy.ravel()], 1)
    if jitter:
        xy = xy + rng.uniform(-jitter, jitter, xy.shape) * pitch
    return xy


def _hex(nx, ny, pitch=100.0):
    rows = [
        [(i + 0.5 * (j % 2)) * pitch, j * pitch * np.sqrt(3) / 2] for j in range(ny)
        for i in range(nx)
    ]  # fmt: skip
    return np.asarray(rows)


def _brute_force(X, xy, radius):
    """Mean of every other unit within ``radius``, by a double loop."""
    n = len(xy)
    pred = np.zeros_like(X, dtype=np.float64)
    for i in range(n):
        nb = [j for j in range(n) if j != i and np.hypot(*(xy[i] - xy[j])) <= radius]
        pred[i] = X[nb].mean(0) if nb else (X.sum(0) - X[i]) / (n - 1)
    return pred


def _pcc(t, p):
    return np.array([np.corrcoef(t[:, g], p[:, g])[0, 1] for g in range(t.shape[1])])


@pytest.mark.parametrize("ring, interior", [(1.2, 4), (1.5, 8)])
def test_square_lattice_matches_brute_force(rng, ring, interior):
    xy = _square(6, 5, jitter=0.03, rng=rng)
    X = rng.gamma(2.0, 1.0, size=(len(xy), 7))
    X[:, 0] += xy[:, 0] / 200.0  # a spatial gradient: the ceiling is high for this gene
    is_lat, pitch = detect_lattice(xy)
    assert is_lat and 190 < pitch < 205
    res = neighbour_predictions(X, xy, ring=ring)
    assert res.neighbours == "lattice"
    ref = _brute_force(X, xy, ring * pitch)
    np.testing.assert_allclose(res.pred, ref, rtol=1e-10)
    W, _, _ = neighbour_weights(xy, ring=ring)
    assert np.diff(W.indptr)[2 * 6 + 2] == interior  # an interior unit
    assert np.diff(W.indptr)[0] == (2 if ring < 1.4 else 3)  # a corner

    truth = ad.AnnData(X.astype(np.float32))
    truth.var_names = [f"g{i}" for i in range(7)]
    truth.obsm[K.SPATIAL] = xy
    m, _ = ceiling_metrics(truth, section="lattice", ring=ring)
    np.testing.assert_allclose(m.pcc, _pcc(X, ref), atol=1e-5)
    assert m.pcc[0] > 0.5 and m.n_units == len(xy)
    # scored on a subset of units: the others are still neighbours
    ids = list(truth.obs_names[::3])
    sub, _ = ceiling_metrics(truth, ["g0", "g1"], units=ids, ring=ring)
    idx = np.arange(len(xy))[::3]
    np.testing.assert_allclose(sub.pcc, _pcc(X[idx][:, :2], ref[idx][:, :2]), atol=1e-5)


def test_hex_lattice_has_six_neighbours(rng):
    xy = _hex(7, 6)
    X = rng.normal(size=(len(xy), 3))
    W, kind, pitch = neighbour_weights(xy)
    assert kind == "lattice" and np.isclose(pitch, 100.0)
    counts = np.diff(W.indptr)
    assert counts.max() == 6 and (counts == 6).sum() == 5 * 4  # the interior units
    res = neighbour_predictions(X, xy)
    np.testing.assert_allclose(res.pred, _brute_force(X, xy, 1.5 * pitch), rtol=1e-10)


def test_irregular_units_use_knn_within_radius(rng):
    xy = rng.uniform(0, 1000, size=(120, 2))
    xy[-1] = [5000.0, 5000.0]  # far from everything: no neighbour within the radius
    X = rng.normal(size=(120, 4))
    res = neighbour_predictions(X, xy, k=5, radius=3.0)
    assert res.neighbours == "knn"
    from scipy.spatial import cKDTree

    d, idx = cKDTree(xy).query(xy, k=6)
    isolated = 0
    for i in range(len(xy)):
        nb = [j for j, dj in zip(idx[i, 1:], d[i, 1:], strict=True) if dj <= 3.0 * res.pitch]
        # a unit without neighbours: the mean of every other unit, never itself
        want = X[nb].mean(0) if nb else np.delete(X, i, axis=0).mean(0)
        isolated += not nb
        np.testing.assert_allclose(res.pred[i], want)
    assert res.n_isolated == isolated >= 1


def test_errors():
    truth = ad.AnnData(np.ones((5, 2), dtype=np.float32))
    with pytest.raises(DataMismatchError, match="no unit positions"):
        ceiling_metrics(truth)
    truth.obsm[K.SPATIAL] = _square(5, 1)
    with pytest.raises(DataMismatchError, match="lacks gene"):
        ceiling_metrics(truth, ["nope"])
    with pytest.raises(ConfigError, match="neighbours must be one of"):
        neighbour_weights(_square(3, 3), neighbours="rings")


def test_bench_ceiling_skips_a_section_it_cannot_score(rng, caplog):
    from hexpress.eval.bench import _ceiling

    ok = ad.AnnData(rng.normal(size=(30, 3)).astype(np.float32))
    ok.obsm[K.SPATIAL] = _square(6, 5)
    tiny = ad.AnnData(rng.normal(size=(2, 3)).astype(np.float32))
    tiny.obsm[K.SPATIAL] = _square(2, 1)
    genes = list(ok.var_names)
    res = _ceiling({"ok": ok, "tiny": tiny}, {"ok": ok.obs_names, "tiny": tiny.obs_names}, genes)
    assert [s.section for s in res.sections] == ["ok"] and res.sections[0].n_units == 30
    assert "no neighbour ceiling for tiny" in caplog.text
    assert _ceiling({"tiny": tiny}, {"tiny": tiny.obs_names}, genes) is None
