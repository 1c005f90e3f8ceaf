"""The evaluation report of a run: tables, per-gene values, figures and one HTML page.

A runner (``hexpress bench``, ``hexpress evaluate``, a notebook) fills one :class:`MethodResult`
per method and calls :func:`write_report`, which writes into ``out_dir``:

========================  ====================================================================
``results.csv`` / ``.md`` one row per method: MSE, MAE, PCC@F, PCC@S, PCC@M, n genes
                          PCC >= 0.30, n undefined, train / predict time (s)
``sections.csv``          the same metrics per method and held-out section
``gene_sets.csv``         per method and gene set (when gene sets are given)
``cross_scale.csv``       per method and scale (when cross-scale results are given)
``morans_i.csv``          Moran's I per gene and section (when truths with positions are given)
``predictability.csv``    Spearman rho of per-gene PCC with Moran's I and with abundance
``per_gene.json``         every per-gene value, ``null`` for undefined correlations
``figures/*.png``         the figures, also embedded in the HTML
``report.html``           self-contained page (images as data URIs): title, machine, date,
                          configuration, tables, figures with captions
========================  ====================================================================

Every file is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hexpress._files import write_file as _atomic_write
from hexpress.errors import ConfigError, OutputExistsError
from hexpress.eval.metrics import AGGREGATIONS, SectionMetrics, aggregate, count_column

__all__ = [
    "MethodResult",
    "json_safe",
    "machine_info",
    "markdown_table",
    "results_table",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """Everything measured for one method, as a runner fills it.

    Attributes:
        method: display name (unique within a report).
        sections: metrics of every held-out section, all over the same genes
            (from :func:`~hexpress.eval.metrics.section_metrics` or
            :func:`~hexpress.eval.matching.evaluate_anndata`).
        train_time_s: wall-clock training time in seconds (``None``: not trained here).
        predict_time_s: wall-clock prediction time in seconds over all held-out sections.
        predictions: section id -> predicted units (normalised ``X``), drawn in the maps.
        cross_scale: rows of :func:`~hexpress.eval.crossscale.cross_scale_table` for this method.
        config: the method's resolved configuration (shown in the report).
    """

    method: str
    sections: list[SectionMetrics]
    train_time_s: float | None = None
    predict_time_s: float | None = None
    predictions: dict = field(default_factory=dict)
    cross_scale: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.sections:
            raise ConfigError(f"method {self.method!r} has no section metrics to report.")

    @property
    def genes(self) -> list[str]:
        return list(self.sections[0].genes)

    def summary(self, how: str = "mean") -> dict:
        """One table row: :func:`~hexpress.eval.metrics.aggregate` plus the timings."""
        row = {"method": self.method}
        row.update(aggregate(self.sections, how))
        row["train_time_s"] = math.nan if self.train_time_s is None else float(self.train_time_s)
        row["predict_time_s"] = (
            math.nan if self.predict_time_s is None else float(self.predict_time_s)
        )
        return row

    def gene_pcc(self) -> pd.Series:
        """Per-gene PCC averaged over the sections where it is defined (``NaN`` if nowhere)."""
        stack = np.vstack([s.pcc for s in self.sections])
        ok = np.isfinite(stack)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(ok, stack, 0.0).sum(0) / ok.sum(0)
        mean[ok.sum(0) == 0] = np.nan
        return pd.Series(mean, index=self.genes, name=self.method)

    def gene_abundance(self) -> pd.Series:
        """Per-gene mean measured expression, averaged over sections."""
        vals = [s.mean_truth for s in self.sections if s.mean_truth is not None]
        if not vals:
            return pd.Series(np.nan, index=self.genes)
        return pd.Series(np.mean(vals, axis=0), index=self.genes, name="abundance")


MAIN_COLUMNS = ("method", "MSE", "MAE", "PCC@F", "PCC@S", "PCC@M")


def results_table(results: Sequence[MethodResult], how: str = "mean") -> pd.DataFrame:
    """One row per method: ``method, MSE, MAE, PCC@F, PCC@S, PCC@M, n_genes_PCC>=thr,
    n_undefined, train_time_s, predict_time_s, n_sections, n_genes, n_units``."""
    rows = [r.summary(how) for r in results]
    table = pd.DataFrame(rows)
    thr_col = count_column(results[0].sections[0].threshold)
    first = [*MAIN_COLUMNS, thr_col, "n_undefined", "train_time_s", "predict_time_s"]
    rest = [c for c in ("n_sections", "n_genes", "n_units") if c in table.columns]
    return table[first + rest]


# -- formatting ---------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        if float(v).is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (numbers to 4 decimals, ``–`` for missing / undefined)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def json_safe(obj):
    """``obj`` with numpy values made plain and non-finite floats made ``None`` (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def machine_info() -> dict[str, str]:
    """Where and when: host, OS, CPU, Python, hexpress / numpy / torch versions, UTC time."""
    from hexpress import __version__

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "hexpress": __version__,
        "numpy": np.__version__,
    }
    torch = sys.modules.get("torch")  # importing torch only to name it would cost seconds
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


