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
from hexpress.errors import ConfigError, HexpressError, OutputExistsError
from hexpress.eval.metrics import AGGREGATIONS, SectionMetrics, aggregate, count_column

__all__ = [
    "MapPanel",
    "MethodResult",
    "ReportData",
    "compute_report",
    "render_report",
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
        maps: section id -> path of the dense map (``map.zarr``) predicted on it, drawn over
            the H&E (dense models).
        scale_predictions: cross-scale label -> predicted units (e.g. ``bin_8um``), drawn with
            the report's ``scale_truths``.
    """

    method: str
    sections: list[SectionMetrics]
    train_time_s: float | None = None
    predict_time_s: float | None = None
    predictions: dict = field(default_factory=dict)
    cross_scale: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    scale_predictions: dict = field(default_factory=dict)

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
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    buf = io.BytesIO()
    # a constrained layout already fits everything in; "tight" would draw the figure twice
    tight = not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
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
details{margin:.6em 0}summary{cursor:pointer;color:#335}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.meta{color:#555;font-size:.9em}.note{background:#fff8e0;padding:.4em .8em;border-left:3px solid #e0b000}
"""


@dataclass
class MapPanel:
    """One method on one held-out section, as the report draws it.

    Attributes:
        section: section id.
        method: method name.
        genes: genes drawn.
        truth: measured units (normalised) with positions.
        pred: predicted units.
        image: the slide, or ``None``.
        dense_map: path of the method's ``map.zarr`` on this section (dense models), or ``None``.
        scales: ``(scale name, truth, prediction)`` of square bins predicted on this slide.
    """

    section: str
    method: str
    genes: list[str]
    truth: object
    pred: object
    image: object = None
    dense_map: Path | None = None
    scales: list[tuple[str, object, object]] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything a report shows, computed by :func:`compute_report`; :func:`render_report`
    only formats and draws it."""

    title: str
    aggregation: str
    threshold: float
    results: list[MethodResult]
    table: pd.DataFrame
    sections_table: pd.DataFrame
    sets_table: pd.DataFrame | None
    cross_table: pd.DataFrame | None
    morans: dict[str, pd.DataFrame]
    morans_gene: pd.Series | None
    pred_table: pd.DataFrame | None
    per_gene: dict
    gene_pccs: dict[str, pd.Series]
    panels: list[MapPanel]
    notes: list[str]
    config_rows: list[tuple[str, str]]
    machine: dict[str, str]

    @property
    def ceiling_rows(self) -> list[str]:
        """Rows that are references rather than methods (named ``ceiling ...``)."""
        return [m for m in self.table["method"].astype(str) if m.lower().startswith("ceiling")]


def _check_results(results: Sequence[MethodResult], aggregation: str) -> list[MethodResult]:
    results = list(results)
    if not results:
        raise ConfigError("write_report needs at least one method result.")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}.")
    names = [r.method for r in results]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must be unique in a report, got {names}.")
    return results


def compute_report(
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
    scale_truths: Mapping | None = None,
    aggregation: str = "mean",
    notes: Sequence[str] = (),
) -> ReportData:
    """The numbers of a report: tables, Moran's I, predictability, per-gene values and what the
    maps show; nothing is written (:func:`render_report` writes them).

    Args:
        results: one :class:`MethodResult` per method, all evaluated on the same genes.
        title: page title.
        config: run configuration shown in the report (folds, genes, seeds...).
        truths: section id -> measured units, **normalised** like the predictions, with
            ``obsm["spatial"]``: used for the maps and, unless ``morans`` is given, Moran's I.
        images: section id -> slide image (:class:`~hexpress.io.image.SlideImage`) under the maps.
        map_genes: genes to map (default the 3 with the highest PCC of the first method).
        map_sections: sections to map (default every section with a truth and a prediction).
        gene_sets: set name -> genes, summarised per method (see
            :func:`~hexpress.eval.genesets.evaluate_gene_sets`).
        morans: section id -> Moran's I table (:func:`~hexpress.eval.spatial.morans_i`).
        scale_truths: cross-scale label -> measured units (raw counts or normalised) matching
            :attr:`MethodResult.scale_predictions`; square bins of 8 µm and more are mapped.
        aggregation: how sections combine in ``results.csv`` (see
            :func:`~hexpress.eval.metrics.aggregate`).
        notes: lines shown at the top of the report (e.g. how the truth was normalised).

    Returns:
        :class:`ReportData`.
    """
    from hexpress.eval.genesets import evaluate_gene_sets
    from hexpress.eval.spatial import predictability, spatial_autocorrelation

    results = _check_results(results, aggregation)
    truths = dict(truths or {})
    threshold = results[0].sections[0].threshold
    table = results_table(results, aggregation)
    sections_table = pd.DataFrame(
        [{"method": r.method, "section": s.section, **s.summary()}
         for r in results for s in r.sections]
    )  # fmt: skip
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
    cross = [r.cross_scale for r in results if r.cross_scale is not None and len(r.cross_scale)]
    cross_table = pd.concat(cross, ignore_index=True) if cross else None

    # Moran's I of the measured expression, per section, over the evaluated genes
    genes = results[0].genes
    morans = dict(morans or {})
    if not morans:
        for sec, truth in truths.items():
            if "spatial" in truth.obsm and truth.n_obs > 7:
                keep = [g for g in genes if g in truth.var_names]
                morans[sec] = spatial_autocorrelation(truth, genes=keep)
    gene_pccs = {r.method: r.gene_pcc() for r in results}
    morans_gene = pred_table = None
    if morans:
        mtab = pd.concat([m[["I"]].rename(columns={"I": sec}) for sec, m in morans.items()], axis=1)
        morans_gene = mtab.mean(axis=1, skipna=True)
        pred_rows = []
        for r in results:
            p = predictability(gene_pccs[r.method], morans_gene, r.gene_abundance()).reset_index()
            p.insert(0, "method", r.method)
            pred_rows.append(p)
        pred_table = pd.concat(pred_rows, ignore_index=True)
    per_gene = {
        "threshold": threshold,
        "aggregation": aggregation,
        "methods": {
            r.method: {
                "sections": {s.section: s.per_gene() for s in r.sections},
                "gene_mean_pcc": gene_pccs[r.method].to_dict(),
            }
            for r in results
        },
        "morans_i": {sec: m["I"].to_dict() for sec, m in morans.items()},
    }
    cfg_rows = _flatten(config or {})
    for r in results:
        cfg_rows += _flatten(r.config, f"{r.method}.")
    panels = _map_panels(
        results, truths, dict(images or {}), map_genes, map_sections, dict(scale_truths or {})
    )
    return ReportData(
        title=title, aggregation=aggregation, threshold=threshold, results=results, table=table,
        sections_table=sections_table, sets_table=sets_table, cross_table=cross_table,
        morans=morans, morans_gene=morans_gene, pred_table=pred_table, per_gene=per_gene,
        gene_pccs=gene_pccs, panels=panels, notes=list(notes), config_rows=cfg_rows,
        machine=machine_info(),
    )  # fmt: skip


def _map_panels(results, truths, images, map_genes, map_sections, scale_truths) -> list[MapPanel]:
    """Every method on every held-out section with a truth (or only ``map_sections``)."""
    from hexpress.eval.matching import prepare_truth

    candidates = [sec for sec in truths if any(sec in r.predictions for r in results)]
    sections = list(map_sections) if map_sections is not None else candidates
    first = results[0].gene_pcc().dropna().sort_values(ascending=False)
    panels = []
    for sec in sections:
        if sec not in truths:
            log.warning("no truth for section %s: no map", sec)
            continue
        truth = truths[sec]
        preds = {r.method: r.predictions[sec] for r in results if sec in r.predictions}
        if not preds:
            log.warning("no prediction for section %s: no map", sec)
            continue
        # one gene list for every method, so that their maps compare
        genes = list(map_genes) if map_genes else [g for g in first.index if g in truth.var_names]
        genes = [
            g for g in genes
            if g in truth.var_names and all(g in p.var_names for p in preds.values())
        ][:3]  # fmt: skip
        if not genes:
            log.warning("section %s: none of the map genes is in the truth and every prediction",
                        sec)  # fmt: skip
            continue
        for r in results:
            if sec not in r.predictions:
                continue
            dense = r.maps.get(sec)
            dense = Path(dense) if dense is not None and Path(dense).exists() else None
            scales = []
            for name, spred in r.scale_predictions.items():
                st = scale_truths.get(name)
                if st is None or not _square_bins(spred, min_um=8.0):
                    continue
                if not all(g in spred.var_names and g in st.var_names for g in genes):
                    continue
                st = st[spred.obs_names.intersection(st.obs_names)]
                st, _ = prepare_truth(st, spred, genes=genes, name=f"{name} truth")
                scales.append((name, st, spred))
            panels.append(MapPanel(sec, r.method, genes, truth, r.predictions[sec],
                                   images.get(sec), dense, scales))  # fmt: skip
    return panels


def _square_bins(adata, *, min_um: float) -> bool:
    from hexpress import _keys as K

    if K.GEOMETRY not in adata.obs or K.SIZE_UM not in adata.obs or K.SPATIAL not in adata.obsm:
        return False
    geo = adata.obs[K.GEOMETRY].astype(str)
    return bool((geo == K.SQUARE).all() and (adata.obs[K.SIZE_UM] >= min_um).all())


def write_report(
    out_dir: str | Path,
    results: Sequence[MethodResult],
    *,
    overwrite: bool = False,
    **options,
) -> dict[str, Path]:
    """Write the tables, per-gene JSON, figures and HTML report of a run
    (:func:`compute_report`, then :func:`render_report`).

    Args:
        out_dir: output folder (created).
        results: one :class:`MethodResult` per method, all evaluated on the same genes.
        overwrite: replace an existing report in ``out_dir``.
        **options: what the report holds, as for :func:`compute_report` (``title``,
            ``config``, ``truths``, ``images``, ``map_genes``, ``map_sections``, ``gene_sets``,
            ``morans``, ``scale_truths``, ``aggregation``, ``notes``).

    Returns:
        Name -> path of every file written.
    """
    out = Path(out_dir)
    if (out / "report.html").exists() and not overwrite:  # before any work
        raise OutputExistsError(
            f"{out} already holds a report (report.html); choose another folder or pass "
            "--overwrite (overwrite=True)."
        )
    return render_report(compute_report(results, **options), out)


def render_report(data: ReportData, out_dir: str | Path) -> dict[str, Path]:
    """Write ``data`` (:func:`compute_report`) as tables, per-gene JSON, figures and the HTML
    page into ``out_dir``; returns name -> path of every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, payload: bytes | str) -> Path:
        path = out / name
        _atomic_write(path, payload)
        written[name] = path
        return path

    put("results.csv", data.table.to_csv(index=False))
    put("results.md", f"# {data.title}\n\n" + markdown_table(data.table))
    put("sections.csv", data.sections_table.to_csv(index=False))
    if data.sets_table is not None:
        put("gene_sets.csv", data.sets_table.to_csv(index=False))
    if data.cross_table is not None:
        put("cross_scale.csv", data.cross_table.to_csv(index=False))
    if data.morans:
        mtab = pd.concat(
            [m[["I"]].rename(columns={"I": sec}) for sec, m in data.morans.items()], axis=1
        )
        put("morans_i.csv", mtab.to_csv(index_label="gene"))
    if data.pred_table is not None:
        put("predictability.csv", data.pred_table.to_csv(index=False))
    put("per_gene.json", json.dumps(json_safe(data.per_gene), indent=1, allow_nan=False))

    figures: list[tuple[str, str, str, bytes]] = []  # group, file, caption, png

    def add_figure(group: str, name: str, fig, caption: str) -> None:
        png = _png(fig)
        put(f"figures/{name}", png)
        figures.append((group, f"figures/{name}", caption, png))

    _summary_figures(data, add_figure)
    _map_figures(data, add_figure)
    put("report.html", _html(data, figures, written))
    log.info("wrote the report to %s", out / "report.html")
    return written


