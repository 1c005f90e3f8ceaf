"""Cross-scale evaluation: one model's predictions at several geometries against the truth there.

A model trained on one geometry (say 100 µm spots) predicts 55 µm spots and 16 / 8 / 2 µm bins
from the same dense map; each is compared with the truth measured at exactly those units (matched
by ``obs_names``). The result is a tidy table, one row per (method, scale), that
:func:`hexpress.eval.figures.plot_cross_scale` draws and the report prints.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.errors import DataMismatchError
from hexpress.eval.matching import evaluate_anndata
from hexpress.eval.metrics import PCC_THRESHOLD, SectionMetrics

__all__ = ["CROSS_SCALE_COLUMNS", "cross_scale_metrics", "cross_scale_table", "unit_scale"]

log = logging.getLogger(__name__)

CROSS_SCALE_COLUMNS = ("method", "scale", "scale_um", "geometry", "n_units", "n_genes")


def unit_scale(adata: ad.AnnData) -> tuple[float, str]:
    """``(size_um, geometry)`` of the units: median ``obs["size_um"]`` and most common geometry
    (``NaN`` / ``"unknown"`` when not recorded)."""
    size = np.nan
    if K.SIZE_UM in adata.obs:
        s = adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
        s = s[np.isfinite(s)]
        size = float(np.median(s)) if s.size else np.nan
    geometry = "unknown"
    if K.GEOMETRY in adata.obs and adata.n_obs:
        geometry = str(adata.obs[K.GEOMETRY].astype(str).mode().iloc[0])
    return size, geometry


def cross_scale_metrics(
    preds: Mapping[str, ad.AnnData],
    truths: Mapping[str, ad.AnnData],
    *,
    strict: bool = True,
    threshold: float = PCC_THRESHOLD,
) -> dict[str, SectionMetrics]:
    """Metrics at every scale.

    Args:
        preds: scale label (e.g. ``"spot_55um"``, ``"bin_8um"``) -> predictions at those units.
        truths: the same labels -> truth (raw counts or normalised) at the same units.
        strict: unit ids must match exactly at every scale (a clear
            :class:`~hexpress.errors.DataMismatchError` says how many differ).
        threshold: ``PCC >=`` counting rule.

    Returns:
        Label -> :class:`SectionMetrics`, in the order of ``preds``.
    """
    missing = [k for k in preds if k not in truths]
    if missing:
        raise DataMismatchError(
            f"no truth for scale(s) {missing}; truths are given for {list(truths)}. Use the "
            "same labels for predictions and truths."
        )
    unused = [k for k in truths if k not in preds]
    if unused:
        log.info("truth without prediction, not evaluated: %s", ", ".join(unused))
    return {
        label: evaluate_anndata(
            truths[label], pred, section=label, strict=strict, threshold=threshold
        )
        for label, pred in preds.items()
    }


def cross_scale_table(
    metrics: Mapping[str, SectionMetrics],
    truths: Mapping[str, ad.AnnData] | None = None,
    *,
    method: str,
) -> pd.DataFrame:
    """Tidy table: one row per scale, sorted by unit size (largest first).

    Args:
        metrics: label -> metrics (from :func:`cross_scale_metrics`).
        truths: label -> truth, read for ``scale_um`` and ``geometry`` (``NaN`` / ``"unknown"``
            without it).
        method: method name for the ``method`` column.

    Returns:
        Columns ``method, scale, scale_um, geometry, n_units, n_genes, MSE, MAE, PCC@F, PCC@S,
        PCC@M, n_genes_PCC>=thr, n_undefined``.
    """
    rows = []
    for label, m in metrics.items():
        size, geometry = (
            unit_scale(truths[label]) if truths and label in truths else (np.nan, "unknown")
        )
        row = {"method": method, "scale": label, "scale_um": size, "geometry": geometry}
        summary = m.summary()
        row["n_units"] = summary.pop("n_units")
        row["n_genes"] = summary.pop("n_genes")
        row.update(summary)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("scale_um", ascending=False, kind="stable").reset_index(drop=True)
    return table
