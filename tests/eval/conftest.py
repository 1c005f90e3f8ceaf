"""Fixtures of the evaluation tests (helpers in ``eval_helpers.py``)."""

from __future__ import annotations

import pytest
from eval_helpers import make_section


@pytest.fixture
def section():
    """``(counts AnnData, image)`` of one tiny synthetic section."""
    return make_section(0)


@pytest.fixture(autouse=True)
def _agg_backend():
    import matplotlib

    matplotlib.use("Agg", force=True)