def _summary_figures(data: ReportData, add_figure) -> None:
    from hexpress.eval.figures import plot_cross_scale, plot_pcc_distribution, plot_pcc_vs_morans

    threshold, gene_pccs = data.threshold, data.gene_pccs
    fig = _new_figure(max(5.0, 1.5 * len(gene_pccs) + 2.5), 4.0)
    plot_pcc_distribution(
        {m: g.to_numpy() for m, g in gene_pccs.items()}, threshold=threshold,
        ax=fig.add_subplot(),
    )  # fmt: skip
    add_figure(
        "Summary", "pcc_distribution.png", fig,
        "Per-gene Pearson correlation between predicted and measured expression (averaged over "
        f"held-out sections; undefined PCCs left out). Dashed line: PCC = {threshold:.2f}.",
    )  # fmt: skip
    # a method whose every PCC is undefined (a constant prediction) has nothing to scatter
    left_out = [m for m, g in gene_pccs.items() if not np.isfinite(g.to_numpy()).any()]
    scattered = [m for m in gene_pccs if m not in left_out]
    if data.morans_gene is not None and scattered:
        n = len(scattered)
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig = _new_figure(5.0 * cols, 4.2 * rows)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, m in zip(axes, scattered, strict=False):
            plot_pcc_vs_morans(gene_pccs[m], data.morans_gene, ax=ax, label=m)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.tight_layout()
        add_figure(
            "Summary", "pcc_vs_morans.png", fig,
            "Per-gene PCC against the Moran's I (k = 6 nearest neighbours) of the measured "
            "expression; Spearman's rho in each title. Spatially organised genes are easier "
            "to predict from histology when rho > 0."
            + (f" Not shown, every PCC undefined: {', '.join(left_out)}." if left_out else ""),
        )  # fmt: skip
    if data.cross_table is not None:
        fig = _new_figure(6.5, 4.2)
        plot_cross_scale(data.cross_table, ax=fig.add_subplot())
        add_figure(
            "Summary", "cross_scale.png", fig,
            "PCC@M against the unit size the predictions were evaluated at (log scale), one "
            "line per method.",
        )  # fmt: skip


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _map_figures(data: ReportData, add_figure) -> None:
    from hexpress import _keys as K
    from hexpress.pl.maps import normalization_label, plot_dense_map, plot_truth_vs_prediction

    for p in data.panels:
        group = f"Section {p.section}: {p.method}"
        stem = f"{_safe(p.section)}_{_safe(p.method)}"
        label = normalization_label(p.truth.uns.get(K.UNS, {}).get(K.NORMALIZATION))
        if p.dense_map is not None:
            from hexpress.infer.dense_map import open_dense_map

            try:
                dm = open_dense_map(p.dense_map)
            except HexpressError as e:
                log.warning("cannot open the dense map %s (%s): not drawn", p.dense_map, e)
            else:
                fig = plot_dense_map(dm, p.genes, image=p.image, title=p.method,
                                     fig=_new_figure())  # fmt: skip
                add_figure(
                    group, f"dense_{stem}.png", fig,
                    f"Section {p.section}, {p.method}: the predicted dense map of "
                    f"{', '.join(p.genes)} over the H&E, cropped to the tissue (glass outside "
                    f"the tissue mask left clear), shown in blocks of at least 16 µm (the map "
                    f"itself has {dm.map_mpp:g} µm cells); values {label}, colour scale per gene from its 1st to "
                    "99th percentile.",
                )  # fmt: skip
        fig = plot_truth_vs_prediction(p.truth, p.pred, p.genes, image=p.image, method=p.method,
                                       fig=_new_figure())  # fmt: skip
        add_figure(
            group, f"maps_{stem}.png", fig,
            f"Section {p.section}, {p.method}, at the measured units: measured expression; the "
            "prediction on the same colour scale (do the levels agree?); the prediction on its "
            "own 1st–99th percentile scale (is the pattern right, whatever its range?); and "
            f"measured against predicted per unit, dashed line y = x. Values {label}.",
        )  # fmt: skip
        for name, st, spred in p.scales:
            win_st, win_pred, side_um = _bin_window(st, spred)
            fig = plot_truth_vs_prediction(win_st, win_pred, p.genes, image=p.image,
                                           method=p.method, fig=_new_figure())  # fmt: skip
            add_figure(
                group, f"bins_{_safe(name)}_{stem}.png", fig,
                f"{name}, {p.method}: the {win_pred.n_obs} predicted bins (of {spred.n_obs}) in a "
                f"{_BIN_WINDOW * side_um:g} µm window at the centre of the section, drawn as an "
                "image on their grid (empty where no bin was predicted: the bins are a random "
                f"subsample). Panels as above; values {label}.",
            )  # fmt: skip


