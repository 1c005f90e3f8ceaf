"""Per-cell expression (Gamma-Poisson) and transcripts placed inside each cell's footprint.

A cell's mean of a structured gene ``g`` is ``library_c * W * softmax_g(log w_g + effect_cg)``
over the structured genes (``W`` their total baseline share), where the effect depends on the
gene's kind (see :data:`hexpress.sim.config.GENE_KINDS`): the cell's type, its
distance to the nearest vessel, its domain or a hidden smooth field; housekeeping and noise
genes get the fixed share ``library_c * w_g``. Counts are
Poisson with a Gamma-distributed rate (mean ``mu``, variance ``mu + dispersion * mu²``), and
every count is one transcript drawn uniformly inside the cell's footprint ellipse, so a
footprint's count of a gene is, exactly, the number of its transcripts inside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress.sim.cells import TYPE_PARAMS
from hexpress.sim.config import CELL_TYPES, DOMAINS, GENE_KINDS, SimConfig

__all__ = ["make_gene_panel", "cell_means", "sample_counts", "place_transcripts"]

_PREFIX = {
    "program": "PRG",
    "gradient": "GRD",
    "domain": "DOM",
    "hidden_field": "HID",
    "housekeeping": "HKG",
    "noise": "NOI",
}


def make_gene_panel(config: SimConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The gene panel and what drives each gene.

    Returns:
        ``gene_info``: one row per gene, index = gene name; columns ``kind``, ``cell_type``
        (program genes: the type it marks), ``secondary_type``, ``domain`` (domain genes),
        ``effect`` (log fold change or field coefficient), ``weight`` (baseline share of the
        library).
    """
    n = config.n_genes
    counts = {k: int(math.floor(config.gene_fractions[k] * n)) for k in GENE_KINDS}
    counts["program"] += n - sum(counts.values())
    kinds = np.concatenate([[k] * counts[k] for k in GENE_KINDS])
    names, cell_type, second, domain, effect = [], [], [], [], []
    tissue_domains = [d for d in DOMAINS if d != "glass"]
    per_kind = dict.fromkeys(GENE_KINDS, 0)
    for k in kinds:
        i = per_kind[k]
        per_kind[k] += 1
        ct = sec = dom = ""
        eff = 0.0
        if k == "program":
            ct = CELL_TYPES[i % len(CELL_TYPES)]
            eff = config.program_log_fold * rng.uniform(0.6, 1.4)
            if rng.random() < 0.3:
                sec = CELL_TYPES[int(rng.integers(len(CELL_TYPES)))]
                sec = "" if sec == ct else sec
            names.append(f"{_PREFIX[k]}_{ct[:4].upper()}_{i + 1:03d}")
        elif k == "gradient":
            eff = float(rng.choice([-1, 1])) * rng.uniform(1.0, 2.5)
            names.append(f"{_PREFIX[k]}_VESSEL_{i + 1:03d}")
        elif k == "domain":
            dom = tissue_domains[i % len(tissue_domains)]
            eff = rng.uniform(1.0, 2.5)
            names.append(f"{_PREFIX[k]}_{dom[:4].upper()}_{i + 1:03d}")
        elif k == "hidden_field":
            eff = float(rng.choice([-1, 1])) * rng.uniform(0.8, 1.6)
            names.append(f"{_PREFIX[k]}_{i + 1:03d}")
        else:
            names.append(f"{_PREFIX[k]}_{i + 1:03d}")
        cell_type.append(ct)
        second.append(sec)
        domain.append(dom)
        effect.append(eff)
    weight = np.exp(rng.normal(0.0, 1.1, n))
    return pd.DataFrame(
        {
            "kind": kinds,
            "cell_type": cell_type,
            "secondary_type": second,
            "domain": domain,
            "effect": effect,
            "weight": weight / weight.sum(),
        },
        index=pd.Index(names, name="gene"),
    )


