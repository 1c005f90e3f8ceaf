"""Gene sets to evaluate on: highly expressed (HEG), highly variable (HVG) and user sets.

HEG and HVG are chosen on **training** data only (a set picked on the test sections would select
on the answer). User sets come from plain text (one gene per line) or GMT files, e.g. immune or
disease pathway sets as in PRESTIGE-ST; parsing is :func:`hexpress.data.preprocess.read_gmt` /
:func:`~hexpress.data.preprocess.read_gene_list`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from hexpress.data.preprocess import read_gene_list, read_gmt, select_genes
from hexpress.data.preprocess import top_genes as heg_genes  # HEG from precomputed means
from hexpress.errors import ConfigError
from hexpress.eval.metrics import PCC_THRESHOLD, SectionMetrics, count_column, summarize_pcc

__all__ = [
    "evaluate_gene_sets",
    "heg_genes",
    "load_gene_sets",
    "training_gene_sets",
]

log = logging.getLogger(__name__)


def training_gene_sets(
    train, genes: Sequence[str] | None = None, *, n_heg: int = 50, n_hvg: int = 50
) -> dict[str, list[str]]:
    """``{"HEG-<n>": ..., "HVG-<n>": ...}`` chosen on training samples, within ``genes``.

    Args:
        train: training ``AnnData`` objects (raw counts) or :class:`~hexpress.data.Sample` objects.
        genes: restrict to these (the evaluated genes); default every common gene.
        n_heg, n_hvg: set sizes (0 leaves a set out).
    """
    if isinstance(train, ad.AnnData) or hasattr(train, "adata"):
        train = [train]
    adatas = [t.adata if hasattr(t, "adata") else t for t in train]
    if genes is not None:
        keep = list(genes)
        adatas = [a[:, [g for g in keep if g in a.var_names]] for a in adatas]
    sets = {}
    if n_heg:
        sets[f"HEG-{n_heg}"] = select_genes(adatas, n_heg, "heg")
    if n_hvg:
        sets[f"HVG-{n_hvg}"] = select_genes(adatas, n_hvg, "hvg")
    return sets


def load_gene_sets(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Read gene sets: every set of a ``.gmt`` file, or one set per plain text file (named by the
    file's stem). A name seen twice raises :class:`~hexpress.errors.ConfigError`."""
    sets: dict[str, list[str]] = {}
    for path in paths:
        path = Path(path)
        new = read_gmt(path) if path.suffix.lower() == ".gmt" else {path.stem: read_gene_list(path)}
        for name, genes in new.items():
            if name in sets:
                raise ConfigError(
                    f"gene set {name!r} from {path} is defined twice; rename one of them."
                )
            sets[name] = list(dict.fromkeys(genes))
    return sets


def _as_series(pcc) -> pd.Series:
    if isinstance(pcc, SectionMetrics):
        return pd.Series(pcc.pcc, index=pcc.genes, dtype=np.float64)
    if isinstance(pcc, pd.Series):
        return pcc.astype(np.float64)
    if isinstance(pcc, Mapping):
        return pd.Series(dict(pcc), dtype=np.float64)
    raise ConfigError("pcc must be SectionMetrics, a pandas Series or a mapping gene -> PCC.")


def evaluate_gene_sets(
    pcc,
    sets: Mapping[str, Sequence[str]],
    *,
    threshold: float = PCC_THRESHOLD,
    include_all: bool = True,
) -> pd.DataFrame:
    """PCC summaries restricted to each gene set.

    Args:
        pcc: per-gene PCC: :class:`SectionMetrics`, a ``pandas.Series`` indexed by gene, or a
            mapping gene -> PCC (``NaN`` = undefined).
        sets: set name -> genes. Genes of a set that were not evaluated are logged and ignored.
        threshold: ``PCC >=`` counting rule.
        include_all: add a first row ``"all"`` with every evaluated gene.

    Returns:
        One row per set: ``gene_set, n_in_set, n_evaluated, n_undefined, PCC@F, PCC@S, PCC@M,
        n_genes_PCC>=thr``. A set with no evaluated gene keeps its row with ``NaN`` summaries.
    """
    series = _as_series(pcc)
    items = ([("all", list(series.index))] if include_all else []) + list(sets.items())
    rows = []
    for name, genes in items:
        genes = list(dict.fromkeys(str(g) for g in genes))
        present = [g for g in genes if g in series.index]
        if len(present) < len(genes):
            log.info(
                "gene set %s: %d of %d gene(s) were not evaluated and are ignored",
                name,
                len(genes) - len(present),
                len(genes),
            )
        if not present:
            log.warning("gene set %s: none of its %d genes was evaluated", name, len(genes))
        s = summarize_pcc(series.loc[present].to_numpy(), threshold)
        rows.append(
            {
                "gene_set": name,
                "n_in_set": len(genes),
                "n_evaluated": len(present),
                "n_undefined": s["n_undefined"],
                "PCC@F": s["PCC@F"],
                "PCC@S": s["PCC@S"],
                "PCC@M": s["PCC@M"],
                count_column(threshold): s[count_column(threshold)] if present else math.nan,
            }
        )
    return pd.DataFrame(rows)
