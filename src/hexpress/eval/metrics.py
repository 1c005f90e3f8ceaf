"""Metrics of predicted against measured expression, per held-out section.

Both arrays are ``(n_units, n_genes)`` in the same normalised space
(``log1p(counts / total * scale)``, see :mod:`hexpress.data.preprocess`), rows matched by unit and
columns by gene. Per section:

* ``MSE`` and ``MAE`` over all entries;
* per-gene Pearson correlation (PCC) over the units, summarised as ``PCC@F`` (first quartile),
  ``PCC@S`` (median) and ``PCC@M`` (mean), and the number of genes with ``PCC >= 0.30``
  (the counting rule of seed paper 000);
* optionally per-gene Spearman correlation.

**Undefined correlations.** A gene that is constant over the section's units in the truth or in
the prediction (``max == min``, tested exactly) has no correlation. It gets ``NaN`` in the per-gene
array, is left out of every summary (quantiles, mean, count) and is counted in ``n_undefined``; the
gene names are logged. It is never a crash and never a zero.

**Several sections** (:func:`aggregate`):

* ``"mean"`` (default, the PixNet protocol): each summary is the mean over sections of the
  per-section summaries (so the ``PCC >= 0.30`` count may be fractional). Sections whose summary
  is undefined (no gene with a defined PCC) are left out of that mean and logged.
* ``"pooled"``: all units of all sections form one set and every metric is computed on it, exactly,
  from per-section sufficient statistics (no arrays kept).
* ``"gene_mean"``: each gene's PCC is averaged over the sections where it is defined, then
  summarised once (integer counts; a gene undefined in every section is undefined).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hexpress.errors import ConfigError, DataMismatchError, FormatError

__all__ = [
    "AGGREGATIONS",
    "PCC_THRESHOLD",
    "SUMMARY_COLUMNS",
    "SectionMetrics",
    "aggregate",
    "count_column",
    "pearson_per_gene",
    "section_metrics",
    "spearman_per_gene",
    "summarize_pcc",
]

log = logging.getLogger(__name__)

PCC_THRESHOLD = 0.30
AGGREGATIONS = ("mean", "pooled", "gene_mean")


def count_column(threshold: float = PCC_THRESHOLD) -> str:
    """Name of the column counting genes with ``PCC >= threshold`` (``"n_genes_PCC>=0.30"``)."""
    return f"n_genes_PCC>={threshold:.2f}"


SUMMARY_COLUMNS = ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", count_column(), "n_undefined")
"""Columns of a summary with the default threshold, in table order."""


def _check_pair(truth, pred, genes=None) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise DataMismatchError(
            f"truth and prediction must be (n_units, n_genes) arrays of one shape; got "
            f"{t.shape} and {p.shape}. Match units by obs_names and genes by var_names first."
        )
    if genes is not None and len(genes) != t.shape[1]:
        raise DataMismatchError(f"{len(genes)} gene names for {t.shape[1]} gene columns.")
    for name, a in (("truth", t), ("prediction", p)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise FormatError(
                f"the {name} holds {int(bad.sum())} non-finite value(s) (NaN/inf) in "
                f"{int(bad.any(axis=0).sum())} gene(s); metrics need finite expression values."
            )
    return t, p


def _constant(a: np.ndarray) -> np.ndarray:
    # Exact test: a float mean of identical values can differ from them in the last bit, which
    # would turn a constant column into noise with a spurious correlation.
    if a.shape[0] == 0:
        return np.ones(a.shape[1], dtype=bool)
    return a.max(axis=0) == a.min(axis=0)


def _pearson(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    undefined = _constant(t) | _constant(p) | (t.shape[0] < 2)
    tc = t - t.mean(axis=0)
    pc = p - p.mean(axis=0)
    num = np.einsum("ij,ij->j", tc, pc)
    den = np.sqrt(np.einsum("ij,ij->j", tc, tc) * np.einsum("ij,ij->j", pc, pc))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(undefined, np.nan, num / np.where(undefined, 1.0, den))
    return np.clip(r, -1.0, 1.0)


def pearson_per_gene(truth, pred) -> np.ndarray:
    """Pearson correlation of each gene (column) over the units (rows).

    Args:
        truth: ``(n_units, n_genes)`` measured expression.
        pred: ``(n_units, n_genes)`` predicted expression, same space.

    Returns:
        ``(n_genes,)`` float64; ``NaN`` where the gene is constant in truth or prediction.
    """
    t, p = _check_pair(truth, pred)
    return _pearson(t, p)


def spearman_per_gene(truth, pred) -> np.ndarray:
    """Spearman rank correlation of each gene over the units (average ranks for ties).

    Returns:
        ``(n_genes,)`` float64; ``NaN`` where the gene is constant in truth or prediction.
    """
    from scipy.stats import rankdata

    t, p = _check_pair(truth, pred)
    if t.shape[0] == 0:
        return np.full(t.shape[1], np.nan)
    return _pearson(rankdata(t, axis=0), rankdata(p, axis=0))


def summarize_pcc(pcc, threshold: float = PCC_THRESHOLD) -> dict[str, float]:
    """Summaries of per-gene correlations, undefined (``NaN``) genes left out and counted.

    Args:
        pcc: ``(n_genes,)`` per-gene correlations, ``NaN`` for undefined.
        threshold: the counting threshold (default 0.30).

    Returns:
        ``{"PCC@F", "PCC@S", "PCC@M", count_column(threshold), "n_undefined", "n_defined"}``;
        the three summaries are ``NaN`` only when no gene is defined.
    """
    pcc = np.asarray(pcc, dtype=np.float64).ravel()
    ok = np.isfinite(pcc)
    v = pcc[ok]
    if v.size:
        f, s = np.quantile(v, [0.25, 0.5])
        m = float(v.mean())
    else:
        f = s = m = math.nan
    return {
        "PCC@F": float(f),
        "PCC@S": float(s),
        "PCC@M": m,
        count_column(threshold): int((v >= threshold).sum()),
        "n_undefined": int((~ok).sum()),
        "n_defined": int(ok.sum()),
    }


@dataclass
class SectionMetrics:
    """Metrics of one section (or one scale): per-gene arrays and their summaries.

    Attributes:
        section: section / sample id (or a scale label).
        genes: gene names, ``(n_genes,)``.
        n_units: number of units compared.
        pcc: ``(n_genes,)`` per-gene Pearson over units; ``NaN`` where undefined.
        mse_gene: ``(n_genes,)`` per-gene mean squared error over units.
        mae_gene: ``(n_genes,)`` per-gene mean absolute error over units.
        spearman: ``(n_genes,)`` per-gene Spearman, or ``None`` when not asked for.
        mean_truth: ``(n_genes,)`` mean measured expression (abundance, for the predictability
            analysis).
        threshold: the ``PCC >=`` counting threshold.
        stats: per-gene sufficient statistics for exact pooling (:func:`aggregate`).
    """

    section: str
    genes: list[str]
    n_units: int
    pcc: np.ndarray
    mse_gene: np.ndarray
    mae_gene: np.ndarray
    spearman: np.ndarray | None = None
    mean_truth: np.ndarray | None = None
    threshold: float = PCC_THRESHOLD
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def mse(self) -> float:
        return float(self.mse_gene.mean()) if self.mse_gene.size else math.nan

    @property
    def mae(self) -> float:
        return float(self.mae_gene.mean()) if self.mae_gene.size else math.nan

    @property
    def undefined_genes(self) -> list[str]:
        return [g for g, r in zip(self.genes, self.pcc, strict=True) if not np.isfinite(r)]

    def summary(self) -> dict[str, float]:
        """One row: ``MSE, MAE, PCC@F, PCC@S, PCC@M, n_genes_PCC>=thr, n_undefined, n_genes,
        n_units`` (plus ``SCC@M``, the mean Spearman, when computed)."""
        out = {"MSE": self.mse, "MAE": self.mae}
        out.update(summarize_pcc(self.pcc, self.threshold))
        del out["n_defined"]
        out["n_genes"] = len(self.genes)
        out["n_units"] = int(self.n_units)
        if self.spearman is not None:
            ok = np.isfinite(self.spearman)
            out["SCC@M"] = float(self.spearman[ok].mean()) if ok.any() else math.nan
        return out

    def per_gene(self) -> dict[str, list]:
        """Plain-JSON per-gene values (``None`` for undefined correlations)."""

        def j(a):
            return None if a is None else [None if not np.isfinite(x) else float(x) for x in a]

        return {
            "genes": list(self.genes),
            "pcc": j(self.pcc),
            "spearman": j(self.spearman),
            "mse": j(self.mse_gene),
            "mae": j(self.mae_gene),
            "mean_truth": j(self.mean_truth),
        }


def _stats(t: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    n = t.shape[0]
    mt, mp = t.mean(axis=0), p.mean(axis=0)
    tc, pc = t - mt, p - mp
    err = p - t
    return {
        "n": np.asarray(float(n)),
        "mean_t": mt,
        "mean_p": mp,
        "m2_t": np.einsum("ij,ij->j", tc, tc),
        "m2_p": np.einsum("ij,ij->j", pc, pc),
        "c_tp": np.einsum("ij,ij->j", tc, pc),
        "min_t": t.min(axis=0),
        "max_t": t.max(axis=0),
        "min_p": p.min(axis=0),
        "max_p": p.max(axis=0),
        "sse": np.einsum("ij,ij->j", err, err),
        "sae": np.abs(err).sum(axis=0),
    }


def _log_undefined(section: str, genes: Sequence[str], pcc: np.ndarray) -> None:
    bad = [g for g, r in zip(genes, pcc, strict=True) if not np.isfinite(r)]
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        log.warning(
            "%s: %d of %d gene(s) are constant in the truth or the prediction, so their PCC is "
            "undefined; they are left out of the summaries and counted as n_undefined: %s%s",
            section,
            len(bad),
            len(genes),
            ", ".join(bad[:10]),
            more,
        )


def section_metrics(
    truth,
    pred,
    genes: Sequence[str],
    *,
    section: str = "section",
    threshold: float = PCC_THRESHOLD,
    spearman: bool = False,
) -> SectionMetrics:
    """All metrics of one held-out section.

    Args:
        truth: ``(n_units, n_genes)`` measured expression, normalised (dense or sparse).
        pred: ``(n_units, n_genes)`` predictions in the same space, rows and columns matched.
        genes: the ``n_genes`` gene names.
        section: label used in logs and tables.
        threshold: ``PCC >= threshold`` counting rule (default 0.30).
        spearman: also compute per-gene Spearman correlations.

    Returns:
        :class:`SectionMetrics`.
    """
    t, p = _check_pair(_dense(truth), _dense(pred), genes)
    genes = [str(g) for g in genes]
    if t.shape[0] == 0:
        raise DataMismatchError(f"{section}: no units to evaluate.")
    st = _stats(t, p)
    pcc = _pearson(t, p)
    _log_undefined(section, genes, pcc)
    n = t.shape[0]
    return SectionMetrics(
        section=str(section),
        genes=genes,
        n_units=n,
        pcc=pcc,
        mse_gene=st["sse"] / n,
        mae_gene=st["sae"] / n,
        spearman=spearman_per_gene(t, p) if spearman else None,
        mean_truth=st["mean_t"].copy(),
        threshold=float(threshold),
        stats=st,
    )


def _dense(a):
    return a.toarray() if hasattr(a, "toarray") else a


def _pool(sections: Sequence[SectionMetrics]) -> SectionMetrics:
    genes = sections[0].genes
    acc = dict(sections[0].stats)
    for s in sections[1:]:
        b = s.stats
        na, nb = float(acc["n"]), float(b["n"])
        n = na + nb
        dt, dp = b["mean_t"] - acc["mean_t"], b["mean_p"] - acc["mean_p"]
        w = na * nb / n
        # Chan et al.'s pairwise update: exact, and stable where raw sums of squares are not.
        acc = {
            "n": np.asarray(n),
            "mean_t": acc["mean_t"] + dt * nb / n,
            "mean_p": acc["mean_p"] + dp * nb / n,
            "m2_t": acc["m2_t"] + b["m2_t"] + dt * dt * w,
            "m2_p": acc["m2_p"] + b["m2_p"] + dp * dp * w,
            "c_tp": acc["c_tp"] + b["c_tp"] + dt * dp * w,
            "min_t": np.minimum(acc["min_t"], b["min_t"]),
            "max_t": np.maximum(acc["max_t"], b["max_t"]),
            "min_p": np.minimum(acc["min_p"], b["min_p"]),
            "max_p": np.maximum(acc["max_p"], b["max_p"]),
            "sse": acc["sse"] + b["sse"],
            "sae": acc["sae"] + b["sae"],
        }
    undefined = (acc["max_t"] == acc["min_t"]) | (acc["max_p"] == acc["min_p"])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = acc["c_tp"] / np.sqrt(acc["m2_t"] * acc["m2_p"])
    pcc = np.clip(np.where(undefined, np.nan, r), -1.0, 1.0)
    n = int(acc["n"])
    label = "pooled(" + ",".join(s.section for s in sections) + ")"
    _log_undefined(label, genes, pcc)
    return SectionMetrics(
        section=label,
        genes=list(genes),
        n_units=n,
        pcc=pcc,
        mse_gene=acc["sse"] / n,
        mae_gene=acc["sae"] / n,
        mean_truth=acc["mean_t"],
        threshold=sections[0].threshold,
        stats=acc,
    )


def aggregate(sections: Sequence[SectionMetrics], how: str = "mean") -> dict[str, float]:
    """Combine the metrics of several sections into one row (see the module docstring).

    Args:
        sections: per-section metrics over the same genes, in the same order.
        how: ``"mean"``, ``"pooled"`` or ``"gene_mean"``.

    Returns:
        The summary keys of :meth:`SectionMetrics.summary` plus ``n_sections`` and ``aggregation``.
    """
    if how not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {how!r}; valid: {', '.join(AGGREGATIONS)}.")
    sections = list(sections)
    if not sections:
        raise ConfigError("aggregate needs at least one section's metrics.")
    genes = sections[0].genes
    for s in sections[1:]:
        if s.genes != genes:
            raise DataMismatchError(
                f"sections {sections[0].section!r} and {s.section!r} were evaluated on different "
                f"genes ({len(genes)} vs {len(s.genes)}); evaluate every section on one gene list."
            )
    thr = sections[0].threshold
    if how == "pooled":
        if any(not s.stats for s in sections):
            raise ConfigError("pooled aggregation needs metrics made by section_metrics.")
        out = _pool(sections).summary()
    elif how == "gene_mean":
        stack = np.vstack([s.pcc for s in sections])
        ok = np.isfinite(stack)
        with np.errstate(invalid="ignore", divide="ignore"):
            gene_mean = np.where(ok, stack, 0.0).sum(0) / ok.sum(0)
        gene_mean[ok.sum(0) == 0] = np.nan
        out = {
            "MSE": float(np.mean([s.mse for s in sections])),
            "MAE": float(np.mean([s.mae for s in sections])),
        }
        out.update(summarize_pcc(gene_mean, thr))
        del out["n_defined"]
        out["n_genes"] = len(genes)
        out["n_units"] = int(sum(s.n_units for s in sections))
    else:
        rows = [s.summary() for s in sections]
        out = {}
        for key in [k for k in rows[0] if all(k in r for r in rows)]:
            vals = np.array([r[key] for r in rows], dtype=np.float64)
            ok = np.isfinite(vals)
            if not ok.all():
                log.warning(
                    "%s is undefined in %d of %d section(s) (%s); the mean is over the rest",
                    key,
                    int((~ok).sum()),
                    len(rows),
                    ", ".join(s.section for s, k in zip(sections, ok, strict=True) if not k),
                )
            out[key] = float(vals[ok].mean()) if ok.any() else math.nan
        out["n_units"] = int(sum(s.n_units for s in sections))
        out["n_genes"] = len(genes)
    out["n_sections"] = len(sections)
    out["aggregation"] = how
    return out
