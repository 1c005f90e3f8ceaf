"""Fixtures of the command-line tests."""

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="session")
def io_builders():
    """The io tests' folder builders (tests/io/conftest.py), loaded under their own name: every
    conftest module is called "conftest"."""
    if "io_builders" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "io_builders", Path(__file__).parents[1] / "io" / "conftest.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["io_builders"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["io_builders"]
