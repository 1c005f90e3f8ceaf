"""Preprocessing: gene selection, normalisation and patient-level splits.

Normalisation (the expression targets everywhere in hexpress)::

    y = log1p(counts / total_counts * scale)

where ``total_counts`` is the spot's total over **all** genes (before any gene subset) and
``scale`` is fixed (default 1e4). A spot with total 0 gets ``y = 0`` and a warning.
:func:`normalize_counts` is the array form that models and evaluation reuse.

Gene selection uses training sections only:

* ``"heg"`` (highly expressed genes): the ``n`` genes with the largest mean of
  per-spot-total-normalised expression ``counts / total * scale`` (no log) over all training
  spots pooled; ties broken by name.
* ``"hvg"`` (highly variable genes, the Seurat / scanpy ``flavor="seurat"`` recipe): on
  ``counts / total * scale`` of all training spots pooled, per gene mean ``m`` and dispersion
  ``var / m``; ``log1p(m)`` is cut into 20 equal-width bins and ``log(dispersion)`` is z-scored
  within each bin (as scanpy does, a gene alone in its bin scores 1, a bin with zero spread 0);
  the ``n`` genes with the largest
  normalised dispersion among expressed genes are kept.
* a list: given in Python, or read from a plain text file (one gene per line, ``#`` comments) or a
  GMT file (``name<TAB>description<TAB>gene<TAB>gene...`` per set).

Only genes present in every given sample are eligible.

Split file formats (:func:`read_split_file`): YAML::

    splits:
      - name: fold_A
        train: [C2, C3]
        test: [A1]
        val: [C4]          # optional

or TSV with a header ``split<TAB>sample<TAB>role`` and role ``train`` / ``test`` / ``val``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.errors import ConfigError, DataMismatchError, FormatError, InputFileError

__all__ = [
    "DEFAULT_SCALE",
    "GENE_METHODS",
    "Split",
    "normalize",
    "normalize_counts",
    "patient_splits",
    "read_gene_list",
    "read_gmt",
    "read_split_file",
    "select_genes",
    "top_genes",
    "total_counts",
]

log = logging.getLogger(__name__)

DEFAULT_SCALE = 1e4
GENE_METHODS = ("heg", "hvg")
TOTAL_COUNTS = "total_counts"


# -- normalisation ------------------------------------------------------------------------------
def _raw(adata: ad.AnnData):
    return adata.layers[K.COUNTS] if K.COUNTS in adata.layers else adata.X


def total_counts(adata: ad.AnnData) -> np.ndarray:
    """``(n_units,)`` total counts over all genes: ``obs["total_counts"]`` if recorded, else summed."""
    if TOTAL_COUNTS in adata.obs:
        return adata.obs[TOTAL_COUNTS].to_numpy(dtype=np.float64)
    return np.asarray(_raw(adata).sum(axis=1), dtype=np.float64).ravel()


#: Totals below this are raised to it before dividing (a predicted total that underflows in
#: float16 must not turn a unit into inf); totals <= 0 give 0 outright.
MIN_TOTAL = 1e-12


def normalize_counts(counts, totals, scale: float = DEFAULT_SCALE, *, out=None):
    """``log1p(counts / totals * scale)`` row by row: the one place hexpress computes it.

    Used for training targets (observed counts) and for predictions (a predicted gene density
    summed over a unit, divided by the predicted total). A row whose total is 0 (or negative)
    gives 0; a positive total below :data:`MIN_TOTAL` is raised to it, so the result is finite
    wherever ``counts`` and ``totals`` are; a NaN total gives NaN.

    Args:
        counts: ``(..., g)`` raw counts or densities (numpy, scipy sparse ``(n, g)`` or torch
            tensor).
        totals: ``(...)`` total of each row over all genes (same leading shape as ``counts``).
        scale: the fixed scale (default 1e4).
        out: torch only: a tensor of ``counts``' shape and dtype that receives the result, in
            place and without temporaries of that size (not differentiable); returned.

    Returns:
        Same kind and shape as ``counts`` (sparse stays sparse), float32 (numpy, sparse) or the
        tensor's dtype (torch; differentiable in ``counts`` and ``totals`` unless ``out``).
    """
    if not scale > 0:
        raise ConfigError(f"normalisation scale must be positive, got {scale}.")
    if hasattr(counts, "detach"):  # torch tensor
        import torch

        t = torch.as_tensor(totals, dtype=counts.dtype, device=counts.device)
        t = t.reshape(*counts.shape[:-1], 1)
        factor = (scale / t.clamp_min(MIN_TOTAL)).masked_fill(t <= 0, 0.0)
        if out is not None:
            return torch.mul(counts, factor, out=out).log1p_()
        return torch.log1p(counts * factor)
    if out is not None:
        raise TypeError("normalize_counts takes out= for torch tensors only.")
    if not sp.issparse(counts):
        counts = np.asarray(counts, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64).reshape(counts.shape[:-1])
    factor = np.asarray(scale / np.maximum(totals, MIN_TOTAL))  # a NaN total stays NaN
    factor[totals <= 0] = 0.0
    if sp.issparse(counts):
        out = sp.csr_matrix(sp.diags(factor) @ sp.csr_matrix(counts, dtype=np.float64))
        out.data = np.log1p(out.data)
        return out.astype(np.float32)
    return np.log1p(counts * factor[..., None]).astype(np.float32)


_ZERO_TOTAL_WARNED: set[tuple[str, int, int]] = set()


def normalize(
    adata: ad.AnnData, genes: Sequence[str] | None = None, *, scale: float = DEFAULT_SCALE
) -> ad.AnnData:
    """Normalise raw counts to ``log1p(counts / total * scale)``, optionally on a gene subset.

    Args:
        adata: units with raw counts in ``X`` (or ``layers["counts"]``, e.g. already normalised).
        genes: genes to keep, in this order; default all.
        scale: fixed scale.

    Returns:
        A new ``AnnData``: ``X`` float32 normalised (dense), ``layers["counts"]`` raw counts,
        ``obs["total_counts"]`` over all genes of the input, ``uns["hexpress"]["normalization"]``
        = ``{"method": "log1p_total", "scale", "total": "all genes", "genes": n}``.
    """
    totals = total_counts(adata)  # before subsetting: totals are over all genes
    out = adata.copy()
    out.X = _raw(adata).copy()
    if K.COUNTS in out.layers:
        del out.layers[K.COUNTS]
    if genes is not None:
        genes = list(genes)
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise ConfigError(
                f"{len(missing)} gene(s) not in the data: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else "")
                + ". Choose genes with select_genes on the same samples."
            )
        out = out[:, genes].copy()
    counts = sp.csr_matrix(out.X, dtype=np.float32)
    zero = totals <= 0
    if zero.any():
        # the same sample is normalised at every scale and fold: say it once per sample
        key = (str(adata.uns.get(K.UNS, {}).get("sample_id", "")), int(zero.sum()), len(totals))
        level = logging.DEBUG if key in _ZERO_TOTAL_WARNED else logging.WARNING
        _ZERO_TOTAL_WARNED.add(key)
        log.log(
            level,
            "%d of %d unit(s) have total count 0; their normalised expression is set to 0",
            int(zero.sum()),
            len(totals),
        )
    out.layers[K.COUNTS] = counts
    out.obs[TOTAL_COUNTS] = totals
    dense = counts.toarray()
    out.X = normalize_counts(dense, totals, scale)
    uns = dict(out.uns.get(K.UNS, {}))
    uns[K.NORMALIZATION] = {
        "method": "log1p_total",
        "scale": float(scale),
        "total": "all genes",
        "genes": int(out.n_vars),
    }
    out.uns[K.UNS] = uns
    log.info("normalised %d units x %d genes: log1p(counts / total * %g)", *out.shape, scale)
    return out


# -- gene selection -----------------------------------------------------------------------------
def _as_adatas(samples) -> list[ad.AnnData]:
    if isinstance(samples, ad.AnnData) or hasattr(samples, "adata"):
        samples = [samples]
    return [s.adata if hasattr(s, "adata") else s for s in samples]


def _common_genes(adatas: list[ad.AnnData]) -> list[str]:
    common = list(adatas[0].var_names)
    for a in adatas[1:]:
        present = set(a.var_names)
        common = [g for g in common if g in present]
    return common


def _scaled(adatas: list[ad.AnnData], genes: list[str], scale: float) -> sp.csr_matrix:
    blocks = []
    for a in adatas:
        totals = total_counts(a)
        raw = _raw(a)
        idx = a.var_names.get_indexer(genes)
        X = sp.csr_matrix(raw, dtype=np.float64)[:, idx]
        factor = np.divide(scale, totals, out=np.zeros_like(totals), where=totals > 0)
        blocks.append(sp.csr_matrix(sp.diags(factor) @ X))
    return sp.vstack(blocks).tocsr()


def _hvg_scores(Xs: sp.csr_matrix, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    n = Xs.shape[0]
    mean = np.asarray(Xs.mean(axis=0)).ravel()
    mean_sq = np.asarray(Xs.multiply(Xs).mean(axis=0)).ravel()
    var = (mean_sq - mean**2) * (n / max(n - 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(np.where(mean > 0, var / mean, np.nan))
    log_mean = np.log1p(mean)
    bins = pd.cut(log_mean, bins=n_bins, labels=False)
    frame = pd.DataFrame({"bin": bins, "disp": disp})
    grp = frame.groupby("bin")["disp"]
    mu, sd = grp.transform("mean").to_numpy(), grp.transform("std").to_numpy()
    alone = grp.transform("count").to_numpy() == 1
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(np.isfinite(sd) & (sd > 0), (disp - mu) / sd, 0.0)
    z[alone] = 1.0
    z[~np.isfinite(disp)] = -np.inf  # unexpressed genes are never chosen
    return z, mean


def select_genes(
    samples,
    n: int = 250,
    method: str = "heg",
    genes: Sequence[str] | None = None,
    *,
    scale: float = DEFAULT_SCALE,
    strict: bool = True,
) -> list[str]:
    """Choose the genes to model, from the **training** samples only.

    Args:
        samples: ``AnnData`` / :class:`~hexpress.data.Sample` objects, or one of them.
        n: number of genes for ``heg`` / ``hvg`` (fewer when fewer genes are eligible).
        method: ``"heg"`` or ``"hvg"`` (see the module docstring); ignored when ``genes`` given.
        genes: an explicit gene list (e.g. from :func:`read_gene_list`), kept in its order.
        scale: normalisation scale for the statistics.
        strict: with ``genes``, raise on genes missing from any sample (else warn and drop).

    Returns:
        Gene names, present in every sample.
    """
    adatas = _as_adatas(samples)
    if not adatas:
        raise ConfigError("select_genes needs at least one training sample.")
    common = _common_genes(adatas)
    if genes is not None:
        genes = list(dict.fromkeys(str(g) for g in genes))
        present = set(common)
        missing = [g for g in genes if g not in present]
        if missing:
            msg = (
                f"{len(missing)} of {len(genes)} requested gene(s) are not measured in every "
                f"sample: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
            )
            if strict or len(missing) == len(genes):
                raise ConfigError(msg + ". Fix the list or pass strict=False to drop them.")
            log.warning("%s; they are dropped", msg)
        return [g for g in genes if g in present]
    if method not in GENE_METHODS:
        raise ConfigError(f"Unknown gene selection method {method!r}; valid: {GENE_METHODS}.")
    if n <= 0:
        raise ConfigError(f"n must be a positive number of genes, got {n}.")
    Xs = _scaled(adatas, common, scale)
    if method == "heg":
        score = np.asarray(Xs.mean(axis=0)).ravel()
    else:
        score, _ = _hvg_scores(Xs)
    chosen = top_genes(score, common, n)
    if len(chosen) < n:
        log.warning("only %d eligible genes for %s (asked %d)", len(chosen), method, n)
    log.info(
        "selected %d genes by %s from %d samples (%d spots)",
        len(chosen),
        method,
        len(adatas),
        Xs.shape[0],
    )
    return chosen


def top_genes(score, genes: Sequence[str], n: int) -> list[str]:
    """The ``n`` genes of highest ``score``, ties broken by name; non-finite scores never chosen.

    The ranking step of :func:`select_genes` (``score`` = mean normalised expression for HEG,
    normalised dispersion for HVG), usable on a score computed elsewhere.

    Args:
        score: ``(n_genes,)`` values, e.g. mean expression on the **training** sections.
        genes: the matching gene names.
        n: how many (fewer when fewer scores are finite).
    """
    score = np.asarray(score, dtype=np.float64).ravel()
    names = np.asarray([str(g) for g in genes])
    if score.shape != names.shape:
        raise DataMismatchError(f"{score.size} scores for {names.size} gene names.")
    if n <= 0:
        raise ConfigError(f"n must be a positive number of genes, got {n}.")
    ok = np.isfinite(score)
    order = np.lexsort((names, -np.where(ok, score, -np.inf)))  # descending; ties by name
    return [str(names[i]) for i in order[:n] if ok[i]]


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file: ``name<TAB>description<TAB>gene...`` per line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Gene set file not found: {path}.")
    sets: dict[str, list[str]] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            raise FormatError(
                f"{path}, line {i}: a GMT line is name<TAB>description<TAB>gene..., got "
                f"{len(parts)} field(s)."
            )
        sets[parts[0]] = [g.strip() for g in parts[2:] if g.strip()]
    if not sets:
        raise FormatError(f"{path}: no gene set found.")
    return sets


def read_gene_list(path: str | Path, gene_set: str | None = None) -> list[str]:
    """Genes from a plain text file (one per line) or a GMT file (``.gmt``).

    Args:
        path: the file.
        gene_set: for GMT, the set to read; default the union of all sets, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Gene list not found: {path}.")
    if path.suffix.lower() == ".gmt":
        sets = read_gmt(path)
        if gene_set is not None:
            if gene_set not in sets:
                raise ConfigError(f"{path}: no gene set {gene_set!r}; sets: {', '.join(sets)}.")
            return list(dict.fromkeys(sets[gene_set]))
        return list(dict.fromkeys(g for s in sets.values() for g in s))
    genes = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            genes.append(line.split()[0])
    if not genes:
        raise FormatError(f"{path}: no gene names found (one gene per line expected).")
    return list(dict.fromkeys(genes))


