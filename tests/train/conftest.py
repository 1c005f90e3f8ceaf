"""Tiny synthetic slides for the training tests: in memory (``make_units`` + ``ArrayImage``) and
on disk in the legacy ST layout (for runs that read their data, e.g. under ``torchrun``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hexpress.data import Sample, make_units
from hexpress.io import ArrayImage

N_GENES = 10


def synthetic_slide(
    seed: int = 0,
    *,
    size_px: int = 160,
    mpp: float = 1.0,
    spot_um: float = 24.0,
    pitch_um: float = 30.0,
    geometry: str = "disc",
    sample_id: str = "S1",
    patient_id: str = "P1",
) -> tuple[np.ndarray, Sample]:
    """A smooth colour field and a grid of spots whose counts follow the local colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    phase = rng.random(3) * 6
    field = np.stack([np.sin(4 * xx + phase[c]) * np.cos(3 * yy + phase[c]) for c in range(3)], -1)
    img = np.clip(160 + 80 * field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
    image = ArrayImage(img, mpp)
    step = pitch_um / mpp
    grid = np.arange(step / 2, size_px - 1, step)
    cx, cy = np.meshgrid(grid, grid)
    centers = np.stack([cx.ravel(), cy.ravel()], 1)
    ix = np.clip(centers.astype(int), 0, size_px - 1)
    colour = field[ix[:, 1], ix[:, 0]]  # (n, 3)
    load = rng.normal(size=(3, N_GENES))
    mu = 20 * np.exp(colour @ load * 0.8)
    counts = rng.poisson(mu).astype(np.float32)
    ids = [f"{sample_id}_{i}" for i in range(len(centers))]
    adata = make_units(
        counts,
        genes=[f"g{i}" for i in range(N_GENES)],
        unit_ids=ids,
        centers_px=centers,
        geometry=geometry,
        size_um=spot_um,
        source="synthetic",
        image=image,
    )
    return img, Sample(adata, image, sample_id, patient_id, "synthetic")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def samples() -> dict[str, Sample]:
    return {sid: synthetic_slide(i, sample_id=sid)[1] for i, sid in enumerate(("S1", "S2"))}


def write_legacy_st(root: Path, sections=("S1", "S2"), mpp: float = 1.0) -> Path:
    """The slides of :func:`synthetic_slide` in the HER2ST layout under ``root``."""
    rows = []
    for i, sec in enumerate(sections):
        img, sample = synthetic_slide(i, sample_id=sec, mpp=mpp)
        (root / "ST-imgs").mkdir(parents=True, exist_ok=True)
        (root / "ST-cnts").mkdir(exist_ok=True)
        (root / "ST-spotfiles").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "ST-imgs" / f"{sec}.png")
        xy = sample.adata.obsm["spatial"]
        keys = [f"{j}x{i}" for j, i in zip(range(len(xy)), [1] * len(xy), strict=True)]
        counts = pd.DataFrame(
            sample.adata.X.toarray(), index=keys, columns=list(sample.adata.var_names)
        )
        with gzip.open(root / "ST-cnts" / f"{sec}.tsv.gz", "wt") as f:
            counts.to_csv(f, sep="\t")
        sel = pd.DataFrame(
            {
                "x": range(len(xy)),
                "y": [1] * len(xy),
                "pixel_x": xy[:, 0],
                "pixel_y": xy[:, 1],
                "selected": 1,
            }
        )
        sel.to_csv(root / "ST-spotfiles" / f"{sec}_selection.tsv", sep="\t", index=False)
        rows.append(
            {
                "section": sec,
                "patient": "P",
                "image": f"ST-imgs/{sec}.png",
                "coord_scale": 1.0,
                "um_per_px": mpp,
                "spot_diameter_um": 24,
                "spot_pitch_um": 30,
            }
        )
    pd.DataFrame(rows).to_csv(root / "sections.tsv", sep="\t", index=False)
    return root