_BIN_WINDOW = 40  # bins along each side of the window the bin maps show


def _bin_window(truth, pred):
    """The units of ``truth`` and ``pred`` inside a square of :data:`_BIN_WINDOW` bins around
    the predicted bins' median position, so that single bins are visible; and the bin side."""
    from hexpress import _keys as K

    side_um = float(pred.obs[K.SIZE_UM].iloc[0])
    mpp = float(pred.uns.get(K.UNS, {}).get("mpp") or truth.uns.get(K.UNS, {}).get("mpp") or 0)
    if not mpp:
        return truth, pred, side_um
    half = _BIN_WINDOW * side_um / mpp / 2
    centre = np.median(np.asarray(pred.obsm[K.SPATIAL])[:, :2], axis=0)

    def inside(a):
        d = np.abs(np.asarray(a.obsm[K.SPATIAL])[:, :2] - centre)
        return a[(d <= half).all(axis=1)]

    win_pred = inside(pred)
    return (truth, pred, side_um) if win_pred.n_obs < 2 else (inside(truth), win_pred, side_um)


_HOW_TO_READ = (
    "<p><b>How to read this.</b> Every number compares predicted with measured expression of "
    "the same units (spots, bins or cells), both in the normalised space of training, "
    "{label}: MSE and MAE are errors in that log space, not in counts. PCC is the Pearson "
    "correlation of one gene over the units of a section; PCC@F / PCC@S / PCC@M are the first "
    "quartile, median and mean over genes. A gene constant in the truth has no PCC and is "
    "counted in n_undefined instead. At fine scales (8 and 2 µm bins) a random subsample of "
    "the bins is scored (n_units says how many), so the bin maps show those bins only. {ceiling}"
    "</p>"
)
_CEILING = (
    "The row{s} {names} {are} not a method but a reference: each unit predicted from the "
    "measured expression of its neighbours in the same section (itself left out). It says "
    "how much spatially smooth signal the data hold; read a method's PCC@M as a fraction of "
    "it. "
)


