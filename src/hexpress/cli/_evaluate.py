"""``hexpress evaluate``: score predictions from anywhere against measured expression."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import typer

from hexpress import _keys as K
from hexpress.errors import FormatError, InputFileError, OutputExistsError

log = logging.getLogger(__name__)


def _read(path: Path, what: str):
    import anndata as ad

    if not path.is_file():
        raise InputFileError(f"{what} file not found: {path}. Give an .h5ad file.")
    try:
        return ad.read_h5ad(path)
    except Exception as e:  # h5py / anndata raise many kinds for a file that is not h5ad
        raise FormatError(f"{path}: cannot be read as AnnData .h5ad ({e}).") from e


def _truth_image(truth, truth_path: Path):
    """The truth's slide image, when its metadata names one that exists (for the maps); a
    relative path is taken from the truth file's folder."""
    from hexpress.io.image import open_image

    uns = truth.uns.get(K.UNS, {})
    path, mpp = uns.get("image_path"), uns.get("mpp")
    if path and not Path(path).is_absolute() and not Path(path).is_file():
        path = str(truth_path.parent / path)
    if not path or mpp is None or not Path(path).is_file():
        return None
    try:
        return open_image(path, mpp=float(mpp))
    except Exception as e:  # a map without H&E is still useful: say why and go on
        log.warning("cannot open the truth's image %s (%s); maps are drawn without it", path, e)
        return None


def _with_positions(pred, truth, unit_ids):
    """Predictions at the matched units, with positions and geometry taken from the truth where
    the prediction does not carry them (needed to draw maps)."""
    sub = pred[unit_ids].copy()
    src = truth[unit_ids]
    if K.SPATIAL not in sub.obsm:
        sub.obsm[K.SPATIAL] = src.obsm[K.SPATIAL]
    for col in (K.GEOMETRY, K.SIZE_UM):
        if col not in sub.obs and col in src.obs:
            sub.obs[col] = src.obs[col].to_numpy()
    if "mpp" not in sub.uns.get(K.UNS, {}) and "mpp" in truth.uns.get(K.UNS, {}):
        sub.uns[K.UNS] = {**dict(sub.uns.get(K.UNS, {})), "mpp": truth.uns[K.UNS]["mpp"]}
    return sub


def method_name(uns, fallback: str) -> str:
    """The method's display name from a prediction's ``uns["hexpress"]``: the model's registry
    name and, when the checkpoint path is known, its run folder, e.g. ``pixnet (run demo)``."""
    model = uns.get("model") or uns.get("method")
    if isinstance(model, Mapping):
        model = model.get("name")
    if not model:
        return fallback
    ckpt = uns.get("checkpoint")
    path = ckpt.get("path") if isinstance(ckpt, Mapping) else None
    run = Path(path).parent.name if path else ""
    return f"{model} (run {run})" if run and run not in (".", "") else str(model)


