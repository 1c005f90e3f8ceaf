"""Write a simulated slide in the real on-disk formats, every one binned from the same transcripts.

Layout of ``write_all(slide, out)``::

    out/image.tif                       pyramidal TIFF of the H&E, with its mpp
    out/thumbnail.png                   longest side 1024 px
    out/legacy_st/                      HER2ST layout (sections.tsv, ST-cnts, ST-spotfiles, ST-imgs)
    out/visium/outs/                    Space Ranger v2 outs (+ out/visium/image.tif, full res)
    out/visium_hd/binned_outputs/       square_002um, square_008um, square_016um
                                        (+ out/visium_hd/image.tif, full res)
    out/xenium/                         cells, transcripts, boundaries, cell_feature_matrix.h5,
                                        experiment.xenium, H&E + alignment matrix
    out/truth/                          per-cell table, counts, h5ad, gene_info.tsv, layout
    out/manifest.json                   what was written (last: its presence means complete)

Every file is written to a temporary file beside it and renamed (``hexpress._files``), so no file is ever half written; the
manifest is written last. Full-resolution images in each folder are hard links to
``out/image.tif`` where the file system allows (copies otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from PIL import Image

from hexpress._files import atomic_path, write_json
from hexpress._files import write_file as _write_text
from hexpress.errors import ConfigError, OutputExistsError
from hexpress.io.image import write_tiff
from hexpress.sim import binning as B
from hexpress.sim.slide import SimulatedSlide

__all__ = ["write_all", "FORMATS", "write_legacy_st", "write_visium", "write_visium_hd",
           "write_xenium", "write_truth"]  # fmt: skip

log = logging.getLogger(__name__)

FORMATS = ("legacy_st", "visium", "visium_hd", "xenium", "truth")
_OWNED = (*FORMATS, "image.tif", "thumbnail.png", "manifest.json")
SECTION = "SIM1"
PATIENT = "SIM"


# -- atomic file helpers (every write goes through hexpress._files) ----------------------------
def _write_parquet(path: Path, table: pa.Table) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def _write_png(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
    return path


def _write_10x(path: Path, counts, barcodes, genes) -> Path:
    from hexpress.io.tenx_h5 import write_10x_h5

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_10x_h5(path, counts, barcodes, genes, genome="synthetic")


def _link(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


class _SharedImage:
    """The full-resolution TIFF, written once (in a background thread by :func:`write_all`),
    and the downscaled copies every format shares. Links to it are made once it exists."""

    def __init__(self, path: Path, slide: SimulatedSlide):
        self.path = path
        self.pending: list[Path] = []
        self.hires, self.hires_scale = _resized(slide.image, 2000)
        self.pngs: dict[str, Path] = {}

    def place(self, dst: Path) -> Path:
        self.pending.append(dst)
        return dst

    def finish(self) -> None:
        for dst in self.pending:
            _link(self.path, dst)


def _place(image, dst: Path) -> Path:
    """Put the full-resolution image at ``dst`` (now, or once the shared TIFF is written)."""
    return image.place(dst) if isinstance(image, _SharedImage) else _link(Path(image), dst)


def _resized(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image with its longest side at most ``max_side`` px, and the scale applied."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX)), scale


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _tissue_at(slide: SimulatedSlide, x_um, y_um) -> np.ndarray:
    return slide.tissue_mask_at(np.asarray(x_um), np.asarray(y_um))


# -- legacy ST ---------------------------------------------------------------------------------
def write_legacy_st(slide: SimulatedSlide, root: Path, image: Path) -> dict:
    """HER2ST layout: 100 µm spots at 200 µm pitch (see ``../shared/data/her2st/README.md``)."""
    root = Path(root)
    grid, counts, selected = _disc_counts(slide, B.legacy_st_grid)
    ids = [f"{c}x{r}" for c, r in zip(grid.col, grid.row, strict=True)]
    sel = np.flatnonzero(selected)
    cnt = pd.DataFrame(counts[sel].toarray(), index=[ids[i] for i in sel], columns=slide.genes)
    cnt_path = root / "ST-cnts" / f"{SECTION}.tsv.gz"
    with atomic_path(cnt_path) as tmp:
        cnt.to_csv(tmp, sep="\t", compression="gzip")
    spots = pd.DataFrame(
        {
            "x": grid.col,
            "y": grid.row,
            "new_x": grid.col.astype(float),
            "new_y": grid.row.astype(float),
            "pixel_x": grid.x_um / slide.mpp,
            "pixel_y": grid.y_um / slide.mpp,
            "selected": selected.astype(int),
        }
    )
    sel_path = root / "ST-spotfiles" / f"{SECTION}_selection.tsv"
    _write_text(sel_path, spots.to_csv(sep="\t", index=False))
    img_rel = Path("ST-imgs") / PATIENT / SECTION / f"{SECTION}_HE.tif"
    _place(image, root / img_rel)
    sections = pd.DataFrame(
        [
            {
                "section": SECTION,
                "patient": PATIENT,
                "image": str(img_rel),
                "coord_scale": 1.0,
                "um_per_px": slide.mpp,
                "spot_diameter_um": B.LEGACY_DIAMETER_UM,
                "spot_pitch_um": B.LEGACY_PITCH_UM,
            }
        ]
    )
    _write_text(root / "sections.tsv", sections.to_csv(sep="\t", index=False))
    return {
        "technology": "legacy-st",
        "reader": "hexpress.io.read_legacy_st(path, section='SIM1')",
        "section": SECTION,
        "n_units": int(len(sel)),
        "geometry": "disc",
        "size_um": B.LEGACY_DIAMETER_UM,
        "pitch_um": B.LEGACY_PITCH_UM,
        "image": str(img_rel),
    }


# -- Visium ------------------------------------------------------------------------------------
def _disc_counts(slide: SimulatedSlide, make_grid):
    """The spot grid ``make_grid(width_um, height_um)`` over the slide, its ``(spots, genes)``
    transcript counts and which spots a technology reports (on tissue or with any count)."""
    grid = make_grid(slide.width * slide.mpp, slide.height * slide.mpp)
    tx = slide.transcripts
    unit = B.assign_discs(grid, tx["x_um"].to_numpy(), tx["y_um"].to_numpy())
    counts = B.count_matrix(unit, tx["gene"].to_numpy(), len(grid), len(slide.genes))
    total = np.asarray(counts.sum(1)).ravel()
    return grid, counts, _tissue_at(slide, grid.x_um, grid.y_um) | (total > 0)


def _visium_barcodes(n: int) -> list[str]:
    """Distinct 16-base barcodes (deterministic), with the ``-1`` GEM-group suffix."""
    digits = (np.arange(n)[:, None] * 2654435761 % (4**16)) // (4 ** np.arange(15, -1, -1)) % 4
    letters = np.array(list("ACGT"))[digits]
    return ["".join(row) + "-1" for row in letters]


def _spatial_images(slide: SimulatedSlide, spatial: Path, image) -> dict:
    """Space Ranger's ``tissue_hires_image.png`` (2000 px) and ``tissue_lowres_image.png``."""
    h, w = slide.image.shape[:2]
    s_hi = min(1.0, 2000 / max(h, w))
    s_lo = min(1.0, 600 / max(h, w))
    names = ("tissue_hires_image.png", "tissue_lowres_image.png")
    if isinstance(image, _SharedImage) and image.pngs:
        for name in names:
            _link(image.pngs[name], spatial / name)
    else:
        hires = image.hires if isinstance(image, _SharedImage) else _resized(slide.image, 2000)[0]
        size = (max(1, round(w * s_lo)), max(1, round(h * s_lo)))
        lowres = np.asarray(Image.fromarray(hires).resize(size, Image.Resampling.BOX))
        _write_png(spatial / names[0], hires)
        _write_png(spatial / names[1], lowres)
        if isinstance(image, _SharedImage):
            image.pngs = {n: spatial / n for n in names}
    return {"tissue_hires_scalef": s_hi, "tissue_lowres_scalef": s_lo}


