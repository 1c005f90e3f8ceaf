"""Bad invocations of the console entry point: never a traceback, always the right exit status.

0: bare ``hexpress`` (the help); 1: a hexpress error (one ``error:`` line); 2: a usage error
(the usage line and one reason); 70: an unexpected error (one line naming the log file).
"""

import subprocess
import sys

import pytest
from cli_helpers import run

from hexpress.cli import EXIT_ERROR, EXIT_INTERNAL, EXIT_USAGE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "junk.pt").write_bytes(b"\x80\x04not a checkpoint")
    (d / "slide.tif").write_bytes(b"not an image")
    (d / "notes.txt").write_text("not an h5ad file\n")
    (d / "bad.yaml").write_text("data: [unclosed\n")
    (d / "full").mkdir()
    (d / "full" / "x").write_text("x")
    (d / "recipe.yaml").write_text("model: {name: test_pixnet}\n")
    return d


USAGE = [  # (argv, text in stderr)
    (["nosuch"], "No such command 'nosuch'"),
    (["--seed", "x"], "No such option: --seed"),
    (["info", "x"], "Missing option '--format'"),
    (["info"], "Missing argument"),
    (["simulate"], "Missing option '--out'"),
    (["simulate", "--out", "o", "--seed", "x"], "Invalid value for '--seed'"),
    (["simulate", "--out", "o", "--size-mm", "big"], "Invalid value for '--size-mm'"),
    (["train"], "Missing argument 'config'"),
    (["predict"], "Missing argument"),
    (["predict", "s.tif", "--out", "o"], "Missing option '--checkpoint'"),
    (["predict", "s.tif", "-c", "m", "-o", "o", "--batch-size", "two"], "'--batch-size'"),
    (["evaluate"], "Missing argument"),
    (["evaluate", "p.h5ad", "--truth", "t.h5ad", "--threshold", "high"], "'--threshold'"),
    (["models", "--nope"], "No such option: --nope"),
    (["bench"], "Missing argument 'config'"),
    (["demo", "--steps", "many"], "Invalid value for '--steps'"),
    (["demo", "--steps", "0"], "--steps must be at least 1"),
    (["info", "x", "--format"], "requires an argument"),
]


@pytest.mark.parametrize("argv,reason", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_show_usage_and_one_reason(argv, reason, capsys):
    code, out, err = run(argv, capsys)
    assert code == EXIT_USAGE, (code, err)
    assert "Traceback" not in err + out
    assert err.lstrip().startswith("Usage: hexpress")
    assert reason in err


HEXPRESS = [  # (argv builder, text in stderr)
    (lambda d: ["info", d / "none", "--format", "visium"], "none"),
    (lambda d: ["info", d, "--format", "nope"], "nope"),
    (lambda d: ["simulate", "--out", d / "full"], "--overwrite"),
    (lambda d: ["train", d / "missing.yaml"], "missing.yaml"),
    (lambda d: ["train", d / "bad.yaml"], "bad.yaml"),
    (lambda d: ["predict", d / "none.tif", "-c", d / "junk.pt", "-o", d / "o"], "none.tif"),
    (lambda d: ["predict", d / "slide.tif", "-c", d / "junk.pt", "-o", d / "o"], "is a .pt file"),
    (lambda d: ["predict", d / "slide.tif", "-c", d / "nockpt", "-o", d / "o"], "no such"),
    (lambda d: ["predict", d / "slide.tif", "-c", d, "-o", d / "o"], "is a folder"),
    (
        lambda d: ["predict", d / "slide.tif", "-c", d / "junk.pt", "-o", d / "o", "--bins", "a,b"],
        "--bins takes comma-separated numbers",
    ),  # fmt: skip
    (lambda d: ["evaluate", d / "none.h5ad", "--truth", d / "none.h5ad"], "not found"),
    (lambda d: ["evaluate", d / "notes.txt", "--truth", d / "notes.txt"], "cannot be read"),
    (
        lambda d: ["evaluate", d / "notes.txt", "--truth", d / "notes.txt", "--out", d / "full"],
        "--overwrite",
    ),  # fmt: skip
    (lambda d: ["bench", d / "missing.yaml"], "missing.yaml"),
]


@pytest.mark.parametrize("build,reason", HEXPRESS, ids=[str(i) for i in range(len(HEXPRESS))])
def test_hexpress_errors_exit_1_with_one_line(build, reason, files, capsys):
    code, out, err = run(build(files), capsys)
    assert code == EXIT_ERROR, (code, err)
    assert "Traceback" not in err + out
    assert "error:" in err and reason in err


def test_bare_hexpress_prints_help_and_exits_0(capsys):
    code, out, err = run([], capsys)
    assert code == 0 and "Usage: hexpress" in out and "predict" in out
    assert "Traceback" not in out + err


def test_internal_error_one_line_and_a_log(monkeypatch, tmp_path, capsys):
    import hexpress.models as models

    def broken(*a, **k):
        raise RuntimeError("boom inside")

    monkeypatch.setenv("HEXPRESS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(models, "list_models", broken)
    code, out, err = run(["models"], capsys)
    assert code == EXIT_INTERNAL
    assert "Traceback" not in err + out
    assert "internal error: RuntimeError: boom inside" in err and "--debug" in err
    (log,) = (tmp_path / "logs").glob("crash-*.log")
    assert str(log) in err
    text = log.read_text()
    assert "Traceback" in text and "boom inside" in text and "command: hexpress models" in text
    assert not list((tmp_path / "logs").glob(".*.tmp"))
    # --debug, before or after the command, prints the traceback as well
    for argv in (["--debug", "models"], ["models", "--debug"]):
        code, _, err = run(argv, capsys)
        assert code == EXIT_INTERNAL and "Traceback" in err and "boom inside" in err


def test_console_entry_point_in_a_process(tmp_path):
    """The real ``python -m hexpress``: usage error, then a hexpress error."""
    for argv, code in ((["nosuch"], EXIT_USAGE), (["info", str(tmp_path), "-f", "no"], 1)):
        p = subprocess.run([sys.executable, "-m", "hexpress", *argv], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert p.returncode == code, p.stderr
        assert "Traceback" not in p.stderr + p.stdout