# -- splits -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One train/test partition of sample ids (``val``: optional part of the training side)."""

    name: str
    train: list[str]
    test: list[str]
    val: list[str] = field(default_factory=list)

    def __post_init__(self):
        overlap = (set(self.train) | set(self.val)) & set(self.test)
        if overlap:
            raise ConfigError(
                f"split {self.name!r}: sample(s) {sorted(overlap)} are both trained and tested on."
            )
        if set(self.train) & set(self.val):
            raise ConfigError(
                f"split {self.name!r}: {sorted(set(self.train) & set(self.val))} in train and val."
            )
        if not self.train or not self.test:
            raise ConfigError(f"split {self.name!r} needs at least one train and one test sample.")


def _patients(samples) -> dict[str, str]:
    if isinstance(samples, Mapping):
        return {str(k): str(v) for k, v in samples.items()}
    out = {}
    for s in samples:
        if hasattr(s, "sample_id"):
            sid, pid = s.sample_id, s.patient_id
        elif isinstance(s, ad.AnnData):
            uns = s.uns.get(K.UNS, {})
            sid, pid = uns.get("sample_id"), uns.get("patient_id")
        else:
            sid, pid = s
        if str(sid) in out:
            raise ConfigError(f"sample id {sid!r} appears twice.")
        out[str(sid)] = str(pid)
    return out