def write_visium(slide: SimulatedSlide, root: Path, image: Path) -> dict:
    """Space Ranger v2 ``outs/``: 55 µm spots at 100 µm pitch on the hexagonal Visium lattice."""
    root = Path(root)
    outs = root / "outs"
    spatial = outs / "spatial"
    grid, counts, in_tissue = _disc_counts(slide, B.visium_grid)
    barcodes = _visium_barcodes(len(grid))
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue.astype(int),
            "array_row": grid.row,
            "array_col": grid.col,
            "pxl_row_in_fullres": grid.y_um / slide.mpp,
            "pxl_col_in_fullres": grid.x_um / slide.mpp,
        }
    )
    _write_text(spatial / "tissue_positions.csv", pos.to_csv(index=False))
    sel = np.flatnonzero(in_tissue)
    _write_10x(outs / "filtered_feature_bc_matrix.h5", counts[sel], [barcodes[i] for i in sel],
               slide.genes)  # fmt: skip
    scalef = _spatial_images(slide, spatial, image)
    spot_px = 65.0 / slide.mpp  # Space Ranger: the px spanning a theoretical 65 µm spot
    write_json(
        spatial / "scalefactors_json.json",
        {
            "spot_diameter_fullres": spot_px,
            "tissue_hires_scalef": scalef["tissue_hires_scalef"],
            "fiducial_diameter_fullres": spot_px * 1.6154,
            "tissue_lowres_scalef": scalef["tissue_lowres_scalef"],
        },
    )
    _place(image, root / "image.tif")
    return {
        "technology": "visium",
        "reader": "hexpress.io.read_visium(path, image=<visium/image.tif>)",
        "outs": "outs",
        "n_units": int(len(sel)),
        "geometry": "disc",
        "size_um": B.VISIUM_DIAMETER_UM,
        "pitch_um": B.VISIUM_PITCH_UM,
        "image": "image.tif",
    }


