"""Fixtures of the command-line tests."""

import pytest
from cli_helpers import helper_module
from typer.testing import CliRunner


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="session")
def io_builders():
    """The io tests' folder builders (tests/io/conftest.py)."""
    return helper_module("io_builders", "io/conftest.py")


@pytest.fixture(autouse=True)
def _agg_backend():
    import matplotlib

    matplotlib.use("Agg", force=True)  # reports draw figures; no display