def _html(data: ReportData, figures, written: dict[str, Path]) -> str:
    from hexpress import _keys as K
    from hexpress.pl.maps import normalization_label

    esc = html.escape
    norm = None
    for p in data.panels:
        norm = p.truth.uns.get(K.UNS, {}).get(K.NORMALIZATION)
        break
    label = normalization_label(norm) if norm else "log1p(counts / total × scale)"
    ceiling = data.ceiling_rows
    ceiling_text = (
        _CEILING.format(
            s="s" if len(ceiling) > 1 else "",
            are="are" if len(ceiling) > 1 else "is",
            names=", ".join(f"“{c}”" for c in ceiling),
        )  # fmt: skip
        if ceiling
        else ""
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(data.title)}</h1>",
        "<p class='meta'>"
        + " · ".join(f"{esc(k)}: {esc(str(v))}" for k, v in data.machine.items())
        + "</p>",
    ]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in data.notes]
    parts.append(_HOW_TO_READ.format(label=esc(label), ceiling=esc(ceiling_text)))
    parts.append("<h2>Results</h2>")
    parts.append(
        f"<p>One row per method; sections combined by <b>{esc(data.aggregation)}</b>. "
        f"{esc(count_column(data.threshold))}: genes with PCC ≥ {data.threshold:.2f}. "
        "Times in seconds.</p>"
    )
    parts.append(_html_table(data.table))
    if len(data.sections_table) > len(data.results):
        parts.append("<h2>Per section</h2>" + _html_table(data.sections_table))
    if data.sets_table is not None:
        parts.append(
            "<h2>Gene sets</h2><p>PCC summaries within each gene set (mean over sections).</p>"
        )
        parts.append(_html_table(data.sets_table))
    if data.pred_table is not None:
        parts.append(
            "<h2>Predictability</h2><p>Spearman correlation of per-gene PCC with the Moran's I "
            "of the measured expression and with mean abundance.</p>" + _html_table(data.pred_table)
        )
    if data.cross_table is not None:
        parts.append("<h2>Cross-scale</h2>" + _html_table(data.cross_table))
    group = None
    for i, (g, rel, caption, png) in enumerate(figures, start=1):
        if g != group:
            heading = g if g != "Summary" else "Figures"
            anchor = "".join(c if c.isalnum() else "-" for c in heading.lower())
            parts.append(f"<h2 id='{esc(anchor)}'>{esc(heading)}</h2>")
            group = g
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img src='data:image/png;base64,{b64}' alt='{esc(rel)}'>"
            f"<figcaption>Figure {i}. {esc(caption)} "
            f"(<a href='{esc(rel)}'>{esc(rel)}</a>)</figcaption></figure>"
        )
    if not data.panels:
        parts.append(
            "<p class='meta'>No expression maps: no section had both a truth with positions and "
            "a prediction.</p>"
        )
    if data.config_rows:
        parts.append(
            f"<h2>Configuration</h2><details><summary>{len(data.config_rows)} settings (click to "
            "show)</summary>"
            + _html_table(pd.DataFrame(data.config_rows, columns=["key", "value"]))
            + "</details>"
        )
    parts.append("<h2>Files</h2><ul>")
    for name in sorted([*written, "report.html"]):
        if not name.startswith("figures/"):
            parts.append(f"<li><a href='{esc(name)}'>{esc(name)}</a></li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)
