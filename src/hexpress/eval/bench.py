"""The benchmark runner: several methods over the same folds, genes and seed, side by side.

``hexpress bench CONFIG`` (or :func:`run_bench`) trains every method of a benchmark config on
every fold, predicts the fold's held-out sections at their measured units, evaluates them against
the measurement and writes one report per fold plus a combined table. A config looks like::

    name: HER2ST leave-one-patient-out
    out_dir: runs/bench_her2st
    seed: 0
    overrides: [run.threads=2]               # for every method and fold
    folds:                                   # each fold: overrides of every method's config
      - {name: test_A, overrides: [data.split=test_A]}
      - {name: test_C, overrides: [data.split=test_C]}
    methods:                                 # training recipes (paths relative to this file)
      - {name: PixNet, recipe: pixnet_her2st.yaml, overrides: [optim.max_steps=400]}
      - {name: Training mean, recipe: mean_her2st.yaml}
    predict: {batch_size: 8, tta: false}
    report: {map_genes: [ERBB2, GNAS], gene_sets: [sets.gmt], n_heg: 50, n_hvg: 50}
    cross_scale:                             # optional: the same models at other geometries
      max_units: 20000
      scales:
        - {name: spot_100um, path: data/sim1/legacy_st, format: legacy-st, section: SIM1}
        - {name: bin_8um, path: data/sim1/visium_hd/binned_outputs, format: visium-hd,
           options: {bin_um: 8}}

Every method of a fold is trained with the same data section (genes chosen on the fold's
training sections only, the same normalisation and seed), so the rows of a table compare models,
not data. Training runs live in ``out_dir/runs/<fold>/<method>/`` and predictions in
``out_dir/predictions/<fold>/<method>/<section>/``; a run or prediction that finished is reused
and a killed training run resumes, so rerunning the same command after an interruption redoes
only what is missing. After changing one method's recipe, ``hexpress bench CONFIG --redo NAME``
trains and predicts that method again on every fold and rewrites the tables, reusing the other
methods' runs. ``out_dir`` then holds:

==========================  =============================================================
``bench.yaml``              the resolved benchmark config
``results.csv`` / ``.md``   one row per fold and method, and per method over all folds; the
                            neighbour ceiling (:mod:`hexpress.eval.ceiling`) is a row with
                            ``is_method`` false: a reference, never a method to beat
``cross_scale.csv`` / .md   one row per method and scale (when ``cross_scale`` is given)
``<fold>/``                 that fold's report (:func:`hexpress.eval.report.write_report`)
``report.html``             the combined table and links to the fold reports (one fold: the
                            fold's report itself is written here)
==========================  =============================================================
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hexpress._files import write_file as _write_text
from hexpress.errors import (
    ConfigError,
    DataMismatchError,
    GeometryError,
    InputFileError,
    OutputExistsError,
)

__all__ = [
    "BenchConfig",
    "BenchResult",
    "CrossScaleConfig",
    "FoldConfig",
    "MethodConfig",
    "PredictConfig",
    "ReportConfig",
    "ScaleConfig",
    "SimulateConfig",
    "load_bench_config",
    "run_bench",
]

log = logging.getLogger(__name__)


@dataclass
class MethodConfig:
    """One method: a training recipe and what to change in it.

    Attributes:
        name: display name (unique in the benchmark).
        recipe: training recipe YAML (relative to the benchmark file, else the current folder).
        config: training config values given inline (over the recipe).
        overrides: ``section.key=value`` overrides (over ``config``).
    """

    name: str = ""
    recipe: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("methods[]: every method needs a name.")
        if self.recipe is None and not self.config:
            raise ConfigError(f"method {self.name!r}: give a recipe file or an inline config.")


@dataclass
class FoldConfig:
    """One fold: overrides applied to every method (e.g. ``data.split=test_A``)."""

    name: str = "all"
    overrides: list[str] = field(default_factory=list)


@dataclass
class ScaleConfig:
    """Measured units of a test slide at one scale, read with a registered reader.

    Attributes:
        name: label in tables (``spot_100um``, ``bin_8um``...).
        path, format, section, image, mpp, options: as in ``data.samples`` of a training config.
    """

    name: str = ""
    path: str = ""
    format: str = ""
    section: str | None = None
    image: str | None = None
    mpp: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.name and self.path and self.format):
            raise ConfigError(
                "cross_scale.scales[]: every scale needs a name, a path and a format "
                f"(got name={self.name!r}, path={self.path!r}, format={self.format!r})."
            )


@dataclass
class CrossScaleConfig:
    """The trained models evaluated at other geometries of a test slide.

    Attributes:
        scales: the measured units at each scale.
        max_units: at most this many units per scale, drawn at random once (seeded) and the same
            for every method (the 2 µm bins of a slide run into millions); 0: all.
    """

    scales: list[ScaleConfig] = field(default_factory=list)
    max_units: int = 20000


@dataclass
class PredictConfig:
    """Inference settings shared by every method (see :class:`hexpress.infer.PredictOptions`):
    ``batch_size`` crops per forward pass for patch models, ``tile_batch_size`` tiles for dense
    models."""

    batch_size: int = 8
    tile_batch_size: int = 1  # dense models: tiles per forward pass (a 2048 px tile is large)
    tta: bool = False
    device: str = "auto"
    tile_px: int | None = None
    detect_tissue: bool = False


@dataclass
class ReportConfig:
    """What the reports show.

    Attributes:
        title: report title (default the benchmark's name).
        map_genes: genes drawn as truth vs prediction maps (default the best-predicted ones).
        gene_sets: gene set files (``.gmt`` or one gene per line) summarised per method.
        n_heg, n_hvg: sizes of the HEG / HVG sets chosen on the training sections (0: none).
        aggregation: how sections combine into one row (``mean``, ``pooled``, ``gene_mean``).
        ceiling: add the neighbour ceiling of the held-out sections (:mod:`hexpress.eval.ceiling`)
            as a row with ``is_method`` false: a reference, never a method to beat.
    """

    title: str | None = None
    map_genes: list[str] = field(default_factory=list)
    gene_sets: list[str] = field(default_factory=list)
    n_heg: int = 50
    n_hvg: int = 50
    aggregation: str = "mean"
    ceiling: bool = True


@dataclass
class SimulateConfig:
    """A synthetic slide the benchmark makes first (``hexpress simulate``), unless ``out``
    already holds it.

    Attributes:
        out: output folder of the slide.
        seed, size_mm, mpp, n_genes, panel_seed: see :class:`hexpress.sim.SimConfig`.
    """

    out: str = ""
    seed: int = 0
    size_mm: float = 2.0
    mpp: float = 0.5
    n_genes: int = 300
    panel_seed: int = 0

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("simulate[]: every slide needs an out folder.")


@dataclass
class BenchConfig:
    """A benchmark: methods x folds, one seed, one output folder."""

    name: str = "benchmark"
    out_dir: str = "runs/bench"
    seed: int = 0
    simulate: list[SimulateConfig] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    folds: list[FoldConfig] = field(default_factory=lambda: [FoldConfig()])
    methods: list[MethodConfig] = field(default_factory=list)
    predict: PredictConfig = field(default_factory=PredictConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    cross_scale: CrossScaleConfig | None = None
    base_dir: str | None = None  # where relative recipe paths resolve (the config's folder)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("the benchmark names no methods; add a methods: list.")
        for what, names in (
            ("method", [m.name for m in self.methods]),
            ("fold", [f.name for f in self.folds]),
        ):
            if len(set(names)) != len(names):
                raise ConfigError(f"{what} names must be unique, got {names}.")
            slugs = [_slug(n) for n in names]
            if len(set(slugs)) != len(slugs):
                raise ConfigError(f"{what} names {names} give the same folder names {slugs}.")
        if not self.folds:
            raise ConfigError("the benchmark needs at least one fold (folds: [{name: all}]).")


@dataclass
class BenchResult:
    """What :func:`run_bench` wrote: the combined tables and every file by name."""

    table: pd.DataFrame
    cross_scale: pd.DataFrame | None
    files: dict[str, Path]
    out_dir: Path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("_") or "x"


def _method_dir(out: Path, part: str, fold: str, method: str) -> Path:
    """Where a method's ``part`` (``runs`` or ``predictions``) of one fold lives in ``out``."""
    return out / part / _slug(fold) / _slug(method)


def load_bench_config(path: str | Path | dict, overrides: Sequence[str] = ()) -> BenchConfig:
    """Read a benchmark config (a YAML file or a dict) and apply ``key.sub=value`` overrides.

    Raises:
        InputFileError: the file does not exist.
        ConfigError: unknown keys (the message lists the valid ones) or invalid values.
    """
    from hexpress._config import apply_overrides, build_dataclass, read_yaml

    if isinstance(path, dict):
        values, where, base = dict(path), "bench config", None
    else:
        values, where, base = read_yaml(path), str(path), str(Path(path).resolve().parent)
    try:
        values = apply_overrides(values, list(overrides), root=BenchConfig)
        values.setdefault("base_dir", base)
        return build_dataclass(BenchConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _recipe_path(recipe: str, base_dir: str | None) -> Path:
    p = Path(recipe).expanduser()
    if not p.is_absolute() and base_dir and (Path(base_dir) / p).is_file():
        return Path(base_dir) / p
    if p.is_file():
        return p
    raise InputFileError(
        f"training recipe {recipe!r} not found (looked beside the benchmark file"
        f"{' in ' + base_dir if base_dir else ''} and in the current folder)."
    )


def method_train_config(bench: BenchConfig, method: MethodConfig, fold: FoldConfig, run_dir: Path):
    """The resolved training config of ``method`` on ``fold``: recipe < inline config < the
    benchmark's, fold's and method's overrides < the run folder and seed of the benchmark."""
    from hexpress._config import read_yaml
    from hexpress.train.config import apply_overrides, config_from_dict

    values = read_yaml(_recipe_path(method.recipe, bench.base_dir)) if method.recipe else {}
    values = _merge(values, method.config)
    fixed = [f"run.out_dir={run_dir}", f"run.seed={bench.seed}"]
    try:
        values = apply_overrides(
            values, [*bench.overrides, *fold.overrides, *method.overrides, *fixed]
        )
        return config_from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"method {method.name!r}, fold {fold.name!r}: {e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _train_or_reuse(cfg, method: str = "") -> tuple[Path, float, bool]:
    """``(checkpoint, train seconds, reused)``: a finished run folder is reused, a killed one
    resumed, an empty one trained."""
    from hexpress._config import read_yaml
    from hexpress.train import train
    from hexpress.train.trainer import config_changes

    run = Path(cfg.run.out_dir)
    summary, final = run / "summary.json", run / "model.json"
    if summary.is_file() and final.is_file():
        saved = run / "config.yaml"
        diff = config_changes(read_yaml(saved), cfg) if saved.is_file() else []
        if diff:
            raise ConfigError(
                f"the finished run {run} was trained with other settings: {', '.join(diff[:8])}."
                + (f" Pass --redo {method!r} to train that method again with these settings"
                   if method else " Remove that folder to train it again with these settings")
                + ", or choose another out_dir."
            )  # fmt: skip
        wall = json.loads(summary.read_text()).get("wall_s")
        log.info("reusing the finished run %s", run)
        return final, float(wall) if wall is not None else math.nan, True
    resume = (run / "state.json").is_file()
    result = train(cfg, resume=resume)
    return Path(result.checkpoint), float(result.wall_s), False


def _redo_methods(config: BenchConfig, names: Sequence[str]) -> list[str]:
    """The benchmark's method names that ``names`` ask to redo (case and spacing ignored)."""
    by_key = {_slug(m.name).lower(): m.name for m in config.methods}
    out, unknown = [], []
    for name in names:
        hit = by_key.get(_slug(name).lower())
        if hit is None:
            unknown.append(name)
        elif hit not in out:
            out.append(hit)
    if unknown:
        raise ConfigError(
            f"--redo: no method named {', '.join(map(repr, unknown))} in this benchmark; its "
            f"methods are {', '.join(repr(m.name) for m in config.methods)}."
        )
    return out


def _remove_methods(out: Path, config: BenchConfig, names: Sequence[str], say) -> None:
    """Remove the runs and predictions of ``names`` on every fold, and the tables they fed."""
    for fold in config.folds:
        for name in names:
            for part in ("runs", "predictions"):
                where = _method_dir(out, part, fold.name, name)
                if where.exists():
                    say(f"[{fold.name}] {name}: removing {where} to redo it")
                    shutil.rmtree(where)
    for table in ("results.csv", "results.md", "cross_scale.csv", "cross_scale.md"):
        (out / table).unlink(missing_ok=True)


def _subsample(n: int, max_units: int, seed: int) -> np.ndarray | None:
    if not max_units or n <= max_units:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_units, replace=False))


