"""Helpers of the command-line tests."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hexpress.cli import main

TESTS = Path(__file__).resolve().parents[1]


def run(argv, capsys) -> tuple[int, str, str]:
    """Run the console entry point on ``argv``: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def helper_module(name: str, path: str) -> ModuleType:
    """A helper module of another test folder (``path`` under tests/, e.g.
    ``"infer/infer_helpers.py"``), imported once under ``name``: the command-line tests build
    their inputs with the same helpers as the tests of the package behind each command, and
    every folder's ``conftest.py`` has the same module name."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]
