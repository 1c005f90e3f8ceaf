"""The format registry: one explicit reader per technology, chosen by name, never by path.

``read_sample(path, "visium")`` is what the command line and configs call; the readers
themselves (:func:`read_legacy_st`, :func:`read_visium`, ...) are the Python API.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from hexpress.data.sample import Sample
from hexpress.errors import ConfigError
from hexpress.io.h5ad import read_h5ad
from hexpress.io.legacy_st import list_sections, read_legacy_st
from hexpress.io.visium import read_visium
from hexpress.io.visium_hd import read_visium_hd
from hexpress.io.xenium import read_xenium

__all__ = ["FORMATS", "READERS", "read_sample", "check_format"]

FORMATS = ("legacy-st", "visium", "visium-hd", "xenium", "h5ad")


def _legacy(path, *, section=None, mpp=None, image=None, **kw) -> Sample:
    if section is None:
        sections = list_sections(path)
        if len(sections) != 1:
            raise ConfigError(
                f"{path} holds {len(sections)} sections; choose one with section=... "
                f"(--section): {', '.join(sections)}."
            )
        section = sections[0]
    return read_legacy_st(path, section, mpp=mpp, image=image, **kw)


def _with_id(reader: Callable[..., Sample]) -> Callable[..., Sample]:
    def read(path, *, section=None, mpp=None, image=None, **kw) -> Sample:
        if section is not None:
            kw.setdefault("sample_id", section)
        return reader(path, mpp=mpp, image=image, **kw)

    read.__doc__ = reader.__doc__
    read.__wrapped__ = reader
    return read


def _h5ad(path, *, section=None, mpp=None, image=None, **kw) -> Sample:
    return read_h5ad(path, mpp=mpp, image=image, library_id=section, **kw)


READERS: dict[str, Callable[..., Sample]] = {
    "legacy-st": _legacy,
    "visium": _with_id(read_visium),
    "visium-hd": _with_id(read_visium_hd),
    "xenium": _with_id(read_xenium),
    "h5ad": _h5ad,
}


def check_format(format: str) -> str:
    """``format`` if it names a reader, else a :class:`ConfigError` listing the valid names."""
    if format not in READERS:
        raise ConfigError(f"Unknown format {format!r}; valid formats: {', '.join(FORMATS)}.")
    return format


def read_sample(
    path: str | Path,
    format: str,
    *,
    section: str | None = None,
    mpp: float | None = None,
    image: str | Path | None = None,
    **kw,
) -> Sample:
    """Read one sample with the reader registered for ``format``.

    Args:
        path: the data folder or file the reader expects.
        format: one of :data:`FORMATS`.
        section: legacy ST section id (required when the folder has several); for ``h5ad`` the
            ``uns["spatial"]`` library id; for the other formats the sample id.
        mpp: µm per pixel of the (full-resolution) image, where the data do not say.
        image: an image file to use (see each reader).
        **kw: passed on to the reader (e.g. ``bin_um`` for Visium HD, ``alignment``, ``pool``,
            ``size_um`` for Xenium; ``patient_id``).
    """
    reader = READERS[check_format(format)]
    kw = {k: v for k, v in kw.items() if v is not None}
    target = {"legacy-st": read_legacy_st, "h5ad": read_h5ad}.get(format)
    target = target or getattr(reader, "__wrapped__", reader)
    accepted = set(inspect.signature(target).parameters)
    unknown = sorted(k for k in kw if k not in accepted)
    if unknown:
        raise ConfigError(
            f"Option(s) {', '.join(unknown)} do not apply to format {format!r}; it takes "
            f"{', '.join(p for p in sorted(accepted) if p not in ('path', 'root', 'outs'))}."
        )
    return reader(Path(path), section=section, mpp=mpp, image=image, **kw)
