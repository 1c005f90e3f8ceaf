import json

import pytest
from typer.testing import CliRunner

from hexpress.cli import app


@pytest.fixture
def runner():
    return CliRunner()


def _run(runner, *args):
    return runner.invoke(app, ["info", *map(str, args)])


def _json(result):
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.mark.realdata
def test_info_her2st_c2_json(runner, her2st_dir):
    r = _run(runner, her2st_dir, "--format", "legacy-st", "--section", "C2", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert d["n_spots"] == 187 and d["mpp"] == 0.688 and d["spot_size_um"] == 100.0
    assert d["technology"] == "legacy-st" and d["section"] == "C2"
    assert d["image_width_px"] == 9274 and d["n_genes"] > 15000


@pytest.mark.realdata
def test_info_missing_section_lists_them(her2st_dir):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "hexpress", "info", str(her2st_dir), "--format", "legacy-st"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "error:" in p.stderr and "A1, C2, C3, C4, C5, C6" in p.stderr


def test_info_visium_text_and_json(tmp_path, runner):
    import importlib.util
    import sys
    from pathlib import Path

    # the io tests' folder builders, loaded under their own name (every conftest is "conftest")
    spec = importlib.util.spec_from_file_location(
        "io_builders", Path(__file__).parents[1] / "io" / "conftest.py"
    )
    builders = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("io_builders", builders)  # dataclasses look their module up
    spec.loader.exec_module(builders)
    t = builders.make_visium(tmp_path / "run")
    r = _run(runner, t.root, "--format", "visium", "--json")
    assert r.exit_code == 0, r.output
    d = _json(r)
    assert (
        d["n_spots"] == 12
        and d["spot_size_um"] == 55.0
        and d["mpp"] == pytest.approx(2.0, rel=1e-3)
    )
    r = _run(runner, t.root, "--format", "visium")
    assert "n_spots" in r.stdout and "12" in r.stdout


def test_info_unknown_format(runner, tmp_path):
    from hexpress.errors import ConfigError

    r = _run(runner, tmp_path, "--format", "nope")
    assert isinstance(r.exception, ConfigError)
    assert "valid formats: legacy-st, visium" in str(r.exception)