# -- Visium HD ---------------------------------------------------------------------------------
def _hd_barcodes(bin_um: int, rows: np.ndarray, cols: np.ndarray) -> pa.Array:
    r = pc.utf8_lpad(pc.cast(pa.array(rows), pa.string()), 5, "0")
    c = pc.utf8_lpad(pc.cast(pa.array(cols), pa.string()), 5, "0")
    return pc.binary_join_element_wise(f"s_{bin_um:03d}um_", r, "_", c, "-1", "")


def write_visium_hd(
    slide: SimulatedSlide, root: Path, image: Path, bins_um: tuple[int, ...] = B.HD_BIN_UM
) -> dict:
    """Space Ranger Visium HD ``binned_outputs/square_XXXum/`` for each bin size.

    Bins tile the image from its top-left corner; a bin is ``in_tissue`` when its centre is on
    tissue or it holds a transcript, and lies on the image (centre inside it);
    ``filtered_feature_bc_matrix.h5`` holds those bins.
    """
    root = Path(root)
    binned = root / "binned_outputs"
    mpp = slide.mpp
    w_um, h_um = slide.width * mpp, slide.height * mpp
    tx = slide.transcripts
    x, y, gene = tx["x_um"].to_numpy(), tx["y_um"].to_numpy(), tx["gene"].to_numpy()
    out = {"technology": "visium-hd", "bins": {}, "image": "image.tif"}
    for b in bins_um:
        folder = binned / f"square_{b:03d}um"
        spatial = folder / "spatial"
        n_rows, n_cols = math.ceil(h_um / b), math.ceil(w_um / b)
        r, c = B.hd_bin_index(x, y, b)
        flat = r * n_cols + c
        n_bins = n_rows * n_cols
        total = np.bincount(flat, minlength=n_bins)
        rr, cc = np.divmod(np.arange(n_bins, dtype=np.int64), n_cols)
        cy, cx = (rr + 0.5) * b, (cc + 0.5) * b
        in_tissue = _tissue_at(slide, np.minimum(cx, w_um - 1e-6), np.minimum(cy, h_um - 1e-6))
        in_tissue |= total > 0
        # a bin cut by the image's edge with its centre outside has no position on the image:
        # it stays in the positions file but out of the filtered matrix
        in_tissue &= (cx < w_um) & (cy < h_um)
        barcodes = _hd_barcodes(b, rr, cc)
        table = pa.table(
            {
                "barcode": barcodes,
                "in_tissue": pa.array(in_tissue.astype(np.int32)),
                "array_row": pa.array(rr.astype(np.int32)),
                "array_col": pa.array(cc.astype(np.int32)),
                "pxl_row_in_fullres": pa.array(cy / mpp),
                "pxl_col_in_fullres": pa.array(cx / mpp),
            }
        )
        _write_parquet(spatial / "tissue_positions.parquet", table)
        sel = np.flatnonzero(in_tissue)
        remap = np.full(n_bins, -1, np.int64)
        remap[sel] = np.arange(len(sel))
        counts = B.count_matrix(remap[flat], gene, len(sel), len(slide.genes))
        bc_sel = pc.take(barcodes, pa.array(sel)).to_pylist()
        _write_10x(folder / "filtered_feature_bc_matrix.h5", counts, bc_sel, slide.genes)
        scalef = _spatial_images(slide, spatial, image)
        write_json(
            spatial / "scalefactors_json.json",
            {
                "spot_diameter_fullres": b / mpp,
                "bin_size_um": float(b),
                "microns_per_pixel": mpp,
                "regions_of_interest": None,
                "fiducial_diameter_fullres": 65.0 * 1.6154 / mpp,
                "tissue_hires_scalef": scalef["tissue_hires_scalef"],
                "tissue_lowres_scalef": scalef["tissue_lowres_scalef"],
            },
        )
        out["bins"][f"square_{b:03d}um"] = {"n_units": int(len(sel)), "n_bins": int(n_bins)}
    _place(image, root / "image.tif")
    out.update(
        reader="hexpress.io.read_visium_hd(path, bin_um=8, image=<visium_hd/image.tif>)",
        geometry="square",
        size_um=[float(b) for b in bins_um],
    )
    return out


