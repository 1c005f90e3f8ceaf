"""Reading and writing slides and spatial transcriptomics data."""

from hexpress.io.image import (
    ArrayImage,
    OpenSlideImage,
    PillowImage,
    SlideImage,
    TiffImage,
    open_image,
    write_tiff,
)

# The readers build ``hexpress.data.Sample``s, and ``hexpress.data.sample`` imports
# ``hexpress.io.image``: importing them here eagerly would be circular, so they load on first use.
_LAZY = {
    "FORMATS": "hexpress.io.formats",
    "READERS": "hexpress.io.formats",
    "read_sample": "hexpress.io.formats",
    "read_h5ad": "hexpress.io.h5ad",
    "write_h5ad": "hexpress.io.h5ad",
    "list_sections": "hexpress.io.legacy_st",
    "read_legacy_st": "hexpress.io.legacy_st",
    "TenxMatrix": "hexpress.io.tenx_h5",
    "read_10x_h5": "hexpress.io.tenx_h5",
    "write_10x_h5": "hexpress.io.tenx_h5",
    "read_visium": "hexpress.io.visium",
    "read_visium_hd": "hexpress.io.visium_hd",
    "read_alignment": "hexpress.io.xenium",
    "read_xenium": "hexpress.io.xenium",
    "write_spatialdata": "hexpress.io.spatialdata",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArrayImage",
    "OpenSlideImage",
    "PillowImage",
    "SlideImage",
    "TiffImage",
    "open_image",
    "write_tiff",
    "FORMATS",
    "READERS",
    "read_sample",
    "read_legacy_st",
    "list_sections",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "read_alignment",
    "read_h5ad",
    "write_h5ad",
    "TenxMatrix",
    "read_10x_h5",
    "write_10x_h5",
    "write_spatialdata",
]
