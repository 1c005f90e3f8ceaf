"""``hexpress simulate``: write a synthetic slide in every format."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hexpress.errors import OutputExistsError


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (absent or empty)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed, the same slide."),
        size_mm: float = typer.Option(1.0, "--size-mm", help="Slide width = height, in mm."),
        mpp: float = typer.Option(0.5, "--mpp", help="µm per pixel of the rendered H&E."),
        n_genes: int = typer.Option(300, "--n-genes", help="Size of the gene panel."),
        panel_seed: int = typer.Option(
            0, "--panel-seed", help="Seed of the gene panel; slides of one panel share genes."
        ),
        formats: str = typer.Option(
            "legacy_st,visium,visium_hd,xenium,truth",
            "--formats",
            help="Comma-separated subset of: legacy_st, visium, visium_hd, xenium, truth.",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous output."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Simulate an H&E slide with single-cell truth and write it in every real format."""
        from hexpress.sim import SimConfig, simulate
        from hexpress.sim.writers import write_all

        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise OutputExistsError(
                f"{out} already exists and is not empty; choose a new --out or pass --overwrite."
            )
        config = SimConfig(
            size_mm=size_mm, mpp=mpp, seed=seed, n_genes=n_genes, panel_seed=panel_seed
        )
        fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
        slide = simulate(config)
        manifest = write_all(slide, out, formats=fmts, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(manifest))
            return
        w, h = manifest["image_size"]
        typer.echo(
            f"Simulated {w} x {h} px at {manifest['mpp']:g} µm/px (seed {seed}): "
            f"{manifest['n_cells']} cells, {manifest['n_genes']} genes, "
            f"{manifest['n_transcripts']} transcripts"
        )
        typer.echo(f"  {out / manifest['image']}  (pyramidal TIFF)")
        typer.echo(f"  {out / manifest['thumbnail']}")
        for entry in manifest["formats"].values():
            units = entry.get("n_units")
            if units is None and "bins" in entry:
                units = ", ".join(f"{k}: {v['n_units']}" for k, v in entry["bins"].items())
            if units is None:
                units = f"{entry.get('n_cells')} cells"
            typer.echo(f"  {out / entry['path']}  [{entry['technology']}] units: {units}")
        typer.echo(f"  {out / 'manifest.json'}")
