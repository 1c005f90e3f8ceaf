"""The ``hexpress`` command line: one module per command, each with a ``register(app)``.

Exit statuses (the same for every command):

====  =========================================================================================
0     success; also bare ``hexpress``, which prints the help
1     a hexpress error: bad input, a missing file, a result that exists; one line says what to do
2     a usage error: unknown command or option, a missing or ill-typed value; the usage line and
      one line of reason
70    an unexpected internal error: one line, and the path of a log file with the traceback
      (``--debug`` prints the traceback instead)
130   interrupted (Ctrl-C)
====  =========================================================================================
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

import typer

from hexpress.errors import HexpressError

__all__ = ["EXIT_ERROR", "EXIT_INTERNAL", "EXIT_USAGE", "app", "crash_log_dir", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="hexpress",
    help="Predict spatially resolved gene expression from H&E histology, at any spot scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in the order `hexpress --help` lists them.
COMMANDS = ("info", "convert", "simulate", "models", "train", "predict", "export_onnx", "evaluate", "bench", "demo", "cache", "study")  # fmt: skip


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an unexpected error."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    del debug  # read by main() from the command line, before any command runs


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


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes of usage errors: typer >= 0.29 bundles its own copy of click, older
    typer raises click's; catch both, whichever is installed."""
    types: list[type[BaseException]] = []
    bundled = getattr(typer, "TyperException", None)
    if bundled is not None:
        types.append(bundled)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def _click_abort_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(types)


def _click_exit_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [typer.Exit]
    try:
        import click

        types.append(click.exceptions.Exit)
    except ImportError:
        pass
    return tuple(types)


def crash_log_dir() -> Path:
    """Where tracebacks of unexpected errors go: ``$HEXPRESS_LOG_DIR``, else
    ``$XDG_CACHE_HOME/hexpress/logs`` (default ``~/.cache/hexpress/logs``)."""
    if os.environ.get("HEXPRESS_LOG_DIR"):
        return Path(os.environ["HEXPRESS_LOG_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hexpress" / "logs"


def _write_crash_log(argv: list[str], exc: BaseException) -> Path | None:
    """Write the traceback atomically; fall back to the temp folder; ``None`` if both fail."""
    from hexpress import __version__

    text = (
        f"hexpress {__version__}, Python {sys.version.split()[0]}\n"
        f"command: hexpress {' '.join(argv)}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"crash-{stamp}-{os.getpid()}.log"
    from hexpress._files import write_file

    for folder in (crash_log_dir(), Path(tempfile.gettempdir()) / "hexpress-logs"):
        try:
            return write_file(folder / name, text)
        except OSError:
            continue
    return None


def _usage_of(args: list[str]) -> str:
    """``Usage: hexpress CMD ...`` and the hint line, for the command named in ``args``."""
    root = typer.main.get_command(app)
    ctx = root.make_context("hexpress", [], resilient_parsing=True)
    name = next((a for a in args if not a.startswith("-")), None)
    sub = root.get_command(ctx, name) if name else None
    if sub is None:
        return f"{ctx.get_usage()}\nTry 'hexpress --help' for help.\n"
    sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
    return f"{sub_ctx.get_usage()}\nTry 'hexpress {name} --help' for help.\n"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every outcome is one exit status (see the module docstring) and
    never a traceback, unless ``--debug`` asks for one."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere before a "--", also after the command's name
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    args = [a for a in args[:end] if a != "--debug"] + args[end:]
    if not args:  # bare `hexpress`: the help, as a successful answer
        app(["--help"], prog_name="hexpress", standalone_mode=False)
        sys.exit(0)
    usage_errors = _usage_error_types()
    try:
        app(args, prog_name="hexpress", standalone_mode=False)
    except HexpressError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(EXIT_ERROR)
    except _click_exit_types() as e:
        sys.exit(getattr(e, "exit_code", 0))
    except (KeyboardInterrupt, *_click_abort_types()):
        typer.secho("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except usage_errors as e:
        # click's own errors: a usage error shows the usage line, a hint and the reason; a few
        # (an option given without its value) come without a context, so the line is made here
        if getattr(e, "ctx", True) is None and getattr(e, "exit_code", 0) == EXIT_USAGE:
            typer.echo(_usage_of(args), err=True)
        e.show()
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    except Exception as e:
        if debug:
            traceback.print_exception(type(e), e, e.__traceback__)
        log_path = _write_crash_log(args, e)
        where = f"; the full traceback is in {log_path}" if log_path else ""
        typer.secho(
            f"internal error: {type(e).__name__}: {e}{where}. Rerun with --debug to print it.",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(EXIT_INTERNAL)
