"""The HTML report opens in a real browser (headless Chromium) and its figures render."""

import importlib.util
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "check_report_browser.py"


def _script():
    spec = importlib.util.spec_from_file_location("check_report_browser", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="headless Chromium not on PATH (Debian: apt-get install -y chromium)",
)
def test_report_figures_render_in_chromium(tmp_path):
    mod = _script()
    report = mod.synthetic_report(tmp_path / "report")
    shot = tmp_path / "page.png"
    res = mod.check_report(report, screenshot=shot, window=(1000, 1400))
    # PCC distribution, PCC vs Moran's I, then measured vs predicted per method and section
    figures = sorted((report.parent / "figures").glob("*.png"))
    assert res["images"] == len(figures) == 6, res
    assert res["rendered"] == 6 and res["broken"] == []
    assert all(w > 100 and h > 100 for w, h in res["sizes"])
    assert res["title"] == "hexpress report (synthetic check)"
    assert res["tables"] >= 3
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert not list(report.parent.glob(".render-check-*"))  # the probe copy is removed
    assert mod.main([str(report)]) == 0


@pytest.mark.slow
def test_broken_image_is_reported(tmp_path):
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("headless Chromium not on PATH (Debian: apt-get install -y chromium)")
    mod = _script()
    page = tmp_path / "r.html"
    page.write_text(
        "<html><head><title>t</title></head><body><img src='missing.png' alt='x'></body></html>"
    )
    res = mod.check_report(page)
    assert res["images"] == 1 and res["broken"] == ["x"]
    assert mod.main([str(page)]) == 1
