"""Moran's I of the simulated genes, and how well a colour/texture feature model predicts them.

    .venv/bin/python benchmarks/sim_predictability.py [--size-mm 2] [--seed 0]

Simulates one slide, counts its transcripts in Visium 55 µm spots (spots with >= 200 counts),
and prints one JSON object: the distribution of Moran's I (6 nearest neighbours, log-normalised
expression, genes with at least 0.2 counts per spot) over all genes and per gene kind, and the
median held-out correlation of a ridge model on per-spot colour/texture features per gene kind
(genes with >= 3 counts per spot), so the benchmark can tell models apart.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hexpress.sim import SimConfig, simulate
from hexpress.sim import binning as B
from hexpress.sim.diagnostics import feature_predictability, log_normalize, morans_i, spot_features


def _quantiles(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(v.size), **{k: round(float(x), 3) for k, x in zip(
        ("min", "q25", "median", "q75", "max"), q, strict=True)}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mm", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    slide = simulate(SimConfig(size_mm=args.size_mm, seed=args.seed))
    grid = B.visium_grid(slide.width * slide.mpp, slide.height * slide.mpp)
    tx = slide.transcripts
    unit = B.assign_discs(grid, tx["x_um"].to_numpy(), tx["y_um"].to_numpy())
    counts = B.count_matrix(unit, tx["gene"].to_numpy(), len(grid), len(slide.genes))
    keep = np.asarray(counts.sum(1)).ravel() >= 200
    counts = counts[keep]
    centres = np.stack([grid.x_um, grid.y_um], 1)[keep] / slide.mpp
    Y = log_normalize(counts)
    kind = slide.gene_info["kind"].to_numpy()
    per_spot = np.asarray(counts.sum(0)).ravel() / len(centres)
    mi = morans_i(Y, centres)
    ok = (per_spot >= 0.2) & np.isfinite(mi)
    r = feature_predictability(spot_features(slide.image, centres, grid.diameter_um / slide.mpp), Y,
                               centres)  # fmt: skip
    well = ok & (per_spot >= 3)
    out = {
        "size_mm": args.size_mm,
        "seed": args.seed,
        "n_spots": int(len(centres)),
        "n_genes": int(len(kind)),
        "morans_i_all": _quantiles(mi[ok]),
        "morans_i_by_kind": {k: _quantiles(mi[ok & (kind == k)]) for k in np.unique(kind)},
        "feature_model_median_r_by_kind": {
            k: round(float(np.nanmedian(r[well & (kind == k)])), 3)
            for k in np.unique(kind)
            if (well & (kind == k)).any()
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
