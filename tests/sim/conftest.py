"""Small simulated slides shared by the simulator tests (made once per session)."""

from __future__ import annotations

import pytest

from hexpress.sim import SimConfig, simulate
from hexpress.sim.writers import write_all


@pytest.fixture(scope="session")
def small_slide():
    """0.6 mm x 0.6 mm at 0.5 µm/px: about 1,000 cells, 1200 x 1200 px."""
    return simulate(SimConfig(size_mm=0.6, seed=3))


@pytest.fixture(scope="session")
def small_out(small_slide, tmp_path_factory):
    """``small_slide`` written in every format; returns ``(out_dir, manifest)``."""
    out = tmp_path_factory.mktemp("sim") / "out"
    return out, write_all(small_slide, out)


@pytest.fixture(scope="session")
def medium_slide():
    """1.6 mm x 1.6 mm: enough Visium spots (~280) for Moran's I and a feature model."""
    return simulate(SimConfig(size_mm=1.6, seed=11))
