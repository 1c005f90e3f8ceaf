"""Figures of an evaluation: PCC distributions, PCC vs Moran's I, cross-scale curves.

Each function draws on one axes (``ax=``, a new figure when omitted) and returns it. Maps of gene
expression over the H&E are in :mod:`hexpress.pl.maps`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from hexpress.errors import ConfigError
from hexpress.eval.metrics import PCC_THRESHOLD

__all__ = ["plot_cross_scale", "plot_pcc_distribution", "plot_pcc_vs_morans", "use_agg"]

log = logging.getLogger(__name__)

KINDS = ("violin", "box", "hist")


def use_agg() -> None:
    """Switch matplotlib to the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)


def _ax(ax, figsize=(6, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_pcc_distribution(
    pcc_by_method: Mapping[str, np.ndarray],
    *,
    kind: str = "violin",
    threshold: float = PCC_THRESHOLD,
    ax=None,
):
    """Distribution of per-gene PCC, one violin / box / histogram per method.

    Undefined PCCs (``NaN``) are left out; the number drawn is in each label.

    Args:
        pcc_by_method: method -> per-gene PCC (pooled over sections by the caller).
        kind: ``"violin"``, ``"box"`` or ``"hist"``.
        threshold: a dashed line marks ``PCC = threshold``.
        ax: axes to draw on.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}.")
    ax = _ax(ax, (max(4.0, 1.4 * len(pcc_by_method) + 2), 4))
    names = list(pcc_by_method)
    data = []
    for name in names:
        v = np.asarray(pcc_by_method[name], dtype=np.float64).ravel()
        data.append(v[np.isfinite(v)])
    labels = [f"{n}\n(n={len(d)})" for n, d in zip(names, data, strict=True)]
    if kind == "hist":
        bins = np.linspace(-1, 1, 41)
        for label, d in zip(labels, data, strict=True):
            if d.size:
                ax.hist(
                    d, bins=bins, histtype="step", linewidth=1.5, label=label.replace("\n", " ")
                )
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("per-gene PCC")
        ax.set_ylabel("genes")
        ax.legend(fontsize=8)
    else:
        pos = np.arange(1, len(data) + 1)
        drawn = [(p, d) for p, d in zip(pos, data, strict=True) if d.size]
        if drawn and kind == "violin":
            ax.violinplot([d for _, d in drawn], positions=[p for p, _ in drawn], showmedians=True)
        elif drawn:
            ax.boxplot([d for _, d in drawn], positions=[p for p, _ in drawn])
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=8)
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("per-gene PCC")
    ax.set_title("Per-gene PCC")
    return ax


def plot_pcc_vs_morans(pcc, morans, *, ax=None, label: str | None = None, annotate: int = 5):
    """Scatter of per-gene PCC against the gene's Moran's I, with Spearman's rho in the title.

    Args:
        pcc: per-gene PCC (``pandas.Series`` by gene, or an array aligned with ``morans``).
        morans: per-gene Moran's I of the measured expression, aligned likewise.
        ax: axes to draw on.
        label: prefix of the title (e.g. the method).
        annotate: name this many genes with the highest PCC.
    """
    from hexpress.eval.spatial import predictability

    ax = _ax(ax, (5, 4))
    y = pcc if isinstance(pcc, pd.Series) else pd.Series(np.asarray(pcc, float))
    x = morans if isinstance(morans, pd.Series) else pd.Series(np.asarray(morans, float))
    both = pd.concat([x.rename("I"), y.rename("pcc")], axis=1, join="inner").astype(float)
    both = both[np.isfinite(both["I"]) & np.isfinite(both["pcc"])]
    ax.scatter(both["I"], both["pcc"], s=10, alpha=0.7)
    # the best genes sit close together at the top: their names go in a column below-right,
    # each joined to its point, so that they do not print over each other
    top = both.nlargest(annotate, "pcc") if annotate else both.iloc[:0]
    for i, (gene, row) in enumerate(top.iterrows()):
        ax.annotate(
            str(gene), (row["I"], row["pcc"]), xytext=(12, -10 - 9 * i),
            textcoords="offset points", fontsize=7, alpha=0.8,
            arrowprops={"arrowstyle": "-", "linewidth": 0.4, "alpha": 0.5},
        )  # fmt: skip
    rho = predictability(y, x, x).loc["morans_i"]
    prefix = f"{label}\n" if label else ""  # long method names get a line of their own
    ax.set_title(
        f"{prefix}Spearman rho = {rho['rho']:.2f} (p = {rho['p']:.1e}, n = {len(both)})",
        fontsize=10,
    )
    ax.set_xlabel("Moran's I of measured expression")
    ax.set_ylabel("per-gene PCC")
    return ax


def plot_cross_scale(table: pd.DataFrame, *, metric: str = "PCC@M", ax=None):
    """``metric`` against unit size (log x-axis), one line per method.

    Args:
        table: rows of :func:`hexpress.eval.crossscale.cross_scale_table` (columns ``method``,
            ``scale_um``, ``metric``), any number of methods.
        metric: column to plot.
        ax: axes to draw on.
    """
    for col in ("method", "scale_um", metric):
        if col not in table.columns:
            raise ConfigError(
                f"the cross-scale table has no column {col!r}: {list(table.columns)}."
            )
    ax = _ax(ax, (6, 4))
    for method, g in table.groupby("method", sort=False):
        g = g[np.isfinite(g["scale_um"].astype(float))].sort_values("scale_um")
        values = pd.to_numeric(g[metric], errors="coerce")
        label = str(method)
        if not np.isfinite(values).any():  # a constant prediction has no correlation
            label += f" ({metric} undefined)"
        ax.plot(g["scale_um"], values, marker="o", label=label)
    ax.set_xscale("log")
    sizes = np.unique(table["scale_um"].astype(float))
    sizes = sizes[np.isfinite(sizes)]
    if sizes.size:
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:g}" for s in sizes])
        ax.minorticks_off()
    ax.set_xlabel("unit size (µm, log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across scales")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return ax
