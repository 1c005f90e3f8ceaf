"""Exceptions raised at hexpress's boundaries.

Every message says what was given, what is valid and what to do. Catch :class:`HexpressError`
to handle any of them; each also derives from the matching built-in exception.
"""

from __future__ import annotations

__all__ = [
    "HexpressError",
    "InputFileError",
    "FormatError",
    "UnitsError",
    "GeometryError",
    "DataMismatchError",
    "ConfigError",
    "CheckpointError",
    "OutputExistsError",
]


class HexpressError(Exception):
    """Base class of every error hexpress raises on purpose."""


class InputFileError(HexpressError, FileNotFoundError):
    """A file or folder the user named is missing or cannot be opened."""


class FormatError(HexpressError, ValueError):
    """A file exists but its content is not what its format requires."""


class UnitsError(HexpressError, ValueError):
    """A physical unit is missing or invalid (no ``mpp``, no scale factors, a non-positive size)."""


class GeometryError(HexpressError, ValueError):
    """Positions that cannot be right: outside the image, duplicated, non-finite."""


class DataMismatchError(HexpressError, ValueError):
    """Two inputs that must agree do not (counts vs positions, genes vs checkpoint)."""


class ConfigError(HexpressError, ValueError):
    """An invalid option, config value or name (unknown format, model, gene set...)."""


class CheckpointError(HexpressError, ValueError):
    """A checkpoint is not a hexpress checkpoint, is incomplete, or is corrupt."""


class OutputExistsError(HexpressError, FileExistsError):
    """The output location already holds results and overwriting was not asked for."""
