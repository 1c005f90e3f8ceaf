"""The neighbour ceiling: how well a section's expression is predicted by its own neighbours.

Not a method. Each unit's measured expression is predicted by the mean of the *measured*
expression of its neighbours in the same section (the unit itself left out), and scored with the
same metrics as every method (:func:`hexpress.eval.metrics.section_metrics`). A model that sees
only the H&E has no access to measured neighbours, so this is a reference for what the data's
spatial structure alone explains: a PCC@M of 0.15 means little on its own and a lot beside a
ceiling of 0.2.

Neighbours (:func:`neighbour_weights`):

* ``"lattice"``: units on a regular grid (Visium spots, legacy ST spots, square bins). The pitch is
  the median nearest-neighbour distance; neighbours are the units within ``ring`` pitches: the
  default ``1.5`` takes the 6 hexagonal neighbours of a Visium spot and the 8 of a square lattice
  (legacy ST spots, square bins: the 4 edge neighbours and the diagonals); ``1.2`` takes only the
  first ring (6 hexagonal, 4 square).
* ``"knn"``: irregular units (cells): the ``k`` nearest within ``radius`` median
  nearest-neighbour distances.
* ``"auto"`` (default): ``"lattice"`` when at least 90 % of the nearest-neighbour distances lie
  within 15 % of their median, else ``"knn"``.

A unit with no neighbour is predicted by the mean of every other unit of the section (still never
itself); their number is logged and kept in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.errors import ConfigError, DataMismatchError, GeometryError

__all__ = [
    "CEILING_NAME",
    "CeilingResult",
    "ceiling_metrics",
    "detect_lattice",
    "neighbour_predictions",
    "neighbour_weights",
]

log = logging.getLogger(__name__)

CEILING_NAME = "ceiling (neighbours)"
"""The row label of the ceiling in result tables."""

NEIGHBOURS = ("auto", "lattice", "knn")
_LATTICE_TOL = 0.15  # nearest-neighbour distances within 15 % of their median ...
_LATTICE_FRACTION = 0.9  # ... for at least 90 % of the units: a lattice


def _coords(coords) -> np.ndarray:
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise GeometryError(f"unit positions must be an (n, 2) array, got shape {xy.shape}.")
    if not np.isfinite(xy).all():
        raise GeometryError("unit positions hold non-finite values; drop those units first.")
    if xy.shape[0] < 3:
        raise DataMismatchError(
            f"the neighbour ceiling needs at least 3 units in a section, got {xy.shape[0]}."
        )
    return xy


def _nn_distances(xy: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1]


def detect_lattice(coords) -> tuple[bool, float]:
    """Whether units lie on a regular lattice, and its pitch.

    Args:
        coords: ``(n, 2)`` unit centres (any one length unit).

    Returns:
        ``(is_lattice, pitch)``: ``pitch`` is the median nearest-neighbour distance, in the unit of
        ``coords``.
    """
    d = _nn_distances(_coords(coords))
    pitch = float(np.median(d))
    if not pitch > 0:
        raise GeometryError("units share positions (median nearest-neighbour distance 0).")
    close = np.abs(d - pitch) <= _LATTICE_TOL * pitch
    return bool(close.mean() >= _LATTICE_FRACTION), pitch


@dataclass(frozen=True)
class CeilingResult:
    """Neighbour predictions of one section.

    Attributes:
        pred: ``(n_units, n_genes)`` predictions, rows as the truth's.
        neighbours: ``"lattice"`` or ``"knn"``, what was used.
        pitch: median nearest-neighbour distance, in the unit of the positions.
        mean_neighbours: mean number of neighbours per unit.
        n_isolated: units without a neighbour (predicted by the mean of all other units).
    """

    pred: np.ndarray
    neighbours: str
    pitch: float
    mean_neighbours: float
    n_isolated: int


def neighbour_weights(
    coords,
    *,
    neighbours: str = "auto",
    ring: float = 1.5,
    k: int = 6,
    radius: float = 3.0,
) -> tuple[sp.csr_matrix, str, float]:
    """Row-standardised neighbour weights (no self-weights).

    Args:
        coords: ``(n, 2)`` unit centres.
        neighbours: ``"auto"``, ``"lattice"`` or ``"knn"`` (see the module docstring).
        ring: lattice neighbours lie within ``ring`` pitches (1.5: the 6 of a hexagonal lattice,
            the 8 of a square one; 1.2: the first ring only, 4 on a square lattice).
        k, radius: knn neighbours: the ``k`` nearest within ``radius`` pitches.

    Returns:
        ``(W, kind, pitch)``: ``(n, n)`` CSR weights whose rows sum to 1 (0 for isolated units),
        the kind used and the pitch.
    """
    from hexpress.eval.spatial import spatial_weights

    if neighbours not in NEIGHBOURS:
        raise ConfigError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}.")
    if not (ring >= 1.0 and radius > 0 and k >= 1):
        raise ConfigError(f"need ring >= 1, radius > 0 and k >= 1; got {ring}, {radius}, {k}.")
    xy = _coords(coords)
    is_lattice, pitch = detect_lattice(xy)
    kind = ("lattice" if is_lattice else "knn") if neighbours == "auto" else neighbours
    if kind == "lattice":
        W = spatial_weights(xy, radius_px=ring * pitch, row_standardize=True)
        return W, kind, pitch
    W = spatial_weights(xy, k=min(k, xy.shape[0] - 1), row_standardize=False).tocoo()
    d = np.hypot(*(xy[W.row] - xy[W.col]).T)
    keep = d <= radius * pitch
    W = sp.csr_matrix((W.data[keep], (W.row[keep], W.col[keep])), shape=W.shape)
    rs = np.asarray(W.sum(axis=1)).ravel()
    inv = np.divide(1.0, rs, out=np.zeros_like(rs), where=rs > 0)
    return sp.csr_matrix(sp.diags(inv) @ W), kind, pitch


def neighbour_predictions(expression, coords, **kwargs) -> CeilingResult:
    """Each unit predicted by the mean measured expression of its neighbours.

    Args:
        expression: ``(n_units, n_genes)`` measured expression, normalised (dense or sparse).
        coords: ``(n_units, 2)`` unit centres.
        **kwargs: :func:`neighbour_weights` options.

    Returns:
        :class:`CeilingResult`.
    """
    X = expression.toarray() if sp.issparse(expression) else np.asarray(expression)
    X = X.astype(np.float64, copy=False)
    xy = _coords(coords)
    if X.shape[0] != xy.shape[0]:
        raise DataMismatchError(f"{X.shape[0]} expression rows but {xy.shape[0]} positions.")
    W, kind, pitch = neighbour_weights(xy, **kwargs)
    pred = np.asarray(W @ X)
    counts = np.diff(W.indptr)
    isolated = np.flatnonzero(counts == 0)
    if isolated.size:
        n = X.shape[0]
        others = (X.sum(axis=0)[None, :] - X[isolated]) / (n - 1)  # leave-one-out section mean
        pred[isolated] = others
        log.info("ceiling: %d of %d unit(s) have no neighbour", isolated.size, n)
    return CeilingResult(pred, kind, pitch, float(counts.mean()), int(isolated.size))


def ceiling_metrics(
    truth,
    genes: Sequence[str] | None = None,
    *,
    units: Sequence[str] | None = None,
    section: str = "section",
    threshold: float | None = None,
    **kwargs,
):
    """The ceiling of one section, scored like a method.

    Args:
        truth: measured units as ``AnnData``, already normalised (:func:`~hexpress.eval.matching.
            prepare_truth`), with positions in ``obsm["spatial"]``. Every unit is a neighbour.
        genes: genes to score (default all of ``truth``).
        units: ``obs_names`` scored (default all); the others still serve as neighbours.
        section: label for tables.
        threshold: the ``PCC >=`` counting rule (default that of the metrics).
        **kwargs: :func:`neighbour_weights` options.

    Returns:
        ``(SectionMetrics, CeilingResult)``.

    Raises:
        DataMismatchError: the truth has no positions, or lacks a gene or unit.
    """
    from hexpress.eval.metrics import PCC_THRESHOLD, section_metrics

    if K.SPATIAL not in truth.obsm:
        raise DataMismatchError(
            f"{section}: the truth has no unit positions (obsm['spatial']); the neighbour "
            "ceiling needs them."
        )
    genes = list(truth.var_names) if genes is None else [str(g) for g in genes]
    missing = [g for g in genes if g not in truth.var_names]
    if missing:
        raise DataMismatchError(f"{section}: the truth lacks gene(s) {missing[:5]}.")
    X = truth[:, genes].X
    res = neighbour_predictions(X, truth.obsm[K.SPATIAL], **kwargs)
    pred, t = res.pred, X.toarray() if sp.issparse(X) else np.asarray(X)
    if units is not None:
        index = truth.obs_names.get_indexer(list(units))
        if (index < 0).any():
            raise DataMismatchError(f"{section}: {int((index < 0).sum())} unit(s) not in truth.")
        pred, t = pred[index], t[index]
    metrics = section_metrics(
        t, pred, genes, section=section,
        threshold=PCC_THRESHOLD if threshold is None else threshold,
    )  # fmt: skip
    return metrics, res