# -- writing ------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(w: float = 6.0, h: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    return Figure(figsize=(w, h))


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        else:
            out.append((key, json.dumps(json_safe(v)) if not isinstance(v, str) else v))
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.meta{color:#555;font-size:.9em}.note{background:#fff8e0;padding:.4em .8em;border-left:3px solid #e0b000}
"""


def write_report(
    out_dir: str | Path,
    results: Sequence[MethodResult],
    *,
    title: str = "hexpress evaluation",
    config: Mapping | None = None,
    truths: Mapping | None = None,
    images: Mapping | None = None,
    map_genes: Sequence[str] | None = None,
    map_sections: Sequence[str] | None = None,
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    morans: Mapping[str, pd.DataFrame] | None = None,
    aggregation: str = "mean",
    notes: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the tables, per-gene JSON, figures and HTML report of a run.

    Args:
        out_dir: output folder (created).
        results: one :class:`MethodResult` per method, all evaluated on the same genes.
        title: page title.
        config: run configuration shown in the report (folds, genes, seeds...).
        truths: section id -> measured units, **normalised** like the predictions, with
            ``obsm["spatial"]``: used for the maps and, unless ``morans`` is given, Moran's I.
        images: section id -> slide image (:class:`~hexpress.io.image.SlideImage`) under the maps.
        map_genes: genes to map (default the 3 with the highest PCC of the first method).
        map_sections: sections to map (default the first section with a truth and a prediction).
        gene_sets: set name -> genes, summarised per method (see
            :func:`~hexpress.eval.genesets.evaluate_gene_sets`).
        morans: section id -> Moran's I table (:func:`~hexpress.eval.spatial.morans_i`).
        aggregation: how sections combine in ``results.csv`` (see
            :func:`~hexpress.eval.metrics.aggregate`).
        notes: lines shown at the top of the report (e.g. how the truth was normalised).
        overwrite: replace an existing report in ``out_dir``.

    Returns:
        Name -> path of every file written.
    """
    from hexpress.eval.figures import plot_cross_scale, plot_pcc_distribution, plot_pcc_vs_morans
    from hexpress.eval.genesets import evaluate_gene_sets
    from hexpress.eval.spatial import predictability, spatial_autocorrelation

    results = list(results)
    if not results:
        raise ConfigError("write_report needs at least one method result.")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}.")
    names = [r.method for r in results]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must be unique in a report, got {names}.")
    out = Path(out_dir)
    if (out / "report.html").exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already holds a report (report.html); choose another folder or overwrite."
        )
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    truths = dict(truths or {})
    images = dict(images or {})
    threshold = results[0].sections[0].threshold

    def put(name: str, data: bytes | str) -> Path:
        path = out / name
        _atomic_write(path, data)
        written[name] = path
        return path

    # tables
    table = results_table(results, aggregation)
    put("results.csv", table.to_csv(index=False))
    put("results.md", f"# {title}\n\n" + markdown_table(table))
    section_rows = []
    for r in results:
        for s in r.sections:
            section_rows.append({"method": r.method, "section": s.section, **s.summary()})
    sections_table = pd.DataFrame(section_rows)
    put("sections.csv", sections_table.to_csv(index=False))

    sets_table = None
    if gene_sets:
        parts = []
        for r in results:
            per = pd.concat(
                [evaluate_gene_sets(s, gene_sets, threshold=threshold) for s in r.sections]
            )
            g = per.groupby("gene_set", sort=False).mean(numeric_only=True).reset_index()
            g.insert(0, "method", r.method)
            parts.append(g)
        sets_table = pd.concat(parts, ignore_index=True)
        put("gene_sets.csv", sets_table.to_csv(index=False))

    cross = [r.cross_scale for r in results if r.cross_scale is not None and len(r.cross_scale)]
    cross_table = pd.concat(cross, ignore_index=True) if cross else None
    if cross_table is not None:
        put("cross_scale.csv", cross_table.to_csv(index=False))

    # Moran's I of the measured expression, per section, over the evaluated genes
    genes = results[0].genes
    morans = dict(morans or {})
    if not morans:
        for sec, truth in truths.items():
            if "spatial" in truth.obsm and truth.n_obs > 7:
                keep = [g for g in genes if g in truth.var_names]
                morans[sec] = spatial_autocorrelation(truth, genes=keep)
    morans_gene = None
    pred_table = None
    if morans:
        mtab = pd.concat([m[["I"]].rename(columns={"I": sec}) for sec, m in morans.items()], axis=1)
        put("morans_i.csv", mtab.to_csv(index_label="gene"))
        morans_gene = mtab.mean(axis=1, skipna=True)
        pred_rows = []
        for r in results:
            p = predictability(r.gene_pcc(), morans_gene, r.gene_abundance()).reset_index()
            p.insert(0, "method", r.method)
            pred_rows.append(p)
        pred_table = pd.concat(pred_rows, ignore_index=True)
        put("predictability.csv", pred_table.to_csv(index=False))

    per_gene = {
        "threshold": threshold,
        "aggregation": aggregation,
        "methods": {
            r.method: {
                "sections": {s.section: s.per_gene() for s in r.sections},
                "gene_mean_pcc": r.gene_pcc().to_dict(),
            }
            for r in results
        },
        "morans_i": {sec: m["I"].to_dict() for sec, m in morans.items()},
    }
    put("per_gene.json", json.dumps(json_safe(per_gene), indent=1, allow_nan=False))

    # figures
    figures: list[tuple[str, str, bytes]] = []  # file, caption, png

    def add_figure(name: str, fig, caption: str) -> None:
        png = _png(fig)
        put(f"figures/{name}", png)
        figures.append((f"figures/{name}", caption, png))

    gene_pccs = {r.method: r.gene_pcc() for r in results}
    fig = _new_figure(max(5.0, 1.5 * len(results) + 2.5), 4.0)
    plot_pcc_distribution(
        {m: g.to_numpy() for m, g in gene_pccs.items()},
        threshold=threshold,
        ax=fig.add_subplot(),
    )
    add_figure(
        "pcc_distribution.png",
        fig,
        "Per-gene Pearson correlation between predicted and measured expression (averaged over "
        f"held-out sections; undefined PCCs left out). Dashed line: PCC = {threshold:.2f}.",
    )
    # a method whose every PCC is undefined (a constant prediction) has nothing to scatter
    left_out = [m for m, g in gene_pccs.items() if not np.isfinite(g.to_numpy()).any()]
    scattered = [r for r in results if r.method not in left_out]
    if morans_gene is not None and scattered:
        n = len(scattered)
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig = _new_figure(5.0 * cols, 4.2 * rows)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, r in zip(axes, scattered, strict=False):
            plot_pcc_vs_morans(gene_pccs[r.method], morans_gene, ax=ax, label=r.method)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.tight_layout()
        add_figure(
            "pcc_vs_morans.png",
            fig,
            "Per-gene PCC against the Moran's I (k = 6 nearest neighbours) of the measured "
            "expression; Spearman's rho in each title. Spatially organised genes are easier "
            "to predict from histology when rho > 0."
            + (f" Not shown, every PCC undefined: {', '.join(left_out)}." if left_out else ""),
        )
    if cross_table is not None:
        fig = _new_figure(6.5, 4.2)
        plot_cross_scale(cross_table, ax=fig.add_subplot())
        add_figure(
            "cross_scale.png",
            fig,
            "PCC@M against the unit size the predictions were evaluated at (log scale), one "
            "line per method.",
        )
    maps_done = _maps(results, truths, images, map_genes, map_sections, add_figure, _new_figure)

    # HTML
    info = machine_info()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='meta'>"
        + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())
        + "</p>",
    ]
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Results</h2>")
    parts.append(
        f"<p>One row per method; sections combined by <b>{html.escape(aggregation)}</b>. "
        f"PCC@F / PCC@S / PCC@M: first quartile / median / mean of per-gene Pearson correlations; "
        f"{html.escape(count_column(threshold))}: genes with PCC ≥ {threshold:.2f}; n_undefined: "
        "genes constant in truth or prediction, whose PCC is undefined and left out. Times in "
        "seconds.</p>"
    )
    parts.append(_html_table(table))
    if len(sections_table) > len(results):
        parts.append("<h2>Per section</h2>" + _html_table(sections_table))
    if sets_table is not None:
        parts.append(
            "<h2>Gene sets</h2><p>PCC summaries within each gene set (mean over sections).</p>"
        )
        parts.append(_html_table(sets_table))
    if pred_table is not None:
        parts.append(
            "<h2>Predictability</h2><p>Spearman correlation of per-gene PCC with the Moran's I "
            "of the measured expression and with mean abundance.</p>" + _html_table(pred_table)
        )
    if cross_table is not None:
        parts.append("<h2>Cross-scale</h2>" + _html_table(cross_table))
    parts.append("<h2>Figures</h2>")
    for i, (rel, caption, png) in enumerate(figures, start=1):
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(rel)}'>"
            f"<figcaption>Figure {i}. {html.escape(caption)} "
            f"(<a href='{html.escape(rel)}'>{html.escape(rel)}</a>)</figcaption></figure>"
        )
    if not maps_done:
        parts.append(
            "<p class='meta'>No expression maps: no section had both a truth with positions and "
            "a prediction.</p>"
        )
    cfg_rows = _flatten(config or {})
    for r in results:
        cfg_rows += _flatten(r.config, f"{r.method}.")
    if cfg_rows:
        parts.append(
            "<h2>Configuration</h2>" + _html_table(pd.DataFrame(cfg_rows, columns=["key", "value"]))
        )
    parts.append("<h2>Files</h2><ul>")
    for name in sorted([*written, "report.html"]):
        if not name.startswith("figures/"):
            parts.append(f"<li><a href='{html.escape(name)}'>{html.escape(name)}</a></li>")
    parts.append("</ul></body></html>")
    put("report.html", "\n".join(parts))
    log.info("wrote the report to %s", out / "report.html")
    return written


