"""Open a hexpress HTML report in headless Chromium and check that every figure renders.

Usage::

    python benchmarks/check_report_browser.py REPORT.html [--screenshot PAGE.png]
    python benchmarks/check_report_browser.py --synthetic OUT_DIR [--screenshot PAGE.png]

The second form first writes a report from synthetic sections and predictions into ``OUT_DIR``.
Chromium (Debian: ``apt-get install chromium``) loads a copy of the report with a small script
appended that, once the page has loaded, records for every ``<img>`` whether it decoded
(``complete`` and ``naturalWidth > 0``); the DOM is dumped and read back. A screenshot of the
page is taken when asked for. Exit status 0 when every image rendered, 1 otherwise, 2 when
Chromium is missing or fails.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)

_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 80); });
  var sizes = imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; });
  var pre = document.createElement("pre");
  pre.id = "hexpress-render-check";
  pre.textContent = JSON.stringify({images: imgs.length, rendered: imgs.length - broken.length,
                                    broken: broken, sizes: sizes, title: document.title,
                                    tables: document.querySelectorAll("table").length});
  document.body.appendChild(pre);
});
</script>
"""


def find_browser() -> str | None:
    """Path of a Chromium-family browser on PATH, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="hexpress-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def check_report(
    report: str | Path,
    *,
    screenshot: str | Path | None = None,
    browser: str | None = None,
    window: tuple[int, int] = (1400, 3000),
    timeout_s: float = 120.0,
) -> dict:
    """Load ``report`` in headless Chromium and say which images rendered.

    Args:
        report: the report's HTML file.
        screenshot: write a PNG screenshot of the page here.
        browser: browser executable (default: the first of :data:`BROWSERS` on PATH).
        window: window width and height in pixels for the screenshot.
        timeout_s: limit for each browser run.

    Returns:
        ``{"images", "rendered", "broken", "sizes", "title", "tables", "screenshot"}``.
    """
    report = Path(report).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"no report at {report}")
    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError(
            "no Chromium on PATH; install Debian's package: apt-get install -y chromium"
        )
    # The probe copy sits next to the report so relative links resolve as in the report.
    probe = report.with_name(f".render-check-{secrets.token_hex(4)}.html")
    text = report.read_text(encoding="utf-8")
    cut = text.rfind("</body>")
    probe.write_text(
        (text[:cut] + _PROBE + text[cut:]) if cut >= 0 else text + _PROBE, encoding="utf-8"
    )
    try:
        res = _run(
            browser, ["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], timeout_s
        )
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="hexpress-render-check">(.*?)</pre>', res.stdout, re.S)
    if m is None:
        raise RuntimeError(
            f"{browser} did not report on the page (exit {res.returncode}): "
            f"{res.stderr.strip()[-800:]}"
        )
    out = json.loads(html.unescape(m.group(1)))
    out["screenshot"] = None
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)
        res = _run(
            browser,
            [f"--screenshot={shot}", f"--window-size={window[0]},{window[1]}", report.as_uri()],
            timeout_s,
        )
        if not shot.is_file():
            raise RuntimeError(
                f"{browser} wrote no screenshot (exit {res.returncode}): {res.stderr[-800:]}"
            )
        out["screenshot"] = str(shot)
    return out


def synthetic_report(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a report of two methods on two synthetic sections; returns ``report.html``."""
    import anndata as ad
    import matplotlib
    import numpy as np

    matplotlib.use("Agg", force=True)
    from hexpress.data.preprocess import normalize
    from hexpress.data.sample import make_units
    from hexpress.eval import MethodResult, evaluate_anndata, write_report
    from hexpress.io.image import ArrayImage

    rng = np.random.default_rng(seed)
    mpp, pitch_px = 2.0, 50.0
    truths, images, preds = {}, {}, {"dense": {}, "patch": {}}
    for s in range(2):
        xy = np.array(
            [((c + 0.5 * (r % 2) + 1) * pitch_px, (r * 0.866 + 1) * pitch_px)
             for r in range(10) for c in range(10)]
        )  # fmt: skip
        u = (xy - xy.mean(0)) / np.ptp(xy, 0)
        fields = (u[:, 0], u[:, 1], -u[:, 0], -u[:, 1])
        lam = np.stack([np.exp(3 + (g % 3) * 0.5 + 3 * fields[g % 4]) for g in range(12)], 1)
        img = np.full(
            (int(xy[:, 1].max() + pitch_px), int(xy[:, 0].max() + pitch_px), 3), 230, np.uint8
        )
        stripes = 190 + 30 * np.sin(np.arange(img.shape[1]) / 15.0)  # some texture to see
        img[:, :, 1] = np.clip(stripes, 0, 255).astype(np.uint8)[None, :]
        images[f"sec{s}"] = ArrayImage(img, mpp=mpp)
        counts = make_units(
            rng.poisson(lam),
            genes=[f"GENE{g}" for g in range(12)],
            unit_ids=[f"sec{s}_{i}" for i in range(len(xy))],
            centers_px=xy,
            geometry="disc",
            size_um=55.0,
            source="synthetic",
            image=images[f"sec{s}"],
        )
        counts.uns["hexpress"] = {"mpp": mpp, "sample_id": f"sec{s}"}
        truth = normalize(counts)
        truths[f"sec{s}"] = truth
        for name, noise in (("dense", 0.3), ("patch", 1.0)):
            p = ad.AnnData(
                X=np.asarray(truth.X) + rng.normal(scale=noise, size=truth.shape).astype("float32"),
                obs=truth.obs[["geometry", "size_um"]].copy(),
                var=truth.var[[]].copy(),
            )
            p.obsm["spatial"] = xy
            p.uns["hexpress"] = {"normalization": truth.uns["hexpress"]["normalization"]}
            preds[name][f"sec{s}"] = p
    results = []
    for name in preds:
        sections = [evaluate_anndata(truths[k], p, section=k) for k, p in preds[name].items()]
        results.append(
            MethodResult(
                name, sections, train_time_s=1.0, predict_time_s=0.1, predictions=preds[name]
            )
        )
    written = write_report(
        out_dir,
        results,
        title="hexpress report (synthetic check)",
        config={"data": "synthetic, 2 sections of 100 spots", "genes": 12, "seed": seed},
        truths=truths,
        images=images,
        overwrite=True,
    )
    return written["report.html"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="report.html to check")
    ap.add_argument("--synthetic", metavar="OUT_DIR", help="first write a synthetic report here")
    ap.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the page")
    ap.add_argument("--browser", help="browser executable (default: chromium on PATH)")
    args = ap.parse_args(argv)
    if args.synthetic:
        report = synthetic_report(args.synthetic)
    elif args.report:
        report = Path(args.report)
    else:
        ap.error("give REPORT.html or --synthetic OUT_DIR")
    try:
        res = check_report(report, screenshot=args.screenshot, browser=args.browser)
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{report}: {res['rendered']} of {res['images']} image(s) rendered, "
        f"{res['tables']} table(s), title {res['title']!r}"
        + (f"; screenshot {res['screenshot']}" if res["screenshot"] else "")
    )
    for b in res["broken"]:
        print(f"  broken image: {b}")
    return 0 if res["images"] and not res["broken"] else 1


if __name__ == "__main__":
    sys.exit(main())
