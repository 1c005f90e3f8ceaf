"""hexpress: dense prediction of spatially resolved gene expression from H&E histology."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hexpress")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