# -- Xenium ------------------------------------------------------------------------------------
def _ellipse_vertices(cells: pd.DataFrame, prefix: str, n_vertices: int = 16):
    a = cells[f"{prefix}_a_um"].to_numpy()[:, None]
    b = cells[f"{prefix}_b_um"].to_numpy()[:, None]
    th = cells["angle"].to_numpy()[:, None]
    cx = cells["x_um" if prefix == "cell" else "nucleus_x_um"].to_numpy()[:, None]
    cy = cells["y_um" if prefix == "cell" else "nucleus_y_um"].to_numpy()[:, None]
    t = np.linspace(0, 2 * math.pi, n_vertices + 1)[None, :]  # last vertex closes the ring
    u, v = a * np.cos(t), b * np.sin(t)
    x = cx + u * np.cos(th) - v * np.sin(th)
    y = cy + u * np.sin(th) + v * np.cos(th)
    ids = np.repeat(cells["cell_id"].to_numpy(), n_vertices + 1)
    return pa.table(
        {
            "cell_id": pa.array(ids),
            "vertex_x": pa.array(x.ravel().astype(np.float32)),
            "vertex_y": pa.array(y.ravel().astype(np.float32)),
        }
    )


def write_xenium(slide: SimulatedSlide, root: Path, image: Path) -> dict:
    """Xenium Onboard Analysis-like output: cells, transcripts (µm), matrix, boundaries, H&E.

    The H&E ``synthetic_he_image.ome.tif`` comes with ``synthetic_he_imagealignment.csv``: a
    3 x 3 affine matrix (no header) that maps H&E pixel ``(x, y, 1)`` to Xenium pixels of
    ``pixel_size`` µm (as Xenium Explorer exports it): here a pure scale ``mpp / pixel_size``.
    Transcript and cell coordinates are µm with the origin at the image's top-left corner.
    """
    root = Path(root)
    cfg = slide.config
    cells = slide.cells
    tx = slide.transcripts
    genes = np.array(slide.genes)
    n_tx = len(tx)
    rng = np.random.default_rng(cfg.seed + 7919)
    cell_ids = cells["cell_id"].to_numpy()
    cell_dict = pa.DictionaryArray.from_arrays(
        pa.array(tx["cell"].to_numpy().astype(np.int32)), pa.array(cell_ids)
    )
    gene_dict = pa.DictionaryArray.from_arrays(
        pa.array(tx["gene"].to_numpy().astype(np.int32)), pa.array(genes)
    )
    transcripts = pa.table(
        {
            "transcript_id": pa.array(np.arange(n_tx, dtype=np.uint64) + 281474976710656),
            "cell_id": cell_dict,
            "overlaps_nucleus": pa.array(tx["in_nucleus"].to_numpy().astype(np.uint8)),
            "feature_name": gene_dict,
            "x_location": pa.array(tx["x_um"].to_numpy()),
            "y_location": pa.array(tx["y_um"].to_numpy()),
            "z_location": pa.array(rng.uniform(2.0, 12.0, n_tx).astype(np.float32)),
            "qv": pa.array(rng.uniform(20.0, 40.0, n_tx).astype(np.float32)),
        }
    )
    _write_parquet(root / "transcripts.parquet", transcripts)
    del transcripts
    n_counts = cells["n_transcripts"].to_numpy()
    table = pa.table(
        {
            "cell_id": pa.array(cell_ids),
            "x_centroid": pa.array(cells["x_um"].to_numpy()),
            "y_centroid": pa.array(cells["y_um"].to_numpy()),
            "transcript_counts": pa.array(n_counts.astype(np.int64)),
            "control_probe_counts": pa.array(np.zeros(len(cells), np.int64)),
            "total_counts": pa.array(n_counts.astype(np.int64)),
            "cell_area": pa.array(cells["cell_area_um2"].to_numpy()),
            "nucleus_area": pa.array(cells["nucleus_area_um2"].to_numpy()),
        }
    )
    _write_parquet(root / "cells.parquet", table)
    _write_parquet(root / "cell_boundaries.parquet", _ellipse_vertices(cells, "cell"))
    _write_parquet(root / "nucleus_boundaries.parquet", _ellipse_vertices(cells, "nucleus"))
    _write_10x(root / "cell_feature_matrix.h5", slide.cell_counts, list(cell_ids), slide.genes)
    he = root / "synthetic_he_image.ome.tif"
    _place(image, he)
    s = slide.mpp / cfg.xenium_pixel_size_um
    matrix = np.array([[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]])
    _write_text(
        root / "synthetic_he_imagealignment.csv",
        "\n".join(",".join(f"{v:.10g}" for v in row) for row in matrix) + "\n",
    )
    write_json(
        root / "experiment.xenium",
        {
            "major_version": 5,
            "minor_version": 0,
            "run_name": "hexpress-synthetic",
            "region_name": SECTION,
            "panel_organism": "Synthetic",
            "panel_num_targets_predesigned": len(genes),
            "panel_num_targets_custom": 0,
            "pixel_size": cfg.xenium_pixel_size_um,
            "num_cells": int(len(cells)),
            "transcripts_per_cell": float(np.median(n_counts)) if len(cells) else 0.0,
            "analysis_sw_version": "hexpress-sim",
            "images": {"he_image_filepath": he.name},
            "he_alignment_filepath": "synthetic_he_imagealignment.csv",
            "he_image_mpp": slide.mpp,
        },
    )
    return {
        "technology": "xenium",
        "reader": "hexpress.io.read_xenium(path)",
        "n_units": int(len(cells)),
        "n_transcripts": int(n_tx),
        "geometry": "polygon",
        "image": he.name,
        "alignment": "synthetic_he_imagealignment.csv",
        "pixel_size_um": cfg.xenium_pixel_size_um,
    }


