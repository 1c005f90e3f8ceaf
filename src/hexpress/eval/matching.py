"""Put a prediction and its truth side by side: same units, same genes, same normalised space.

Units are matched by ``obs_names`` and genes by ``var_names``. When no unit id is shared (the
truth read from another format, the prediction at the same places under other names),
:func:`match_by_position` renames the predictions after the truth unit whose centre lies within
half a unit of theirs, in µm. The truth may hold raw counts (no ``uns["hexpress"]["normalization"]``): it is then normalised the way
the prediction records (``log1p(counts / total * scale)``, totals over all of the truth's genes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.data.preprocess import DEFAULT_SCALE, normalize
from hexpress.errors import DataMismatchError
from hexpress.eval.metrics import PCC_THRESHOLD, SectionMetrics, section_metrics

__all__ = [
    "Aligned",
    "match_by_position",
    "align",
    "check_match",
    "evaluate_anndata",
    "normalization_of",
    "prepare_truth",
]

log = logging.getLogger(__name__)


def normalization_of(adata: ad.AnnData) -> dict | None:
    """The normalisation an ``AnnData`` records (``uns["hexpress"]["normalization"]``), if any."""
    norm = adata.uns.get(K.UNS, {}).get(K.NORMALIZATION)
    return dict(norm) if norm else None


def _centers_um(a: ad.AnnData, label: str, name: str) -> np.ndarray:
    mpp = a.uns.get(K.UNS, {}).get("mpp")
    if K.SPATIAL not in a.obsm or mpp is None:
        raise DataMismatchError(
            f"{name}: no unit id is shared with the truth, and the {label} lacks positions "
            f"(obsm['spatial'] and uns['{K.UNS}']['mpp']) to match units by place."
        )
    return np.asarray(a.obsm[K.SPATIAL], dtype=np.float64)[:, :2] * float(mpp)


def match_by_position(
    truth: ad.AnnData, pred: ad.AnnData, *, name: str = "prediction"
) -> ad.AnnData:
    """``pred`` with its units renamed after the truth's, matched by position when no id is shared.

    Each prediction takes the id of the nearest truth unit whose centre is within half that
    unit's size (``obs["size_um"] / 2``; positions compared in µm, ``obsm["spatial"] *
    uns["hexpress"]["mpp"]``, so the two may refer to different resolutions of one image). A
    truth unit claimed by several predictions goes to the nearest; unmatched predictions keep
    their ids (and so stay unmatched).

    Returns:
        ``pred`` itself when some unit id is shared, else a renamed copy with
        ``obs["matched_by"] = "position"`` and the original id in ``obs["pred_id"]``.

    Raises:
        DataMismatchError: no shared id and no position or size to match on, or nothing within
            half a unit.
    """
    if pd.Index(pred.obs_names).isin(truth.obs_names).any():
        return pred
    from scipy.spatial import cKDTree

    t_xy, p_xy = _centers_um(truth, "truth", name), _centers_um(pred, "prediction", name)
    if K.SIZE_UM in truth.obs:
        half = 0.5 * truth.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
    else:
        half = np.full(truth.n_obs, np.nan)
    if not np.isfinite(half).any():
        raise DataMismatchError(
            f"{name}: no unit id is shared with the truth and the truth has no unit sizes "
            "(obs['size_um']) to match by position within half a unit."
        )
    half = np.where(np.isfinite(half), half, np.nanmedian(half))
    dist, idx = cKDTree(t_xy).query(p_xy, k=1)
    ok = dist <= half[idx]
    order = np.argsort(dist)
    taken: set[int] = set()
    new_ids = np.asarray(pred.obs_names, dtype=object).copy()
    for i in order:
        if ok[i] and idx[i] not in taken:
            taken.add(int(idx[i]))
            new_ids[i] = truth.obs_names[idx[i]]
        else:
            ok[i] = False
    if not ok.any():
        raise DataMismatchError(
            f"{name}: no unit id is shared with the truth and no predicted unit lies within half "
            f"a unit of a truth unit (nearest {float(dist.min()):.3g} µm); are they on the same "
            "slide and in the same frame?"
        )
    out = pred.copy()
    out.obs["pred_id"] = np.asarray(pred.obs_names, dtype=str)
    out.obs["matched_by"] = np.where(ok, "position", "none")
    out.obs_names = pd.Index(new_ids.astype(str))
    log.info(
        "%s: no shared unit id; %d of %d predicted units matched to truth units by position "
        "(within half a unit)",
        name,
        int(ok.sum()),
        pred.n_obs,
    )
    return out


def prepare_truth(
    truth: ad.AnnData, pred: ad.AnnData, *, genes=None, name: str = "truth"
) -> tuple[ad.AnnData, str]:
    """The truth in the prediction's normalised space.

    Args:
        truth: measured units, raw counts or already normalised (recorded in ``uns``).
        pred: predictions; ``uns["hexpress"]["normalization"]`` says their space.
        genes: genes to keep after normalising (totals still over all genes).
        name: the truth's name (a file) for messages.

    Returns:
        ``(adata, note)``: the normalised truth and a one-line note of what was done.
    """
    t_norm, p_norm = normalization_of(truth), normalization_of(pred)
    if t_norm is not None:
        if p_norm is not None and not np.isclose(
            float(t_norm.get("scale", DEFAULT_SCALE)), float(p_norm.get("scale", DEFAULT_SCALE))
        ):
            raise DataMismatchError(
                f"{name} is normalised with scale {t_norm.get('scale')} but the prediction with "
                f"scale {p_norm.get('scale')}; give the truth as raw counts so it can be "
                "normalised like the prediction."
            )
        note = (
            f"{name}: already normalised ({t_norm.get('method', '?')}, scale {t_norm.get('scale')})"
        )
        out = truth if genes is None else truth[:, list(genes)]
        return out, note
    if p_norm is None:
        scale = DEFAULT_SCALE
        log.warning(
            "the prediction records no normalisation (uns['hexpress']['normalization']); "
            "assuming log1p(counts / total * %g)",
            scale,
        )
    else:
        scale = float(p_norm.get("scale", DEFAULT_SCALE))
    X = truth.layers[K.COUNTS] if K.COUNTS in truth.layers else truth.X
    data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
    if data.size and (np.any(data < 0) or not np.allclose(data, np.round(data))):
        log.warning(
            "%s records no normalisation but its values are not whole non-negative counts; "
            "it is normalised as if they were raw counts",
            name,
        )
    out = normalize(truth, genes=genes, scale=scale)
    note = (
        f"{name}: raw counts normalised as log1p(counts / total * {scale:g}), totals over all genes"
    )
    log.info(note)
    return out, note


@dataclass
class Aligned:
    """Matched arrays: ``truth`` and ``pred`` are ``(n_units, n_genes)`` float64."""

    truth: np.ndarray
    pred: np.ndarray
    genes: list[str]
    unit_ids: list[str]
    n_truth_units: int
    n_pred_units: int
    n_truth_genes: int
    n_pred_genes: int

    def describe(self) -> str:
        return (
            f"{len(self.unit_ids)} units matched (truth {self.n_truth_units}, prediction "
            f"{self.n_pred_units}); {len(self.genes)} genes matched (truth {self.n_truth_genes}, "
            f"prediction {self.n_pred_genes})"
        )


def _examples(ids, limit: int = 3) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:limit])) + (" ..." if len(ids) > limit else "")


def check_match(
    truth: ad.AnnData, pred: ad.AnnData, *, strict: bool = True, name: str = "prediction"
) -> tuple[pd.Index, list[str]]:
    """Unit ids and genes shared by truth and prediction, raising when they cannot be matched.

    Args:
        truth: the truth (raw or normalised; only names are read).
        pred: predictions.
        strict: the unit ids must be the same set and every predicted gene must be in the truth;
            otherwise the intersection is used (logged) and only an empty one fails.
        name: what the prediction is (a scale, a file) for messages.

    Returns:
        ``(unit_ids, genes)``, both in the prediction's order.
    """
    t_ids, p_ids = pd.Index(truth.obs_names), pd.Index(pred.obs_names)
    for label, ids in (("truth", t_ids), ("prediction", p_ids)):
        if ids.has_duplicates:
            raise DataMismatchError(
                f"{name}: the {label} has duplicated unit ids "
                f"({_examples(ids[ids.duplicated()].unique())}); units are matched by id."
            )
    common_units = p_ids[p_ids.isin(t_ids)]
    missing_in_truth = p_ids[~p_ids.isin(t_ids)]
    missing_in_pred = t_ids[~t_ids.isin(p_ids)]
    truth_genes = set(truth.var_names)
    genes = [str(g) for g in pred.var_names if g in truth_genes]
    missing_genes = [g for g in pred.var_names if g not in truth_genes]
    if len(common_units) == 0:
        raise DataMismatchError(
            f"{name}: no unit id of the prediction (e.g. {_examples(p_ids)}) is in the truth "
            f"(e.g. {_examples(t_ids)}); predict at the truth's units (same obs_names)."
        )
    if not genes:
        raise DataMismatchError(
            f"{name}: no predicted gene (e.g. {_examples(pred.var_names)}) is in the truth "
            f"(e.g. {_examples(truth.var_names)}); gene names must match exactly."
        )
    if strict and (len(missing_in_truth) or len(missing_in_pred)):
        raise DataMismatchError(
            f"{name}: unit ids differ: {len(missing_in_truth)} predicted unit(s) are missing from "
            f"the truth (e.g. {_examples(missing_in_truth)}) and {len(missing_in_pred)} truth "
            f"unit(s) were not predicted (e.g. {_examples(missing_in_pred)}); {len(common_units)} "
            "match. Predict at exactly the truth's units."
        )
    if strict and missing_genes:
        raise DataMismatchError(
            f"{name}: {len(missing_genes)} predicted gene(s) are not in the truth "
            f"(e.g. {_examples(missing_genes)})."
        )
    if len(missing_in_truth) or len(missing_in_pred):
        log.warning(
            "%s: %d of %d predicted unit(s) matched a truth unit (%d truth unit(s) not "
            "predicted); evaluating the matched ones",
            name,
            len(common_units),
            len(p_ids),
            len(missing_in_pred),
        )
    return common_units, genes


def align(
    truth: ad.AnnData, pred: ad.AnnData, *, strict: bool = True, name: str = "prediction"
) -> Aligned:
    """Match units by ``obs_names`` and genes by ``var_names`` (see :func:`check_match`).

    Args:
        truth: normalised truth (see :func:`prepare_truth`).
        pred: predictions, same space.
        strict: see :func:`check_match`.
        name: what the prediction is (a scale, a file) for messages.

    Returns:
        :class:`Aligned`, units and genes in the prediction's order.
    """
    common_units, genes = check_match(truth, pred, strict=strict, name=name)
    t_ids, p_ids = pd.Index(truth.obs_names), pd.Index(pred.obs_names)
    t_rows = t_ids.get_indexer(common_units)
    p_rows = p_ids.get_indexer(common_units)
    t_cols = pd.Index(truth.var_names).get_indexer(genes)
    p_cols = pd.Index(pred.var_names).get_indexer(genes)

    def take(a: ad.AnnData, rows, cols) -> np.ndarray:
        X = a.X[rows][:, cols]
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        return np.asarray(X, dtype=np.float64)

    out = Aligned(
        truth=take(truth, t_rows, t_cols),
        pred=take(pred, p_rows, p_cols),
        genes=[str(g) for g in genes],
        unit_ids=[str(u) for u in common_units],
        n_truth_units=truth.n_obs,
        n_pred_units=pred.n_obs,
        n_truth_genes=truth.n_vars,
        n_pred_genes=pred.n_vars,
    )
    log.info("%s: %s", name, out.describe())
    return out


def evaluate_anndata(
    truth: ad.AnnData,
    pred: ad.AnnData,
    *,
    section: str = "section",
    strict: bool = True,
    threshold: float = PCC_THRESHOLD,
    spearman: bool = False,
) -> SectionMetrics:
    """Normalise the truth if needed, match units and genes, and compute :class:`SectionMetrics`.

    Args:
        truth: measured units (raw counts or normalised).
        pred: predictions at the same units (``obs_names``), normalised space in ``X``.
        section: label for tables and messages.
        strict: see :func:`align`.
        threshold, spearman: see :func:`~hexpress.eval.metrics.section_metrics`.
    """
    _, genes = check_match(truth, pred, strict=strict, name=section)
    norm_truth, _ = prepare_truth(truth, pred, genes=genes, name=f"{section} truth")
    a = align(norm_truth, pred, strict=strict, name=section)
    return section_metrics(
        a.truth, a.pred, a.genes, section=section, threshold=threshold, spearman=spearman
    )
