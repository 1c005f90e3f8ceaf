"""Atomic file writes and file hashing: the one place hexpress writes a file a reader may see.

Every write goes to a temporary file beside the target and is moved into place with
:func:`os.replace`, which is atomic on POSIX and Windows when both names are on one file system.
A reader therefore sees either the old file or the complete new one, never a half-written file,
and a write that fails (an exception, a full disk) leaves the old file as it was and removes its
temporary file.

The temporary name is ``.<name>.<pid>.<random>.tmp`` in the target's folder: hidden, unique per
writer (two processes writing the same target do not share a temporary file) and ending in
``.tmp`` (:data:`TEMP_GLOB` finds any left behind by a killed process). Writers that infer a
format from the file name are given the format explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_GLOB",
    "atomic_dir",
    "atomic_path",
    "sha256_file",
    "write_figure",
    "write_file",
    "write_json",
]

#: Glob (relative to a folder) matching the temporary files :func:`atomic_path` creates.
TEMP_GLOB = ".*.tmp"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success move it onto ``path``, on failure delete it.

    The parent folder of ``path`` is created if missing. The caller writes the whole file to the
    yielded path (with any writer that takes a file name); nothing is visible at ``path`` until
    the ``with`` block ends without an exception.

    Args:
        path: the final file name.
        fsync: flush the file's data to disk before the rename, so that after a power cut the
            target holds either the old or the new content (costs one disk flush).

    Yields:
        The temporary path (in the same folder, so the rename is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder path beside ``path``; on success rename it to ``path``.

    For a folder that must appear under its name only once it is whole (a zarr group that
    describes itself). ``path`` must not exist when the block ends (remove an old one first);
    the caller creates the folder (e.g. ``zarr.open_group(tmp, mode="w")``). On failure the
    temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(path: str | os.PathLike, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (text is encoded as UTF-8) to ``path`` atomically; return ``path``.

    The file is created with ``open`` (so it gets the usual permissions from the umask, not the
    private 0600 of :func:`tempfile.mkstemp`).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "xb") as f:
        f.write(raw)
    return Path(path)


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically; return ``path``.

    ``indent`` and ``default`` are passed to :func:`json.dumps`. The object is serialised before
    anything is written, so an object that cannot be encoded leaves ``path`` untouched.
    """
    text = json.dumps(obj, indent=indent, default=default) + "\n"
    return write_file(path, text, fsync=fsync)


def write_figure(path: str | os.PathLike, fig, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically; the format comes from the file suffix.

    ``savefig_kwargs`` go to :meth:`matplotlib.figure.Figure.savefig` (``dpi``,
    ``bbox_inches``...). The figure is not closed.
    """
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return path


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content, read in chunks of ``chunk_bytes``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()
