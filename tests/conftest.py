"""Shared fixtures. Real data is read from ../shared/data next to the repository and tests that
need it are marked ``realdata`` and skipped, saying so, when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HEXPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (set HEXPRESS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    """The HER2ST sections (legacy ST layout)."""
    return _shared("her2st")


@pytest.fixture(scope="session")
def visium_fixtures_dir() -> Path:
    """Two tiny real Space Ranger output folders."""
    return _shared("visium_fixtures")


@pytest.fixture(scope="session")
def real_fixtures_dir() -> Path:
    """Tiny real Visium HD, Visium and HEST-style Xenium outputs (see its README)."""
    return _shared("real_fixtures")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_slide():
    """A simulated slide, 0.6 mm x 0.6 mm at 0.5 µm/px: about 1,000 cells, 1200 x 1200 px."""
    from hexpress.sim import SimConfig, simulate

    return simulate(SimConfig(size_mm=0.6, seed=3))


@pytest.fixture(scope="session")
def small_out(small_slide, tmp_path_factory):
    """``small_slide`` written in every format; returns ``(out_dir, manifest)``."""
    from hexpress.sim.writers import write_all

    out = tmp_path_factory.mktemp("sim") / "out"
    return out, write_all(small_slide, out)
