"""hexpress._files: every write is atomic (old file or whole new file, never a half) and cleans up."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hexpress._files import (
    TEMP_GLOB,
    atomic_path,
    sha256_file,
    write_figure,
    write_file,
    write_json,
)


@pytest.fixture
def target(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    return p


def test_write_file_text_and_bytes_replace_content_and_leave_no_temp(target):
    assert write_file(target, "new ü") == target
    assert target.read_bytes() == "new ü".encode()
    write_file(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert not list(target.parent.glob(TEMP_GLOB))


def test_atomic_path_keeps_old_file_until_the_block_ends(target):
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.match(TEMP_GLOB)
        tmp.write_text("half")
        assert target.read_text() == "old"  # a reader still sees the previous file
    assert target.read_text() == "half"
    assert not tmp.exists()


def test_write_that_raises_midway_keeps_old_file_and_removes_temp(target):
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert not list(target.parent.glob(TEMP_GLOB))


def test_interrupt_is_cleaned_up_too(target):
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert not list(target.parent.glob(TEMP_GLOB))


def test_failed_rename_keeps_old_file_and_removes_temp(target, monkeypatch):
    import hexpress._files as F

    def broken_replace(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(F.os, "replace", broken_replace)
    with pytest.raises(OSError, match="cross-device"):
        write_file(target, "new", fsync=True)
    assert target.read_text() == "old"
    assert not list(target.parent.glob(TEMP_GLOB))


def test_two_writers_get_different_temporary_files(target):
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer block ends last and wins


def test_parent_folder_is_created(tmp_path):
    p = write_file(tmp_path / "a" / "b" / "c.txt", "x")
    assert p.read_text() == "x"


def test_write_json_roundtrips_and_unencodable_object_leaves_old_file(target):
    path = target.with_suffix(".json")
    write_json(path, {"a": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert path.read_text().endswith("\n")
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    write_json(path, {"v": np.float32(1.5)}, default=float)
    assert json.loads(path.read_text()) == {"v": 1.5}
    assert not list(path.parent.glob(TEMP_GLOB))


def test_write_figure_png_and_failure_keeps_old(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    path = write_figure(tmp_path / "f.png", fig, dpi=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = path.read_bytes()

    class Broken:
        def savefig(self, fname, **kw):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG half")
            raise ValueError("renderer failed")

    with pytest.raises(ValueError, match="renderer"):
        write_figure(path, Broken())
    assert path.read_bytes() == old
    assert not list(tmp_path.glob(TEMP_GLOB))


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 5
    p = tmp_path / "b.bin"
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(p) == want
    assert sha256_file(p, chunk_bytes=7) == want


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    from hexpress._files import atomic_dir

    target = tmp_path / "group.zarr"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "part").write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.glob(TEMP_GLOB))
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