# -- truth -------------------------------------------------------------------------------------
def write_truth(slide: SimulatedSlide, root: Path, image: Path) -> dict:
    """The single-cell truth: cells, counts, an h5ad of cells, the gene table and the layout."""
    from hexpress.data.sample import make_units

    root = Path(root)
    cells = slide.cells.copy()
    for col in ("type", "domain"):
        cells[col] = cells[col].astype(str)
    _write_parquet(root / "cells.parquet", pa.Table.from_pandas(cells, preserve_index=False))
    with atomic_path(root / "cell_counts.npz") as tmp, open(tmp, "wb") as f:
        sp.save_npz(f, slide.cell_counts.tocsr())
    gi = slide.gene_info.copy()
    _write_text(root / "gene_info.tsv", gi.to_csv(sep="\t"))
    t = slide.tissue
    with atomic_path(root / "layout.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            step_um=np.float64(t.step_um),
            domain=t.domain,
            lumen=t.lumen,
            dist_vessel_um=t.dist_vessel_um,
            hidden=t.hidden,
            vessels=t.vessels,
        )
    adata = make_units(
        slide.cell_counts,
        genes=slide.genes,
        unit_ids=cells["cell_id"].tolist(),
        centers_px=cells[["x_px", "y_px"]].to_numpy(),
        geometry="polygon",
        size_um=None,
        source=root,
        obs=cells.drop(columns=["cell_id"]),
    )
    adata.var = adata.var.join(gi)
    for frame in (adata.obs, adata.var):  # categorical on purpose, not by anndata's warning
        for col in frame.columns:
            if frame[col].dtype == object:
                frame[col] = pd.Categorical(frame[col].astype(str))
    adata.uns["hexpress"] = {
        "sample_id": SECTION,
        "patient_id": PATIENT,
        "technology": "synthetic",
        "mpp": slide.mpp,
        "image_path": "../image.tif",
        "image_size": [slide.width, slide.height],
        "config": json.dumps(slide.config.to_dict()),
    }
    with atomic_path(root / "cells.h5ad") as tmp:
        adata.write_h5ad(tmp)
    write_json(root / "config.json", slide.config.to_dict())
    kinds = slide.gene_info["kind"].value_counts().to_dict()
    return {
        "technology": "synthetic",
        "n_cells": int(len(cells)),
        "n_genes": len(slide.genes),
        "gene_kinds": {k: int(v) for k, v in kinds.items()},
        "files": [
            "cells.parquet",
            "cell_counts.npz",
            "cells.h5ad",
            "gene_info.tsv",
            "layout.npz",
            "config.json",
        ],  # fmt: skip
    }


