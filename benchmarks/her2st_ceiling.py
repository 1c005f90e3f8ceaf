"""The neighbour ceiling of every HER2ST section, on the genes of its benchmark fold.

    PYTHONPATH=src .venv/bin/python benchmarks/her2st_ceiling.py [configs/pixnet_her2st.yaml]

For each split of the recipe's split file (``test_A``, ``test_C``) the genes are chosen on the
split's training sections exactly as training chooses them (``data.genes``: 250 HEG), and each
held-out section's spots are predicted from the measured expression of their lattice neighbours
(:mod:`hexpress.eval.ceiling`): the first ring (4 on the legacy ST square grid) and the first
ring with diagonals (8). Prints one JSON object: per section the PCC@M, PCC@S, genes with
PCC >= 0.30, the lattice pitch in µm and the mean number of neighbours. Reads only spot counts
and positions (no image, no training); a few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace

from hexpress import _keys as K
from hexpress.data import normalize
from hexpress.eval.ceiling import ceiling_metrics
from hexpress.eval.metrics import count_column
from hexpress.train.config import load_config
from hexpress.train.data import load_training_data, read_samples, resolve_split

RINGS = {"first ring": 1.2, "with diagonals": 1.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="configs/pixnet_her2st.yaml")
    ap.add_argument("--splits", nargs="*", default=["test_A", "test_C"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_config(args.recipe).data
    out: dict = {"recipe": args.recipe, "genes": base.genes.n, "sections": {}}
    for split in args.splits:
        data = resolve_split(replace(base, split=split, val_fraction=0.0))
        genes = load_training_data(data).genes
        for sid, (sample,) in read_samples(data, data.test).items():
            truth = normalize(sample.adata, scale=data.norm_scale)
            mpp = float(sample.adata.uns[K.UNS]["mpp"])
            row: dict = {"split": split, "n_spots": int(truth.n_obs)}
            for label, ring in RINGS.items():
                m, res = ceiling_metrics(truth, genes, section=sid, neighbours="lattice", ring=ring)
                s = m.summary()
                row[label] = {
                    "PCC@M": round(s["PCC@M"], 4),
                    "PCC@S": round(s["PCC@S"], 4),
                    count_column(): int(s[count_column()]),
                    "mean_neighbours": round(res.mean_neighbours, 2),
                    "n_isolated": res.n_isolated,
                }
                row["pitch_um"] = round(res.pitch * mpp, 1)
            out["sections"][sid] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
