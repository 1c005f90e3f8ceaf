"""The ``hexpress`` command line: one module per command, each with a ``register(app)``."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from hexpress.errors import HexpressError

__all__ = ["app", "main"]

app = typer.Typer(
    name="hexpress",
    help="Predict spatially resolved gene expression from H&E histology, at any spot scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in the order `hexpress --help` lists them.
COMMANDS = ("info", "convert", "simulate", "models", "train", "predict", "evaluate", "bench", "demo", "cache", "study")  # fmt: skip


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    for name in COMMANDS:
        module = f"hexpress.cli._{name}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # command not built yet
                continue
            raise
        mod.register(app)


_register()


def main() -> None:
    """Console entry point: hexpress errors become one clear line and exit status 2."""
    try:
        app(standalone_mode=False)
    except HexpressError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
