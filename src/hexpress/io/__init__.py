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

__all__ = [
    "ArrayImage",
    "OpenSlideImage",
    "PillowImage",
    "SlideImage",
    "TiffImage",
    "open_image",
    "write_tiff",
]
