"""Builders of tiny on-disk folders in the real Space Ranger, Visium HD, Xenium and legacy ST
layouts, with known truth, for reader round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from hexpress.io.tenx_h5 import write_10x_h5


@dataclass
class Truth:
    root: Path
    barcodes: list[str]
    genes: list[str]
    counts: np.ndarray  # (n, g) for the kept units, in barcode order
    xy_fullres: np.ndarray  # (n, 2) x, y full-resolution px
    mpp_fullres: float
    extra: dict


def _png(path: Path, w: int, h: int, value=(200, 150, 180)) -> None:
    rng = np.random.default_rng(1)
    arr = np.clip(rng.normal(value, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def make_visium(
    root: Path,
    *,
    n: int = 12,
    g: int = 6,
    v1: bool = False,
    mtx: bool = False,
    off_tissue: int = 3,
    fullres: tuple[int, int] = (4000, 3000),
    hires_scalef: float = 0.25,
    mpp_fullres: float = 0.5,
    seed: int = 0,
) -> Truth:
    """A Space Ranger ``outs/`` folder: ``n`` in-tissue spots with counts + off-tissue spots."""
    rng = np.random.default_rng(seed)
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    total = n + off_tissue
    barcodes = [f"AAAC{i:06d}-1" for i in range(total)]
    genes = [f"Gene{j}" for j in range(g)]
    counts = rng.poisson(5, size=(total, g)).astype(np.int64)
    W, H = fullres
    # the Visium lattice: array_col steps 2 per spot (50 µm), rows 50 * sqrt(3) µm apart, and
    # array_row + array_col even; Space Ranger 1.x writes whole pixels
    array_row = np.arange(total) // 8
    array_col = 2 * (np.arange(total) % 8) + array_row % 2
    xy = np.stack(
        [300 + array_col * 50 / mpp_fullres, 250 + array_row * 50 * np.sqrt(3) / mpp_fullres], 1
    )
    xy = np.round(xy)
    assert xy[:, 0].max() < W and xy[:, 1].max() < H
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": [1] * n + [0] * off_tissue,
            "array_row": array_row,
            "array_col": array_col,
            "pxl_row_in_fullres": xy[:, 1].astype(int),
            "pxl_col_in_fullres": xy[:, 0].astype(int),
        }
    )
    if v1:
        pos.to_csv(outs / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    sf = {  # spot_diameter_fullres spans a theoretical 65 µm spot (Space Ranger docs)
        "spot_diameter_fullres": 65.0 / mpp_fullres,
        "tissue_hires_scalef": hires_scalef,
        "fiducial_diameter_fullres": 65.0 * 1.6154 / mpp_fullres,
        "tissue_lowres_scalef": hires_scalef * 0.3,
    }
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    _png(
        outs / "spatial" / "tissue_hires_image.png",
        round(W * hires_scalef),
        round(H * hires_scalef),
    )
    _png(
        outs / "spatial" / "tissue_lowres_image.png",
        round(W * hires_scalef * 0.3),
        round(H * hires_scalef * 0.3),
    )
    if mtx:
        d = outs / "filtered_feature_bc_matrix"
        d.mkdir()
        (d / "barcodes.tsv").write_text("\n".join(barcodes[:n]) + "\n")
        (d / "features.tsv").write_text(
            "".join(f"ENSG{j:05d}\t{gn}\tGene Expression\n" for j, gn in enumerate(genes))
        )
        import scipy.io

        scipy.io.mmwrite(d / "matrix.mtx", sp.coo_matrix(counts[:n].T))
    else:
        write_10x_h5(
            outs / "filtered_feature_bc_matrix.h5",
            sp.csr_matrix(counts[:n]),
            barcodes[:n],
            genes,
            gene_ids=[f"ENSG{j:05d}" for j in range(g)],
        )
    return Truth(outs, barcodes[:n], genes, counts[:n], xy[:n], mpp_fullres, {"sf": sf})


def make_visium_hd(
    root: Path, *, bin_um: int = 8, n_side: int = 5, g: int = 4, mpp_fullres: float = 0.25
) -> Truth:
    """``outs/binned_outputs/square_XXXum/`` with a full grid of bins, the last one off tissue."""
    rng = np.random.default_rng(3)
    outs = root / "outs"
    sq = outs / "binned_outputs" / f"square_{bin_um:03d}um"
    (sq / "spatial").mkdir(parents=True)
    (outs / "spatial").mkdir(parents=True)
    side_px = bin_um / mpp_fullres
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    x = 100 + (cols + 0.5) * side_px
    y = 50 + (rows + 0.5) * side_px
    in_tissue = np.ones(len(rows), dtype=int)
    in_tissue[-1] = 0
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": y,
            "pxl_col_in_fullres": x,
        }
    ).to_parquet(sq / "spatial" / "tissue_positions.parquet", index=False)
    hires_scalef = 0.5
    sf = {
        "spot_diameter_fullres": side_px,
        "bin_size_um": float(bin_um),
        "microns_per_pixel": mpp_fullres,
        "tissue_hires_scalef": hires_scalef,
        "tissue_lowres_scalef": 0.1,
        "fiducial_diameter_fullres": 100.0,
    }
    (sq / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    W = int(200 + n_side * side_px)
    _png(
        outs / "spatial" / "tissue_hires_image.png",
        round(W * hires_scalef),
        round(W * hires_scalef),
    )
    genes = [f"G{j}" for j in range(g)]
    counts = rng.poisson(2, size=(len(barcodes), g))
    write_10x_h5(sq / "filtered_feature_bc_matrix.h5", sp.csr_matrix(counts), barcodes, genes)
    keep = in_tissue == 1
    return Truth(
        outs / "binned_outputs",
        [b for b, k in zip(barcodes, keep, strict=True) if k],
        genes,
        counts[keep],
        np.stack([x, y], 1)[keep],
        mpp_fullres,
        {"hires_scalef": hires_scalef, "square": sq},
    )


def make_xenium(root: Path, *, with_alignment: bool = True) -> Truth:
    """A Xenium folder with 3 cells, transcripts (incl. controls and low-qv), an H&E PNG and an
    alignment mapping H&E px (0.5 µm/px) to Xenium px (0.2125 µm/px) with an offset."""
    root.mkdir(parents=True)
    pixel = 0.2125
    he_mpp = 0.5
    offset_px = np.array([40.0, 20.0])  # H&E origin in Xenium px
    s = he_mpp / pixel  # Xenium px per H&E px
    M = np.array([[s, 0, offset_px[0]], [0, s, offset_px[1]], [0, 0, 1]])
    (root / "experiment.xenium").write_text(json.dumps({"pixel_size": pixel}))
    cells = pd.DataFrame(
        {
            "cell_id": ["aaa-1", "bbb-1", "ccc-1"],
            "x_centroid": [20.0, 45.0, 70.0],
            "y_centroid": [30.0, 30.0, 60.0],
            "cell_area": [np.pi * 5**2, np.pi * 4**2, np.pi * 6**2],
        }
    )
    cells.to_parquet(root / "cells.parquet", index=False)
    genes = ["EPCAM", "CD3E", "KRT8"]
    names = genes + ["NegControlProbe_1", "BLANK_0001"]
    types = ["Gene Expression"] * 3 + ["Negative Control Probe", "Blank Codeword"]
    counts = np.array([[3, 0, 1, 1, 0], [0, 4, 0, 0, 1], [2, 2, 2, 0, 0]])
    write_10x_h5(
        root / "cell_feature_matrix.h5",
        sp.csr_matrix(counts),
        cells["cell_id"],
        names,
        feature_types=types,
    )
    # transcripts: known positions in µm
    tx = pd.DataFrame(
        {
            "cell_id": ["aaa-1"] * 4 + ["bbb-1"] * 3 + ["UNASSIGNED"] * 3,
            "feature_name": [
                "EPCAM",
                "EPCAM",
                "KRT8",
                "NegControlProbe_1",
                "CD3E",
                "CD3E",
                "CD3E",
                "EPCAM",
                "BLANK_0001",
                "KRT8",
            ],
            "x_location": [21.0, 22.0, 23.0, 21.0, 44.0, 45.0, 46.0, 71.0, 71.0, 71.5],
            "y_location": [31.0, 32.0, 33.0, 31.0, 29.0, 30.0, 31.0, 61.0, 61.0, 61.5],
            "qv": [30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 10.0, 40.0, 40.0, 40.0],
        }
    )
    tx.to_parquet(root / "transcripts.parquet", index=False)
    he_w, he_h = 200, 160  # covers 100 x 80 µm at 0.5 µm/px, shifted by the offset
    _png(root / "he.png", he_w, he_h)
    if with_alignment:
        np.savetxt(root / "alignment.csv", M, delimiter=",")
    return Truth(
        root,
        list(cells["cell_id"]),
        genes,
        counts[:, :3],
        cells[["x_centroid", "y_centroid"]].to_numpy(),
        he_mpp,
        {"M": M, "pixel": pixel, "tx": tx},
    )


def make_legacy(root: Path, *, coord_scale: float = 0.5) -> Truth:
    """A legacy ST folder with one section 'S1' of patient 'P': 4 selected spots, one of them
    without counts, and one unselected spot."""
    for d in ("ST-cnts", "ST-spotfiles", "ST-imgs"):
        (root / d).mkdir(parents=True)
    (root / "sections.tsv").write_text(
        "section\tpatient\timage\tcoord_scale\tum_per_px\tspot_diameter_um\tspot_pitch_um\n"
        f"S1\tP\tST-imgs/s1.png\t{coord_scale}\t2.0\t100\t200\n"
    )
    sel = pd.DataFrame(
        {
            "x": [1, 2, 3, 4, 5],
            "y": [1, 1, 2, 2, 3],
            "new_x": [1.0, 2.0, 3.0, 4.0, 5.0],
            "new_y": [1.0, 1.0, 2.0, 2.0, 3.0],
            "pixel_x": [100.0, 300.0, 500.0, 700.0, 900.0],
            "pixel_y": [100.0, 100.0, 300.0, 300.0, 500.0],
            "selected": [1, 1, 1, 1, 0],
        }
    )
    sel.to_csv(root / "ST-spotfiles" / "S1_selection.tsv", sep="\t", index=False)
    counts = pd.DataFrame(
        [[1, 2, 0], [0, 5, 1], [3, 0, 0], [9, 9, 9]],
        index=["1x1", "2x1", "3x2", "5x3"],
        columns=["A", "B", "C"],
    )
    counts.to_csv(root / "ST-cnts" / "S1.tsv.gz", sep="\t", compression="gzip")
    _png(root / "ST-imgs" / "s1.png", 600, 400)
    return Truth(
        root,
        ["1x1", "2x1", "3x2"],
        ["A", "B", "C"],
        counts.iloc[:3].to_numpy(),
        sel[["pixel_x", "pixel_y"]].to_numpy()[:3] * coord_scale,
        2.0,
        {},
    )


@pytest.fixture
def visium_v2(tmp_path) -> Truth:
    return make_visium(tmp_path / "run1")


@pytest.fixture
def visium_hd(tmp_path) -> Truth:
    return make_visium_hd(tmp_path / "hd")


@pytest.fixture
def xenium(tmp_path) -> Truth:
    return make_xenium(tmp_path / "xen")


@pytest.fixture
def legacy(tmp_path) -> Truth:
    return make_legacy(tmp_path / "legacy")


@pytest.fixture
def builders():
    """The folder builders, for tests that need a variant of a layout."""
    return {
        "visium": make_visium,
        "visium_hd": make_visium_hd,
        "xenium": make_xenium,
        "legacy": make_legacy,
    }
