"""Helpers of the command-line tests."""

from hexpress.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    """Run the console entry point on ``argv``: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