def patient_splits(samples) -> list[Split]:
    """Leave-one-patient-out splits: each patient's samples are the test set once.

    Args:
        samples: :class:`~hexpress.data.Sample` objects, ``(sample_id, patient_id)`` pairs or a
            mapping sample id -> patient id.

    Returns:
        One :class:`Split` per patient, named ``"patient_<id>"``, sorted by patient id; sample
        ids sorted within each part (deterministic).
    """
    by_sample = _patients(samples)
    patients = sorted(set(by_sample.values()))
    if len(patients) < 2:
        raise ConfigError(
            f"leave-one-patient-out needs samples from at least 2 patients, got {patients}. "
            "Use a split file to hold out sections of one patient instead."
        )
    return [
        Split(
            name=f"patient_{p}",
            train=sorted(s for s, q in by_sample.items() if q != p),
            test=sorted(s for s, q in by_sample.items() if q == p),
        )
        for p in patients
    ]


def _check_known(splits: list[Split], known: Iterable[str] | None, path: Path) -> None:
    if known is None:
        return
    known = set(map(str, known))
    for s in splits:
        unknown = sorted(set(s.train + s.test + s.val) - known)
        if unknown:
            raise ConfigError(
                f"{path}: split {s.name!r} names unknown sample(s) {unknown}; known: "
                f"{', '.join(sorted(known))}."
            )


