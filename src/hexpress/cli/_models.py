"""``hexpress models``: the registered models and encoders, and which have weights here."""

from __future__ import annotations

import json

import typer

# tiny models registered for the test suite (the timm convention); hidden unless --all
TEST_PREFIX = "test_"


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
        show_all: bool = typer.Option(
            False, "--all", help="Also list the tiny test_* models and encoders of the test suite."
        ),
    ) -> None:
        """List registered models and encoders, and which have pretrained weights here."""
        from hexpress.models import describe_model, encoder_info, list_encoders, list_models

        names = [n for n in list_models() if show_all or not n.startswith(TEST_PREFIX)]
        model_rows = [describe_model(n) for n in names]
        encoders = [n for n in list_encoders() if show_all or not n.startswith(TEST_PREFIX)]
        encoder_rows = [encoder_info(n) for n in encoders]
        if as_json:
            for row in model_rows:
                row["defaults"] = {
                    k: repr(v) if not _plain(v) else v for k, v in row["defaults"].items()
                }
            typer.echo(json.dumps({"models": model_rows, "encoders": encoder_rows}, indent=1))
            return

        def yes(v) -> str:
            return "-" if v is None else ("yes" if v else "no")

        typer.echo(f"{'model':<18} {'kind':<6} {'encoder':<22} {'weights here':<12} description")
        for r in model_rows:
            typer.echo(
                f"{r['name']:<18} {r['kind']:<6} {r['encoder'] or '-':<22} "
                f"{yes(r['pretrained_available']):<12} {r['description']}"
            )
        typer.echo("")
        typer.echo(f"{'encoder':<22} {'weights':<8} {'here':<5} {'dense':<6} description")
        for r in encoder_rows:
            typer.echo(
                f"{r['name']:<22} {r['weights']:<8} {yes(r['pretrained_available']):<5} "
                f"{yes(r['dense']):<6} {r['description']}"
            )
        typer.echo(
            "\nEncoders without weights here take a local file: encoder_weights=PATH "
            "(safetensors or a tensors-only .pth); nothing is downloaded."
        )
        hidden = len(list_models()) - len(names) + len(list_encoders()) - len(encoders)
        if hidden:
            typer.echo(
                f"{hidden} tiny test_* model(s) and encoder(s) of the test suite not shown; "
                "--all lists them."
            )


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))