def cell_means(
    cells: pd.DataFrame, genes: pd.DataFrame, config: SimConfig, rng: np.random.Generator
) -> np.ndarray:
    """``(n_cells, n_genes)`` float32 expected counts."""
    n = len(cells)
    kind = genes["kind"].to_numpy()
    eff = genes["effect"].to_numpy(dtype=np.float32)
    logits = np.broadcast_to(np.log(genes["weight"].to_numpy(np.float32)), (n, len(genes))).copy()
    type_of = cells["type"].astype(str).to_numpy()
    for j in np.flatnonzero(kind == "program"):
        ct, sec = genes["cell_type"].iat[j], genes["secondary_type"].iat[j]
        logits[type_of == ct, j] += eff[j]
        if sec:
            logits[type_of == sec, j] += 0.5 * eff[j]
    near = np.exp(-cells["dist_vessel_um"].to_numpy(np.float32) / config.vessel_decay_um)
    grad = kind == "gradient"
    logits[:, grad] += near[:, None] * eff[grad][None, :]
    dom_of = cells["domain"].astype(str).to_numpy()
    for j in np.flatnonzero(kind == "domain"):
        logits[dom_of == genes["domain"].iat[j], j] += eff[j]
    hid = kind == "hidden_field"
    logits[:, hid] += cells["hidden_field"].to_numpy(np.float32)[:, None] * eff[hid][None, :]
    # structured genes share their part of the library among themselves; housekeeping and noise
    # genes keep a fixed share, so normalising by the total does not give them structure
    w = genes["weight"].to_numpy(np.float32)
    structured = np.isin(kind, ["program", "gradient", "domain", "hidden_field"])
    p = np.broadcast_to(w, (n, len(genes))).copy()
    ls = logits[:, structured]
    ls -= ls.max(1, keepdims=True)
    e = np.exp(ls)
    p[:, structured] = e / e.sum(1, keepdims=True) * w[structured].sum()
    rna = np.array([TYPE_PARAMS[c]["rna"] for c in CELL_TYPES], np.float32)
    library = (
        config.mean_counts_per_cell
        * rna[cells["type_id"].to_numpy()]
        * np.exp(rng.normal(-0.03, 0.25, n)).astype(np.float32)
    )
    return (p * library[:, None]).astype(np.float32)


def sample_counts(mu: np.ndarray, dispersion: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Gamma-Poisson counts: ``(n_cells, n_genes)`` int32 CSR."""
    shape = 1.0 / dispersion
    rate = mu * rng.gamma(shape, 1.0 / shape, size=mu.shape).astype(np.float32)
    return sp.csr_matrix(rng.poisson(rate).astype(np.int32))


def place_transcripts(
    cells: pd.DataFrame, counts: sp.csr_matrix, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One transcript per count, uniform inside its cell's footprint ellipse.

    Returns:
        ``x_um``, ``y_um`` (float64), ``gene`` (int32 column index), ``cell`` (int32 row index),
        ``in_nucleus`` (bool), ordered by cell then gene.
    """
    counts = counts.tocsr()
    counts.sort_indices()
    per_entry_cell = np.repeat(np.arange(counts.shape[0], dtype=np.int32), np.diff(counts.indptr))
    cell = np.repeat(per_entry_cell, counts.data)
    gene = np.repeat(counts.indices.astype(np.int32), counts.data)
    m = len(cell)
    r = np.sqrt(rng.random(m)) * 0.999  # strictly inside: a footprint test never ties
    phi = rng.random(m) * (2 * math.pi)
    a = cells["cell_a_um"].to_numpy()[cell]
    b = cells["cell_b_um"].to_numpy()[cell]
    th = cells["angle"].to_numpy()[cell]
    u, v = a * r * np.cos(phi), b * r * np.sin(phi)
    c, s = np.cos(th), np.sin(th)
    x = cells["x_um"].to_numpy()[cell] + u * c - v * s
    y = cells["y_um"].to_numpy()[cell] + u * s + v * c
    dx = x - cells["nucleus_x_um"].to_numpy()[cell]
    dy = y - cells["nucleus_y_um"].to_numpy()[cell]
    nu, nv = dx * c + dy * s, -dx * s + dy * c
    na = cells["nucleus_a_um"].to_numpy()[cell]
    nb = cells["nucleus_b_um"].to_numpy()[cell]
    in_nucleus = (nu / na) ** 2 + (nv / nb) ** 2 < 1
    return {"x_um": x, "y_um": y, "gene": gene, "cell": cell, "in_nucleus": in_nucleus}