def read_split_file(path: str | Path, sample_ids: Iterable[str] | None = None) -> list[Split]:
    """Read splits from YAML (``.yaml``/``.yml``) or TSV (see the module docstring).

    Args:
        path: the split file.
        sample_ids: when given, every id in the file must be one of them.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Split file not found: {path}.")
    splits: list[Split] = []
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise FormatError(f"{path}: invalid YAML: {e}.") from e
        items = doc.get("splits") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise FormatError(
                f"{path}: expected a top-level 'splits:' list of {{name, train, test[, val]}}."
            )
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "train" not in item or "test" not in item:
                raise FormatError(f"{path}: split #{i + 1} needs 'train' and 'test' lists.")
            splits.append(
                Split(
                    name=str(item.get("name", f"split_{i}")),
                    train=[str(x) for x in item["train"]],
                    test=[str(x) for x in item["test"]],
                    val=[str(x) for x in item.get("val", []) or []],
                )
            )
    else:
        table = pd.read_csv(path, sep="\t", dtype=str, comment="#")
        need = {"split", "sample", "role"}
        if not need <= set(table.columns):
            raise FormatError(
                f"{path}: a TSV split file needs the columns split, sample, role; got "
                f"{list(table.columns)}."
            )
        bad = sorted(set(table["role"]) - {"train", "test", "val"})
        if bad:
            raise FormatError(f"{path}: unknown role(s) {bad}; use train, test or val.")
        for name, g in table.groupby("split", sort=False):
            parts = {r: g.loc[g["role"] == r, "sample"].tolist() for r in ("train", "test", "val")}
            splits.append(Split(name=str(name), **parts))
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise FormatError(f"{path}: split names must be unique, got {names}.")
    _check_known(splits, sample_ids, path)
    return splits
