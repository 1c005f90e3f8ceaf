"""Per-gene PCC of a synthetic benchmark by the simulator's gene kind, and how a spot's depth
shows through log normalisation.

    .venv/bin/python benchmarks/synthetic_by_gene_kind.py [runs/bench_synthetic] \
        [--spots data/synth_test/legacy_st --section SIM1]

Reads ``per_gene.json`` of a finished ``hexpress bench configs/bench_synthetic.yaml`` run and
prints one JSON object:

- ``by_kind``: per gene kind (the name prefix the simulator gives: ``PRG``, ``DOM``, ``GRD``,
  ``HID``, ``HKG``, ``NOI``) the number of genes, the mean Moran's I of the measured expression
  and each method's mean per-gene PCC on the held-out section;
- ``depth``: on the measured spots (``--spots``), the range of total counts per spot and, per
  kind, the median correlation of a gene's ``log1p(count / total * 1e4)`` with log total counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from hexpress.io import read_sample


def _by_kind(values: pd.Series) -> dict:
    return {k: round(float(v), 3) for k, v in values.groupby(values.index.str[:3]).mean().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", nargs="?", default="runs/bench_synthetic")
    ap.add_argument("--spots", default="data/synth_test/legacy_st")
    ap.add_argument("--section", default="SIM1")
    args = ap.parse_args()
    path = Path(args.bench_dir) / "per_gene.json"
    if not path.is_file():
        raise SystemExit(
            f"{path} not found: run `hexpress bench configs/bench_synthetic.yaml` first."
        )
    doc = json.loads(path.read_text())
    out: dict = {"bench_dir": args.bench_dir, "by_kind": {}}
    section = None
    for method, m in doc["methods"].items():
        section, sec = next(iter(m["sections"].items()))
        pcc = pd.Series(sec["pcc"], index=sec["genes"], dtype=float)
        if np.isfinite(pcc).any():
            out["by_kind"][f"pcc {method}"] = _by_kind(pcc)
    morans = pd.Series(doc["morans_i"][section], dtype=float)
    out["by_kind"]["morans_i"] = _by_kind(morans)
    out["by_kind"]["n_genes"] = morans.groupby(morans.index.str[:3]).size().to_dict()
    out["section"] = section

    units = read_sample(args.spots, format="legacy-st", section=args.section).adata
    X = units.X.toarray() if hasattr(units.X, "toarray") else np.asarray(units.X)
    X = X.astype(np.float64)
    total = X.sum(1)
    X, total = X[total > 0], total[total > 0]
    norm = np.log1p(X / total[:, None] * 1e4)
    genes = pd.Index(units.var_names)
    r = pd.Series(
        [np.corrcoef(norm[:, j], np.log(total))[0, 1] if norm[:, j].std() > 0 else np.nan
         for j in range(len(genes))],
        index=genes,
    )  # fmt: skip
    out["depth"] = {
        "spots": int(len(total)),
        "total_counts_min_max": [int(total.min()), int(total.max())],
        "median_r_norm_vs_log_total": {
            k: round(float(v), 3) for k, v in r.groupby(genes.str[:3]).median().items()
        },
    }
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