class _Samples:
    """Test samples read once per benchmark (many methods predict the same sections)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def test_samples(self, data_cfg) -> dict:
        from hexpress.train.data import read_samples

        out = {}
        for sid in data_cfg.test:
            src = data_cfg.samples.get(sid)
            key = json.dumps(
                [sid, data_cfg.format, data_cfg.root, asdict(src) if src else None,
                 [asdict(g) for g in data_cfg.geometries[:1]]],
                sort_keys=True, default=str,
            )  # fmt: skip
            if key not in self._cache:
                one = replace(data_cfg, geometries=data_cfg.geometries[:1])
                self._cache[key] = read_samples(one, [sid])[sid][0]
            out[sid] = self._cache[key]
        return out

    def scale(self, sc: ScaleConfig):
        from hexpress.io import read_sample

        key = json.dumps(asdict(sc), sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = read_sample(
                str(Path(sc.path).expanduser()), sc.format, section=sc.section, mpp=sc.mpp,
                image=None if sc.image is None else str(Path(sc.image).expanduser()),
                **sc.options,
            )  # fmt: skip
        return self._cache[key]


def _simulate(sim: SimulateConfig, say) -> None:
    from hexpress.sim import SimConfig, simulate
    from hexpress.sim.writers import write_all

    out = Path(sim.out)
    if (out / "manifest.json").is_file():  # written last: the slide is complete
        log.info("reusing the simulated slide in %s", out)
        return
    say(f"simulating a {sim.size_mm:g} mm slide (seed {sim.seed}) into {out}")
    slide = simulate(
        SimConfig(
            size_mm=sim.size_mm,
            mpp=sim.mpp,
            n_genes=sim.n_genes,
            seed=sim.seed,
            panel_seed=sim.panel_seed,
        )  # fmt: skip
    )
    write_all(slide, out, overwrite=True)


def _predict(info, sample, units_list, out_dir: Path, bench: BenchConfig) -> tuple[dict, float]:
    """Predict ``units_list`` on the sample's slide into ``out_dir`` (reused when finished);
    returns ``({units name: AnnData}, seconds)``."""
    import anndata as ad

    from hexpress.infer import PredictOptions, predict_one

    p = bench.predict
    batch = p.tile_batch_size if info.kind == "dense" else p.batch_size
    opts = PredictOptions(
        batch_size=batch, tta=p.tta, device=p.device, tile_px=p.tile_px,
        detect_tissue=p.detect_tissue, overwrite=True,
    )  # fmt: skip
    summary = out_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        names = set(s.get("units", {}))
        changed = _changed_predict_settings(s, info, opts)
        if changed:
            log.info("predicting %s again: %s changed", out_dir, ", ".join(changed))
        elif all(u.name in names for u in units_list):
            log.info("reusing the predictions in %s", out_dir)
            preds = {u.name: ad.read_h5ad(out_dir / f"{u.name}.h5ad") for u in units_list}
            return preds, float(s.get("seconds_total", math.nan))
    s = predict_one(sample.image, info, out_dir, opts, units=units_list)
    preds = {u.name: ad.read_h5ad(out_dir / f"{u.name}.h5ad") for u in units_list}
    return preds, float(s["seconds_total"])


# what makes earlier predictions of the same units stale: the weights and how they were applied
_PREDICT_KEYS = ("tta", "tile_px", "margin", "precision", "runtime", "mpp", "detect_tissue")


def _changed_predict_settings(summary: dict, info, opts) -> list[str]:
    """What differs between a finished prediction's ``summary.json`` and this one's settings."""
    from dataclasses import asdict

    old = summary.get("options") or {}
    new = asdict(opts)
    changed = [k for k in _PREDICT_KEYS if old.get(k) != new.get(k)]
    before = summary.get("checkpoint") or {}
    if before.get("sha256") != info.identity.get("sha256"):
        changed.insert(0, "the checkpoint")
    return changed


def _units(sample, name: str, max_units: int, seed: int):
    from hexpress.infer import units_from_anndata

    u = units_from_anndata(sample.adata, mpp=sample.image.mpp, name=name, source=str(sample))
    keep = _subsample(len(u), max_units, seed)
    return u if keep is None else u.subset(keep)


def _image_key(sample) -> str:
    """Samples on one slide file (hard links included) share one dense map."""
    path = getattr(sample.image, "path", None)
    if path is None or not Path(path).exists():
        where = str(id(sample.image))
    else:
        st = Path(path).stat()
        where = f"{st.st_dev}:{st.st_ino}"
    return f"{where}@{sample.image.mpp:.6g}"


def run_bench(
    config: BenchConfig,
    *,
    overwrite: bool = False,
    redo: Sequence[str] = (),
    on_step: Callable[[str], None] | None = None,
) -> BenchResult:
    """Train, predict and evaluate every method on every fold; write the tables and reports.

    Args:
        config: the benchmark (:func:`load_bench_config`).
        overwrite: start from nothing (delete ``out_dir``); by default finished training runs
            and predictions in ``out_dir`` are reused, so a killed benchmark continues.
        redo: names of methods to train and predict again on every fold (their run and
            prediction folders are removed first); the others are reused where finished and
            the tables are rewritten, also in a finished benchmark. The old tables are removed
            first, so an interrupted redo continues with a plain rerun.
        on_step: called with a one-line description before each step (a progress display).

    Raises:
        OutputExistsError: ``out_dir`` holds a finished benchmark and ``overwrite`` is off.
    """
    import yaml

    from hexpress.eval.genesets import load_gene_sets, training_gene_sets
    from hexpress.eval.matching import evaluate_anndata, prepare_truth
    from hexpress.eval.report import MethodResult, json_safe, markdown_table, write_report
    from hexpress.infer.pipeline import load_model_info
    from hexpress.train.config import config_to_dict
    from hexpress.train.data import read_samples, resolve_split

    say = on_step or (lambda msg: log.info("%s", msg))
    out = Path(config.out_dir)
    redo_methods = _redo_methods(config, redo)
    if overwrite and out.exists():
        shutil.rmtree(out)
    if redo_methods:
        _remove_methods(out, config, redo_methods, say)
    if (out / "results.csv").is_file():
        raise OutputExistsError(
            f"{out} already holds a finished benchmark (results.csv); pass --redo NAME to redo "
            "one method, --overwrite to redo all of it, or choose another out_dir."
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "bench.yaml", yaml.safe_dump(json_safe(asdict(config)), sort_keys=False))
    for sim in config.simulate:
        _simulate(sim, say)
    user_sets = load_gene_sets(config.report.gene_sets) if config.report.gene_sets else {}
    samples = _Samples()
    scale_samples = {}
    if config.cross_scale is not None:
        for sc in config.cross_scale.scales:
            say(f"reading cross-scale truth {sc.name} ({sc.format}: {sc.path})")
            scale_samples[sc.name] = samples.scale(sc)

    rows, cross_tables, files = [], [], {}
    all_sections: dict[str, list] = {m.name: [] for m in config.methods}
    fold_reports: dict[str, Path] = {}
    for fold in config.folds:
        results, truths, images, fold_cfg, scored, scale_truths = [], {}, {}, {}, {}, {}
        test_genes = None
        for method in config.methods:
            run_dir = _method_dir(out, "runs", fold.name, method.name)
            cfg = method_train_config(config, method, fold, run_dir)
            data_cfg = resolve_split(cfg.data)
            if not data_cfg.test:
                raise ConfigError(
                    f"method {method.name!r}, fold {fold.name!r}: no test sections (data.test "
                    "or a split with a test part); a benchmark evaluates held-out sections."
                )
            say(f"[{fold.name}] {method.name}: training ({cfg.model.name})")
            ckpt, train_s, reused = _train_or_reuse(cfg, method.name)
            info = load_model_info(ckpt)
            tests = samples.test_samples(data_cfg)
            sections, preds_shown, predict_s, dense_maps = [], {}, 0.0, {}
            for sid, sample in tests.items():
                say(f"[{fold.name}] {method.name}: predicting {sid}")
                pdir = _method_dir(out, "predictions", fold.name, method.name) / _slug(sid)
                preds, secs = _predict(info, sample, [_units(sample, "spots", 0, 0)], pdir, config)
                predict_s += secs
                pred = preds["spots"]
                sections.append(evaluate_anndata(sample.adata, pred, section=sid))
                preds_shown[sid] = pred
                if (pdir / "map.zarr").exists():
                    dense_maps[sid] = pdir / "map.zarr"
                if sid not in truths:
                    truths[sid], _ = prepare_truth(sample.adata, pred, name=f"{sid} truth")
                    images[sid] = sample.image
                    scored[sid] = pred.obs_names
            result = MethodResult(
                method.name, sections, train_time_s=train_s, predict_time_s=predict_s,
                predictions=preds_shown, config=config_to_dict(cfg), maps=dense_maps,
            )  # fmt: skip
            if scale_samples:
                result.cross_scale, secs, result.scale_predictions, scale_truths = _cross_scale(
                    config, fold, method, info, scale_samples, out, say
                )
                result.predict_time_s = predict_s + secs
                cross_tables.append(result.cross_scale.assign(fold=fold.name))
            results.append(result)
            all_sections[method.name].extend(sections)
            fold_cfg[method.name] = {"run": str(run_dir), "reused": reused}
            if test_genes is None:
                test_genes = info.genes
                train_ids = data_cfg.train
                train_data = data_cfg
        gene_sets = dict(user_sets)
        if config.report.n_heg or config.report.n_hvg:
            one = replace(train_data, geometries=train_data.geometries[:1])
            train_samples = [s[0] for s in read_samples(one, train_ids).values()]
            gene_sets.update(
                training_gene_sets(
                    train_samples,
                    test_genes,
                    n_heg=config.report.n_heg,
                    n_hvg=config.report.n_hvg,
                )  # fmt: skip
            )
        ceiling = _ceiling(truths, scored, test_genes) if config.report.ceiling else None
        fold_dir = out if len(config.folds) == 1 else out / _slug(fold.name)
        say(f"[{fold.name}] writing the report in {fold_dir}")
        written = write_report(
            fold_dir, results,
            title=f"{config.report.title or config.name}"
            + ("" if len(config.folds) == 1 else f": fold {fold.name}"),
            config={"benchmark": config.name, "fold": asdict(fold), "seed": config.seed,
                    "methods": fold_cfg},
            truths=truths, images=images, map_genes=config.report.map_genes or None,
            scale_truths=scale_truths,
            gene_sets=gene_sets, aggregation=config.report.aggregation,
            notes=[f"Fold {fold.name}: trained on {', '.join(train_ids)}; tested on "
                   f"{', '.join(truths)}. Genes chosen on the training sections only.",
                   *([] if ceiling is None else [_ceiling_note(ceiling, config)])],
            overwrite=True,
        )  # fmt: skip
        fold_reports[fold.name] = written.get("report.html", fold_dir / "report.html")
        for r in results:
            row = r.summary(config.report.aggregation)
            rows.append({"fold": fold.name, **row, "is_method": True})
        if ceiling is not None:
            row = ceiling.summary(config.report.aggregation)
            rows.append({"fold": fold.name, **row, "is_method": False})
            all_sections.setdefault(ceiling.method, []).extend(ceiling.sections)

    table = pd.DataFrame(rows)
    if len(config.folds) > 1:
        table = pd.concat([table, _over_folds(table, all_sections)], ignore_index=True)
    files["results.csv"] = _write_text(out / "results.csv", table.to_csv(index=False))
    files["results.md"] = _write_text(out / "results.md", markdown_table(table))
    cross = None
    if cross_tables:
        cross = pd.concat(cross_tables, ignore_index=True)
        files["cross_scale.csv"] = _write_text(out / "cross_scale.csv", cross.to_csv(index=False))
        files["cross_scale.md"] = _write_text(out / "cross_scale.md", markdown_table(cross))
    if len(config.folds) > 1:
        files["report.html"] = _write_text(
            out / "report.html", _index_html(config, table, cross, fold_reports, out)
        )
    else:
        files["report.html"] = out / "report.html"
    return BenchResult(table=table, cross_scale=cross, files=files, out_dir=out)


def _ceiling(truths: dict, scored: dict, genes):
    """The neighbour ceiling of a fold's held-out sections, on the units the methods were scored
    on (:mod:`hexpress.eval.ceiling`); a reference row, not a method."""
    from hexpress.eval.ceiling import CEILING_NAME, ceiling_metrics
    from hexpress.eval.report import MethodResult

    sections = []
    for sid, t in truths.items():
        try:
            sections.append(ceiling_metrics(t, genes, units=scored[sid], section=sid)[0])
        except (DataMismatchError, GeometryError) as e:  # a reference row never stops a bench
            log.warning("no neighbour ceiling for %s: %s", sid, e)
    return MethodResult(CEILING_NAME, sections) if sections else None


def _ceiling_note(ceiling, config: BenchConfig) -> str:
    pcc = ceiling.summary(config.report.aggregation)["PCC@M"]
    return (
        f"{ceiling.method}: each held-out unit predicted by the mean measured expression of its "
        f"neighbours in the same section gives PCC@M {pcc:.3f}. A reference for what the "
        "section's spatial structure explains, not a method (results.csv: is_method false)."
    )


def _cross_scale(config, fold, method, info, scale_samples, out, say):
    """Predict every scale's units (one dense map per distinct slide) and tabulate; returns
    ``(table, seconds, {scale: predictions}, {scale: truths})``."""
    from hexpress.eval.crossscale import cross_scale_metrics, cross_scale_table

    groups: dict[str, list] = {}
    for name, sample in scale_samples.items():
        groups.setdefault(_image_key(sample), []).append((name, sample))
    preds, truths, secs = {}, {}, 0.0
    for i, members in enumerate(groups.values()):
        names = [n for n, _ in members]
        say(f"[{fold.name}] {method.name}: predicting {', '.join(names)}")
        units = [
            _units(s, n, config.cross_scale.max_units, config.seed + k)
            for k, (n, s) in enumerate(members)
        ]
        pdir = _method_dir(out, "predictions", fold.name, method.name) / f"cross_scale_{i}"
        p, t = _predict(info, members[0][1], units, pdir, config)
        secs += t
        for n, s in members:
            preds[n] = p[n]
            truths[n] = s.adata[p[n].obs_names]
    metrics = cross_scale_metrics(preds, truths)
    return cross_scale_table(metrics, truths, method=method.name), secs, preds, truths


def _over_folds(table: pd.DataFrame, sections: dict[str, list]) -> pd.DataFrame:
    """One row per method over every held-out section of every fold: the mean of the
    per-section summaries (each fold keeps its own genes, chosen on its training sections);
    units are summed."""
    rows = []
    for method, secs in sections.items():
        if not secs:
            continue
        summ = pd.DataFrame([s.summary() for s in secs])
        row = {"fold": "all folds", "method": method}
        for col in table.columns:
            if col in ("fold", "method"):
                continue
            if col == "is_method":
                row[col] = bool(table.loc[table["method"] == method, col].iloc[0])
            elif col in ("train_time_s", "predict_time_s"):
                row[col] = float(table.loc[table["method"] == method, col].sum(min_count=1))
            elif col == "n_sections":
                row[col] = len(secs)
            elif col == "n_units":
                row[col] = int(summ[col].sum())
            elif col in summ.columns:
                vals = summ[col].to_numpy(dtype=np.float64)
                vals = vals[np.isfinite(vals)]
                row[col] = float(vals.mean()) if vals.size else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=table.columns)


def _index_html(config, table, cross, fold_reports, out: Path) -> str:
    from hexpress.eval.report import _html_table, machine_info

    links = "".join(
        f'<li><a href="{html.escape(str(p.relative_to(out)))}">fold {html.escape(f)}</a></li>'
        for f, p in fold_reports.items()
    )
    machine = ", ".join(f"{k}: {v}" for k, v in machine_info().items())
    cross_html = "" if cross is None else "<h2>Cross-scale</h2>" + _html_table(cross)
    title = html.escape(config.report.title or config.name)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}</style>"
        f"</head><body><h1>{title}</h1><p>{html.escape(machine)}</p>"
        f"<h2>Results</h2>{_html_table(table)}{cross_html}"
        f"<h2>Fold reports</h2><ul>{links}</ul></body></html>"
    )