_WRITERS = {
    "legacy_st": write_legacy_st,
    "visium": write_visium,
    "visium_hd": write_visium_hd,
    "xenium": write_xenium,
    "truth": write_truth,
}


def write_all(
    slide: SimulatedSlide,
    out_dir: str | Path,
    formats: tuple[str, ...] | list[str] = FORMATS,
    *,
    overwrite: bool = False,
) -> dict:
    """Write the slide in every requested format, then ``manifest.json``.

    Args:
        slide: from :func:`hexpress.sim.simulate`.
        out_dir: output folder; must be absent or empty unless ``overwrite``.
        formats: any of :data:`FORMATS`.
        overwrite: replace what a previous run wrote here (only the entries this function
            writes are removed; other files are left alone).

    Returns:
        The manifest: ``{"out_dir", "mpp", "image", "thumbnail", "formats": {name: {...}},
        "timings_s", "config", "complete": True}``; paths are relative to ``out_dir``.

    Raises:
        OutputExistsError: ``out_dir`` holds files and ``overwrite`` is false.
        ConfigError: an unknown format name.
    """
    out = Path(out_dir)
    unknown = [f for f in formats if f not in _WRITERS]
    if unknown:
        raise ConfigError(f"Unknown format(s) {unknown}; valid: {list(FORMATS)}.")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out} is not empty; choose a new folder or pass overwrite=True (--overwrite)."
            )
        manifest = out / "manifest.json"
        if manifest.exists():
            manifest.unlink()  # first: a half-replaced folder must not look complete
        for name in _OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    # the pyramidal TIFF (zlib tiles) is the slowest file: write it in a thread (compression
    # releases the GIL) while the formats are binned, and link it into them at the end
    image = _SharedImage(out / "image.tif", slide)
    pool = ThreadPoolExecutor(max_workers=1)
    tiff_job = pool.submit(write_tiff, image.path, slide.image, slide.mpp)
    h, w = image.hires.shape[:2]
    f = min(1.0, 1024 / max(h, w))
    thumb = Image.fromarray(image.hires).resize(
        (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX
    )
    _write_png(out / "thumbnail.png", np.asarray(thumb))
    timings["thumbnails"] = time.perf_counter() - t0
    entries = {}
    for name in formats:
        t0 = time.perf_counter()
        entry = _WRITERS[name](slide, out / name, image)
        entry["path"] = name
        entries[name] = entry
        timings[name] = time.perf_counter() - t0
        log.info("wrote %s in %.1f s", out / name, timings[name])
    t0 = time.perf_counter()
    tiff_job.result()
    pool.shutdown()
    image.finish()
    timings["image_wait"] = time.perf_counter() - t0
    manifest = {
        "out_dir": str(out),
        "mpp": slide.mpp,
        "image": "image.tif",
        "image_size": [slide.width, slide.height],
        "thumbnail": "thumbnail.png",
        "n_cells": int(len(slide.cells)),
        "n_genes": len(slide.genes),
        "n_transcripts": int(len(slide.transcripts)),
        "formats": entries,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": slide.config.to_dict(),
        "complete": True,
    }
    write_json(out / "manifest.json", manifest)
    return manifest
