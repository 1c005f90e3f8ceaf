"""Fixtures of the inference tests (helpers live in infer_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import TinyDense, he_like

from hexpress.io import ArrayImage


@pytest.fixture
def tiny_model():
    torch.set_num_threads(1)
    return TinyDense().eval()


@pytest.fixture
def slide_img():
    return ArrayImage(he_like(300, 400), mpp=1.0)


@pytest.fixture
def footprints():
    """The in-memory aggregation of training."""
    import importlib

    # the package exports a function of the same name, so import the module by path
    return importlib.import_module("hexpress.models.aggregate")