def _check_out(out: Path | None, overwrite: bool) -> None:
    if out is None or overwrite or not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder for the report.")
    if any(out.iterdir()):
        raise OutputExistsError(
            f"--out {out} already exists and is not empty; pass --overwrite to replace the "
            "report in it, or choose a new folder."
        )


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Argument(..., help="Predictions (.h5ad): normalised expression in X."),
        truth: Path = typer.Option(
            ..., "--truth", help="Measured units (.h5ad, or any format with --truth-format)."
        ),
        truth_format: str | None = typer.Option(
            None, "--truth-format", help="Read --truth with this reader (e.g. visium, xenium)."
        ),
        gene_sets: list[Path] = typer.Option(
            None, "--gene-sets", help="Gene set file (.gmt, or plain text: one gene per line)."
        ),
        out: Path | None = typer.Option(None, "--out", help="Write the report into this folder."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
        method: str | None = typer.Option(None, "--method", help="Method name in the report."),
        threshold: float = typer.Option(0.30, help="Count genes with PCC >= this."),
        strict: bool = typer.Option(
            False, "--strict", help="Fail unless units and genes match exactly."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
        ceiling: bool = typer.Option(
            False,
            "--ceiling",
            help="Also score the neighbour ceiling (truth with positions): "
            "each unit predicted from its measured neighbours; a reference, not a method.",
        ),
    ) -> None:
        """Score PRED against --truth: MSE, MAE, per-gene PCC (F/S/M quartiles), genes with
        PCC >= 0.30. Units are matched by obs_names (else by position, within half a unit)
        and genes by var_names."""
        from hexpress.eval.genesets import evaluate_gene_sets, load_gene_sets
        from hexpress.eval.matching import align, check_match, match_by_position, prepare_truth
        from hexpress.eval.metrics import section_metrics
        from hexpress.eval.report import MethodResult, json_safe, markdown_table, results_table
        from hexpress.io.formats import read_sample

        _check_out(out, overwrite)  # before any work
        p = _read(pred, "prediction")
        t = read_sample(truth, truth_format).adata if truth_format else _read(truth, "truth")
        p = match_by_position(t, p, name=str(pred))
        sets = load_gene_sets(gene_sets) if gene_sets else {}
        uns = p.uns.get(K.UNS, {})
        name = method or method_name(uns, pred.stem)
        section = str(uns.get("sample_id") or t.uns.get(K.UNS, {}).get("sample_id") or truth.stem)
        _, genes = check_match(t, p, strict=strict, name=str(pred))
        norm_truth, note = prepare_truth(t, p, genes=genes, name=str(truth))
        a = align(norm_truth, p, strict=strict, name=str(pred))
        m = section_metrics(a.truth, a.pred, a.genes, section=section, threshold=threshold)
        summary = m.summary()
        set_table = evaluate_gene_sets(m, sets, threshold=threshold) if sets else None
        ceil = None
        if ceiling:
            from hexpress.eval.ceiling import CEILING_NAME, ceiling_metrics

            ceil = MethodResult(
                CEILING_NAME,
                [ceiling_metrics(norm_truth, a.genes, units=a.unit_ids, section=section,
                                 threshold=threshold)[0]],
            )  # fmt: skip
        if as_json:
            doc = {
                "method": name,
                "section": section,
                "prediction": str(pred),
                "truth": str(truth),
                "matched": a.describe(),
                "normalization": note,
                "metrics": summary,
                "undefined_genes": m.undefined_genes,
                "ceiling": None if ceil is None else ceil.sections[0].summary(),
                "gene_sets": None if set_table is None else set_table.to_dict(orient="records"),
            }
            typer.echo(json.dumps(json_safe(doc), indent=1))
        else:
            typer.echo(f"{name} on {section}: {a.describe()}")
            typer.echo(note)
            result = MethodResult(name, [m])
            typer.echo(markdown_table(results_table([result])))
            if ceil is not None:
                typer.echo("Reference, not a method (units predicted from measured neighbours):")
                typer.echo(markdown_table(results_table([ceil])))
            if set_table is not None:
                typer.echo(markdown_table(set_table))
        if out is not None:
            from hexpress.eval.figures import use_agg
            from hexpress.eval.report import write_report

            use_agg()
            truth_units = norm_truth[a.unit_ids]
            # a prediction written by `hexpress predict` has its dense map beside it
            dense = pred.parent / "map.zarr"
            result = MethodResult(
                name,
                [m],
                predictions={section: _with_positions(p, t, a.unit_ids)},
                maps={section: dense} if dense.exists() else {},
            )
            has_pos = K.SPATIAL in truth_units.obsm
            image = _truth_image(t, truth) if has_pos else None
            written = write_report(
                out,
                [result],
                title=f"hexpress evaluate: {name} on {section}",
                config={
                    "prediction": str(pred),
                    "truth": str(truth),
                    "gene_sets": [str(g) for g in gene_sets or []],
                    "threshold": threshold,
                },
                truths={section: truth_units} if has_pos else None,
                images={section: image} if image is not None else None,
                gene_sets=sets or None,
                notes=[a.describe(), note]
                + (
                    []
                    if ceil is None
                    else [
                        f"{ceil.method} (a reference, not a method): PCC@M "
                        f"{ceil.sections[0].summary()['PCC@M']:.3f}"
                    ]
                ),
                overwrite=overwrite,
            )
            typer.echo(f"report: {written['report.html']}", err=as_json)
