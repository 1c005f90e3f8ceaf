"""Simulated slides of the simulator tests (made once per session; ``small_slide`` and
``small_out``, which the command-line tests read too, are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from hexpress.sim import SimConfig, simulate


@pytest.fixture(scope="session")
def medium_slide():
    """1.6 mm x 1.6 mm: enough Visium spots (~280) for Moran's I and a feature model."""
    return simulate(SimConfig(size_mm=1.6, seed=11))
