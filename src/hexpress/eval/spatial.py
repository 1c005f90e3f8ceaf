"""Moran's I spatial autocorrelation of every gene, and the predictability analysis.

Moran's I of a gene with values ``x`` over ``n`` units and spatial weights ``W``::

    I = n / S0 * (z' W z) / (z' z),   z = x - mean(x),   S0 = sum of all weights

computed for all genes at once with one sparse product ``W @ Z``. The weights are the ``k`` nearest
neighbours of each unit (default 6, the neighbours of a spot on the Visium / legacy ST hexagonal
or square lattice) or every unit within a distance band, row-standardised as in esda / squidpy.

Why not esda / libpysal or squidpy: esda pulls in libpysal, geopandas, shapely and friends, and
squidpy brings dask, numba, scanpy and more, all for one sparse matrix product; this module needs
only numpy and scipy and is tested against the textbook formula.

Under the null hypothesis ``E[I] = -1 / (n - 1)``; the normal-approximation variance
(Cliff & Ord) gives ``z_norm`` / ``p_norm`` (two-sided), and ``n_perms`` random permutations of
the units give ``p_sim`` = (``#{I_perm at least as extreme on the observed side}`` + 1) /
(``n_perms`` + 1), folded as esda does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.errors import ConfigError, DataMismatchError, GeometryError, UnitsError

__all__ = ["morans_i", "predictability", "spatial_autocorrelation", "spatial_weights"]

log = logging.getLogger(__name__)


def spatial_weights(
    coords_px, *, k: int = 6, radius_px: float | None = None, row_standardize: bool = True
) -> sp.csr_matrix:
    """Sparse spatial weights between units (no self-weights).

    Args:
        coords_px: ``(n, 2)`` unit centres (x, y) in pixels (any one unit of length).
        k: number of nearest neighbours (used when ``radius_px`` is ``None``).
        radius_px: distance band: every other unit within this distance is a neighbour.
        row_standardize: divide each row by its sum (units without neighbours keep a zero row).

    Returns:
        ``(n, n)`` CSR float64 weights.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(coords_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise GeometryError(f"coordinates must be an (n, 2) array, got shape {xy.shape}.")
    if not np.isfinite(xy).all():
        raise GeometryError("coordinates hold non-finite values; drop those units first.")
    n = xy.shape[0]
    tree = cKDTree(xy)
    if radius_px is not None:
        if not radius_px > 0:
            raise UnitsError(f"radius_px must be positive, got {radius_px}.")
        W = tree.sparse_distance_matrix(tree, radius_px, output_type="coo_matrix").tocsr()
        W.data[:] = 1.0
        W.setdiag(0.0)
        W.eliminate_zeros()
    else:
        if not 1 <= k < n:
            raise ConfigError(f"k must be between 1 and n_units - 1 = {n - 1}, got {k}.")
        _, idx = tree.query(xy, k=k + 1)
        rows = np.repeat(np.arange(n), k + 1)
        cols = idx.ravel()
        # Drop each unit itself; with duplicated positions it need not come first, so drop by id
        # and, where it was not found among the k + 1, drop the farthest instead.
        keep = cols != rows
        keep = keep.reshape(n, k + 1)
        no_self = keep.all(axis=1)
        keep[no_self, -1] = False
        W = sp.csr_matrix((np.ones(n * k), (rows[keep.ravel()], cols[keep.ravel()])), shape=(n, n))
    isolated = int((np.diff(W.indptr) == 0).sum())
    if isolated:
        log.warning("%d of %d unit(s) have no neighbour within the distance band", isolated, n)
    if row_standardize:
        rs = np.asarray(W.sum(axis=1)).ravel()
        inv = np.divide(1.0, rs, out=np.zeros_like(rs), where=rs > 0)
        W = sp.csr_matrix(sp.diags(inv) @ W)
    return W


def _moran(Z: np.ndarray, W: sp.csr_matrix, s0: float, den: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->j", Z, np.asarray(W @ Z))
    with np.errstate(divide="ignore", invalid="ignore"):
        return Z.shape[0] / s0 * num / den


def morans_i(
    X,
    weights: sp.spmatrix,
    *,
    genes: Sequence[str] | None = None,
    n_perms: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Moran's I of every column of ``X``.

    Args:
        X: ``(n_units, n_genes)`` values (dense or sparse).
        weights: ``(n_units, n_units)`` spatial weights, e.g. from :func:`spatial_weights`.
        genes: column names for the result's index.
        n_perms: random permutations for ``p_sim`` (0: none).
        seed: permutation seed.

    Returns:
        One row per gene: ``I``, ``expected`` (``-1/(n-1)``), ``z_norm``, ``p_norm`` and, with
        permutations, ``p_sim``. Constant genes get ``NaN`` (Moran's I is undefined for them).
    """
    Z = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    if Z.ndim != 2:
        raise DataMismatchError(f"X must be (n_units, n_genes), got shape {Z.shape}.")
    n, g = Z.shape
    W = sp.csr_matrix(weights, dtype=np.float64)
    if W.shape != (n, n):
        raise DataMismatchError(
            f"weights are {W.shape} for {n} units; build them from the same units."
        )
    if n < 3:
        raise DataMismatchError(f"Moran's I needs at least 3 units, got {n}.")
    if genes is not None and len(genes) != g:
        raise DataMismatchError(f"{len(genes)} gene names for {g} columns.")
    Z -= Z.mean(axis=0)
    constant = Z.max(axis=0) == Z.min(axis=0)
    den = np.einsum("ij,ij->j", Z, Z)
    den[constant] = np.nan
    s0 = float(W.sum())
    if s0 <= 0:
        raise DataMismatchError("the spatial weights are all zero: no unit has a neighbour.")
    I = _moran(Z, W, s0, den)  # noqa: E741
    expected = -1.0 / (n - 1)
    # Cliff & Ord normal-approximation variance.
    Wsym = W + W.T
    s1 = 0.5 * float(Wsym.multiply(Wsym).sum())
    s2 = float(((np.asarray(W.sum(axis=1)).ravel() + np.asarray(W.sum(axis=0)).ravel()) ** 2).sum())
    var = (n * n * s1 - n * s2 + 3 * s0 * s0) / ((n * n - 1) * s0 * s0) - expected**2
    z = (I - expected) / math.sqrt(var) if var > 0 else np.full(g, np.nan)
    from scipy.stats import norm

    out = pd.DataFrame(
        {"I": I, "expected": expected, "z_norm": z, "p_norm": 2 * norm.sf(np.abs(z))},
        index=pd.Index(list(genes) if genes is not None else range(g), name="gene"),
    )
    if n_perms:
        rng = np.random.default_rng(seed)
        larger = np.zeros(g)
        for _ in range(n_perms):
            larger += _moran(Z[rng.permutation(n)], W, s0, den) >= I
        larger = np.minimum(larger, n_perms - larger)  # the observed side
        p = (larger + 1.0) / (n_perms + 1.0)
        p[constant] = np.nan
        out["p_sim"] = p
    if constant.any():
        log.info("Moran's I undefined for %d constant gene(s)", int(constant.sum()))
    return out


def spatial_autocorrelation(
    adata,
    *,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    k: int = 6,
    radius_um: float | None = None,
    n_perms: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Moran's I of each gene of an ``AnnData`` over its units (``obsm["spatial"]``).

    Computed on ``X`` (or ``layer``) as given: pass normalised expression
    (:func:`hexpress.data.preprocess.normalize`) to follow seed paper 000.

    Args:
        adata: units of one section.
        genes: genes to use (default all).
        layer: a layer instead of ``X``.
        k: nearest neighbours (default 6).
        radius_um: distance band in µm instead of k-NN (needs ``uns["hexpress"]["mpp"]``).
        n_perms, seed: permutation test (see :func:`morans_i`).

    Returns:
        See :func:`morans_i`, indexed by gene.
    """
    if K.SPATIAL not in adata.obsm:
        raise GeometryError(
            f"adata.obsm[{K.SPATIAL!r}] is missing: Moran's I needs unit positions; read the "
            "data with a hexpress reader or set obsm['spatial'] to (n, 2) x, y pixels."
        )
    sub = adata if genes is None else adata[:, list(genes)]
    radius_px = None
    if radius_um is not None:
        mpp = adata.uns.get(K.UNS, {}).get("mpp")
        if mpp is None:
            raise UnitsError(
                "radius_um needs the image's µm per pixel in uns['hexpress']['mpp']; give k instead."
            )
        radius_px = radius_um / float(mpp)
    W = spatial_weights(np.asarray(adata.obsm[K.SPATIAL])[:, :2], k=k, radius_px=radius_px)
    X = sub.layers[layer] if layer is not None else sub.X
    return morans_i(X, W, genes=list(sub.var_names), n_perms=n_perms, seed=seed)


def predictability(pcc, morans, abundance) -> pd.DataFrame:
    """Spearman correlation of per-gene PCC with Moran's I and with mean abundance.

    Seed paper 000's analysis: is a gene predicted well because it is spatially organised, or
    because it is abundant? Genes with an undefined value in either series are left out.

    Args:
        pcc: per-gene PCC, ``pandas.Series`` indexed by gene (or an array).
        morans: per-gene Moran's I, aligned by index (or an array of the same order).
        abundance: per-gene mean expression, aligned likewise.

    Returns:
        Rows ``morans_i`` and ``mean_abundance``; columns ``rho``, ``p``, ``n_genes``.
    """
    from scipy.stats import spearmanr

    def series(x):
        return x.astype(np.float64) if isinstance(x, pd.Series) else pd.Series(np.asarray(x, float))

    y = series(pcc)
    rows = []
    for name, other in (("morans_i", morans), ("mean_abundance", abundance)):
        x = series(other)
        both = pd.concat([y.rename("a"), x.rename("b")], axis=1, join="inner")
        if len(both) != len(y):
            log.info("%s: %d of %d gene(s) matched by name", name, len(both), len(y))
        both = both[np.isfinite(both["a"]) & np.isfinite(both["b"])]
        if len(both) < 3 or both["a"].nunique() < 2 or both["b"].nunique() < 2:
            log.warning(
                "%s: too few varying genes (%d) for a Spearman correlation", name, len(both)
            )
            rho, p = math.nan, math.nan
        else:
            res = spearmanr(both["a"], both["b"])
            rho, p = float(res.statistic), float(res.pvalue)
        rows.append({"analysis": name, "rho": rho, "p": p, "n_genes": len(both)})
    return pd.DataFrame(rows).set_index("analysis")
