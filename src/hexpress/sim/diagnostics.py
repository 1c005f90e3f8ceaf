"""Checks that a simulated slide is a useful benchmark: spatial structure and predictability.

* :func:`morans_i`: Moran's I of every gene over spots, with k-nearest-neighbour weights;
* :func:`spot_features`: a handful of colour / texture statistics per spot from the H&E;
* :func:`feature_predictability`: cross-validated ridge regression from those features to each
  gene, the per-gene Pearson correlation it reaches.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hexpress.data.preprocess import normalize_counts
from hexpress.sim.render import E_REF, H_REF

__all__ = ["morans_i", "spot_features", "feature_predictability", "log_normalize"]


def log_normalize(counts, target: float = 1e4) -> np.ndarray:
    """:func:`hexpress.data.preprocess.normalize_counts` with each spot's total over the given
    genes; dense float64 ``(n, g)``."""
    X = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    X = X.astype(np.float64)
    return normalize_counts(X, X.sum(1), target).astype(np.float64)


def morans_i(values: np.ndarray, coords: np.ndarray, k: int = 6) -> np.ndarray:
    """Moran's I of each column, with row-standardised binary k-nearest-neighbour weights.

    :func:`hexpress.eval.spatial.morans_i` with :func:`~hexpress.eval.spatial.spatial_weights`,
    returning only ``I``.

    Args:
        values: ``(n, g)`` values per spot (e.g. log-normalised expression).
        coords: ``(n, 2)`` spot positions (any unit).
        k: neighbours per spot (at most ``n - 1``).

    Returns:
        ``(g,)`` float; NaN for a column that is constant.
    """
    from hexpress.eval.spatial import morans_i as _morans_i
    from hexpress.eval.spatial import spatial_weights

    values = np.asarray(values, dtype=np.float64)
    weights = spatial_weights(coords, k=min(k, values.shape[0] - 1))
    return _morans_i(values, weights)["I"].to_numpy()


def _od_unmix() -> np.ndarray:
    m = np.stack([H_REF / np.linalg.norm(H_REF), E_REF / np.linalg.norm(E_REF)], 1)
    return np.linalg.pinv(m)  # (2, 3): OD -> (H, E)


def spot_features(image: np.ndarray, centers_px: np.ndarray, diameter_px: float) -> np.ndarray:
    """Colour and texture statistics of the pixels inside each disc.

    Features: mean and sd of R, G, B; mean H and E amounts (colour deconvolution); 10/50/90th
    percentiles of H; fraction of nuclear (high H) and of white pixels; mean gradient magnitude;
    mean size of nuclear blobs.

    Returns:
        ``(n, 15)`` float64.
    """
    r = diameter_px / 2
    unmix = _od_unmix()
    h_img, w_img = image.shape[:2]
    out = []
    for cx, cy in np.asarray(centers_px, float):
        x0, x1 = max(0, int(cx - r)), min(w_img, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(h_img, int(cy + r) + 1)
        crop = image[y0:y1, x0:x1].astype(np.float64)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        m = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r
        px = crop[m]
        od = -np.log(np.clip(px, 1, 255) / 255.0)
        he = od @ unmix.T
        grey = crop.mean(2)
        grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))[m]
        nuc = (od @ unmix.T)[:, 0] > 0.8
        nuc_mask = np.zeros(m.shape, bool)
        nuc_mask[m] = nuc
        n_blobs = ndimage.label(nuc_mask)[1]
        out.append(
            [
                *px.mean(0),
                *px.std(0),
                he[:, 0].mean(),
                he[:, 1].mean(),
                *np.percentile(he[:, 0], [10, 50, 90]),
                nuc.mean(),
                (px.mean(1) > 220).mean(),
                grad.mean(),
                nuc.sum() / max(n_blobs, 1),
            ]
        )
    return np.asarray(out, dtype=np.float64)


def feature_predictability(
    features: np.ndarray,
    targets: np.ndarray,
    coords: np.ndarray,
    n_folds: int = 5,
    alpha: float = 1.0,
) -> np.ndarray:
    """Per-gene Pearson correlation of spatially cross-validated ridge predictions.

    Folds are vertical stripes of the slide, so neighbouring spots do not leak across folds.

    Args:
        features: ``(n, f)`` per-spot features.
        targets: ``(n, g)`` per-spot expression (e.g. log-normalised).
        coords: ``(n, 2)`` spot positions (x first).

    Returns:
        ``(g,)`` Pearson r; NaN where the truth or the prediction is constant.
    """
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    X = StandardScaler().fit_transform(features)
    X = PolynomialFeatures(degree=2, include_bias=False).fit_transform(X)
    Y = np.asarray(targets, float)
    x = np.asarray(coords, float)[:, 0]
    edges = np.quantile(x, np.linspace(0, 1, n_folds + 1))
    fold = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_folds - 1)
    pred = np.zeros_like(Y)
    for f in range(n_folds):
        test = fold == f
        if test.all() or not test.any():
            continue
        sc = StandardScaler().fit(X[~test])
        model = Ridge(alpha=alpha * X.shape[1]).fit(sc.transform(X[~test]), Y[~test])
        pred[test] = model.predict(sc.transform(X[test]))
    yc, pc_ = Y - Y.mean(0), pred - pred.mean(0)
    den = np.sqrt((yc**2).sum(0) * (pc_**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (yc * pc_).sum(0) / den, np.nan)