def _maps(results, truths, images, map_genes, map_sections, add_figure, new_figure) -> bool:
    from hexpress.pl.maps import plot_truth_vs_prediction

    candidates = [sec for sec in truths if any(sec in r.predictions for r in results)]
    sections = list(map_sections) if map_sections is not None else candidates[:1]
    done = False
    for sec in sections:
        if sec not in truths:
            log.warning("no truth for section %s: no map", sec)
            continue
        preds = {r.method: r.predictions[sec] for r in results if sec in r.predictions}
        if not preds:
            log.warning("no prediction for section %s: no map", sec)
            continue
        truth = truths[sec]
        genes = list(map_genes) if map_genes else None
        if genes is None:
            pcc = results[0].gene_pcc().dropna().sort_values(ascending=False)
            genes = [g for g in pcc.index if g in truth.var_names][:3]
        genes = [
            g
            for g in genes
            if g in truth.var_names and all(g in p.var_names for p in preds.values())
        ]
        if not genes:
            log.warning(
                "section %s: none of the map genes is in the truth and every prediction", sec
            )
            continue
        fig = plot_truth_vs_prediction(truth, preds, genes, image=images.get(sec), fig=new_figure())
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(sec))
        add_figure(
            f"maps_{safe}.png",
            fig,
            f"Section {sec}: measured (left) and predicted expression of {', '.join(genes)} over "
            "the H&E; one colour scale per gene (row), shared by its panels.",
        )
        done = True
    return done
