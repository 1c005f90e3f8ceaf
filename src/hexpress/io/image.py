"""Slide images with explicit pixel size, read lazily region by region.

One interface for every format (after tiatoolbox's ``WSIReader``): :class:`SlideImage` knows its
level-0 size in pixels and its ``mpp`` (µm per level-0 pixel) and reads any rectangle, given in
level-0 pixels, resampled to any requested ``mpp``. Backends:

* :class:`ArrayImage`: an in-memory ``numpy`` array (tests, simulated slides);
* :class:`TiffImage`: TIFF, pyramidal TIFF, OME-TIFF and SVS through ``tifffile``; tiles are
  decoded on demand, so a slide larger than memory is never loaded whole;
* :class:`PillowImage`: JPEG / PNG, decoded once when first read (use TIFF for gigapixel slides);
* :class:`OpenSlideImage`: anything OpenSlide reads, with the ``openslide`` extra installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from hexpress._files import atomic_path
from hexpress.errors import FormatError, InputFileError, UnitsError

__all__ = [
    "SlideImage",
    "ArrayImage",
    "TiffImage",
    "PillowImage",
    "OpenSlideImage",
    "open_image",
    "write_tiff",
    "IMAGE_SUFFIXES",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".qptiff", ".ome.tif", ".ome.tiff")
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
OPENSLIDE_SUFFIXES = (".mrxs", ".ndpi", ".scn", ".vms", ".vmu", ".bif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES + OPENSLIDE_SUFFIXES
_BACKGROUND = 255  # glass is white: areas outside the image read as background, not black


def _check_mpp(mpp: float | None, source: str) -> float:
    if mpp is None:
        raise UnitsError(
            f"{source} has no pixel size in its metadata. Pass the micrometres per pixel of its "
            "full-resolution level: mpp=... in Python or --mpp on the command line "
            "(e.g. 0.25 for a 40x scan, 0.5 for 20x)."
        )
    mpp = float(mpp)
    if not math.isfinite(mpp) or mpp <= 0:
        raise UnitsError(f"{source}: mpp must be a positive number of µm per pixel, got {mpp!r}.")
    return mpp


class SlideImage(ABC):
    """A slide image of known pixel size, read lazily.

    Attributes:
        width, height: level-0 size in pixels.
        mpp: micrometres per level-0 pixel.
        path: the file it was opened from, or ``None``.
    """

    width: int
    height: int
    mpp: float
    path: Path | None = None

    # -- what a backend provides -------------------------------------------------------------
    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each stored level relative to level 0 (level 0 first, 1.0)."""

    @abstractmethod
    def _read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of a level (inside its bounds), ``(h, w, 3)`` uint8 RGB."""

    def level_shape(self, level: int) -> tuple[int, int]:
        """``(height, width)`` of a stored level in its own pixels."""
        d = self.level_downsamples[level]
        return max(1, round(self.height / d)), max(1, round(self.width / d))

    # -- the public interface ----------------------------------------------------------------
    @property
    def size_um(self) -> tuple[float, float]:
        """``(width, height)`` of the slide in micrometres."""
        return self.width * self.mpp, self.height * self.mpp

    def shape_at(self, mpp: float) -> tuple[int, int]:
        """``(height, width)`` in pixels of the whole slide resampled to ``mpp``."""
        f = self.mpp / mpp
        return max(1, round(self.height * f)), max(1, round(self.width * f))

    def read_region(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        *,
        mpp: float | None = None,
        units: str = "level0",
        out_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Read a rectangle of the slide, resampled to ``mpp``.

        Args:
            x, y: top-left corner, in the pixels ``units`` names.
            width, height: size, in the same pixels.
            mpp: µm per pixel of the result; default the image's own ``mpp``.
            units: the frame of ``x, y, width, height``:

                * ``"level0"``: level-0 pixels of the slide (fractions allowed); the result is
                  ``out_shape``, by default ``round(height * self.mpp / mpp)`` by
                  ``round(width * self.mpp / mpp)``;
                * ``"target"``: integer pixels of the whole slide resampled to ``mpp``; the
                  result is ``(height, width)`` and pixel ``(i, j)`` is pixel ``(y + i, x + j)``
                  of the slide at ``mpp``, so tiles read on one grid agree with one large read
                  of the same area.
            out_shape: ``(h, w)`` of the result (``"level0"`` only).

        Returns:
            ``(h, w, 3)`` uint8 RGB. Parts outside the image are white (background glass).
        """
        if units not in _READ_UNITS:
            raise ValueError(f"units must be one of {_READ_UNITS}, got {units!r}.")
        mpp = self.mpp if mpp is None else _check_mpp(mpp, "read_region")
        if units == "target":
            if out_shape is not None:
                raise ValueError("out_shape is (height, width) itself when units='target'.")
            f = mpp / self.mpp
            return self.read_region(
                x * f, y * f, width * f, height * f, mpp=mpp, out_shape=(height, width)
            )
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {width} x {height} px")
        if out_shape is None:
            f = self.mpp / mpp
            out_shape = (max(1, round(height * f)), max(1, round(width * f)))
        out_h, out_w = out_shape
        factor = min(width / out_w, height / out_h)  # level-0 pixels per output pixel
        level = self._best_level(factor)
        ds = self.level_downsamples[level]
        lx, ly, lw, lh = x / ds, y / ds, width / ds, height / ds
        if lw == out_w and lh == out_h and lx == int(lx) and ly == int(ly):
            return self._read_padded(level, int(lx), int(ly), int(lx) + out_w, int(ly) + out_h)
        pad = int(math.ceil(max(lw / out_w, lh / out_h))) + 2  # the resampling filter's reach
        # Only output pixels whose source (with the filter's reach) touches the image are
        # resampled; the rest is background, which resampling maps to itself exactly. A read
        # mostly outside the image (a tile's margin at a coarse mpp) then never builds the
        # whole padded region at the source resolution.
        sx, sy = lw / out_w, lh / out_h
        h, w = self.level_shape(level)
        j0, j1 = _touching(lx, sx, pad, w, out_w)
        i0, i1 = _touching(ly, sy, pad, h, out_h)
        if (i0, j0, i1, j1) == (0, 0, out_h, out_w):
            return self._resample(level, lx, ly, lw, lh, out_w, out_h, pad)
        out = np.full((out_h, out_w, 3), _BACKGROUND, dtype=np.uint8)
        if j1 > j0 and i1 > i0:
            out[i0:i1, j0:j1] = self._resample(
                level, lx + j0 * sx, ly + i0 * sy, (j1 - j0) * sx, (i1 - i0) * sy,
                j1 - j0, i1 - i0, pad,
            )  # fmt: skip
        return out

    def _resample(self, level, lx, ly, lw, lh, out_w, out_h, pad) -> np.ndarray:
        """The box ``(lx, ly, lw, lh)`` of ``level`` resampled to ``(out_h, out_w)``."""
        ix0, iy0 = math.floor(lx) - pad, math.floor(ly) - pad
        ix1, iy1 = math.ceil(lx + lw) + pad, math.ceil(ly + lh) + pad
        src = self._read_padded(level, ix0, iy0, ix1, iy1)
        box = (lx - ix0, ly - iy0, lx - ix0 + lw, ly - iy0 + lh)
        out = Image.fromarray(src).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """A whole-slide thumbnail and its scale.

        Returns:
            ``(image, scale)``: ``(h, w, 3)`` uint8 with ``max(h, w) <= max_side``, and ``scale``,
            thumbnail pixels per level-0 pixel.
        """
        scale = min(1.0, max_side / max(self.width, self.height))
        out_shape = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        img = self.read_region(0, 0, self.width, self.height, out_shape=out_shape)
        return img, out_shape[1] / self.width

    def __repr__(self) -> str:
        src = f" {self.path.name!r}" if self.path is not None else ""
        return (
            f"{type(self).__name__}({src} {self.width} x {self.height} px, mpp={self.mpp:g}, "
            f"{len(self.level_downsamples)} level(s))"
        )

    # -- helpers -----------------------------------------------------------------------------
    def _best_level(self, factor: float) -> int:
        """The coarsest stored level that is still at least as fine as ``factor`` asks."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= factor * (1 + 1e-6) and d >= self.level_downsamples[best]:
                best = i
        return best

    def _read_padded(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        h, w = self.level_shape(level)
        out = np.full((y1 - y0, x1 - x0, 3), _BACKGROUND, dtype=np.uint8)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._read_level(
                level, cx0, cy0, cx1, cy1
            )
        return out


_READ_UNITS = ("level0", "target")


def _touching(start: float, step: float, reach: int, size: int, n: int) -> tuple[int, int]:
    """``[k0, k1)``: the output pixels ``k`` (source span ``start + k * step`` to ``start +
    (k + 1) * step``, widened by ``reach``) that overlap ``[0, size)`` of the source, kept on
    the generous side."""
    k0 = math.floor((-reach - start) / step) - 1
    k1 = math.ceil((size + reach - start) / step) + 1
    return min(max(k0, 0), n), min(max(k1, 0), n)


def _to_rgb(a: np.ndarray, source: object) -> np.ndarray:
    """Coerce a ``(h, w)``, ``(h, w, 1|3|4)`` array of any integer/float type to uint8 RGB."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise FormatError(
            f"{source}: expected an RGB(A) or greyscale image, got an array of shape {a.shape}."
        )
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(a)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(a) * (255.0 / hi), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


class ArrayImage(SlideImage):
    """A virtual slide over an in-memory array, with the same interface as file readers."""

    def __init__(self, array: np.ndarray, mpp: float, path: str | Path | None = None):
        self._array = _to_rgb(np.asarray(array), "array")
        self.height, self.width = self._array.shape[:2]
        self.mpp = _check_mpp(mpp, "ArrayImage")
        self.path = Path(path) if path is not None else None

    @property
    def array(self) -> np.ndarray:
        return self._array

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    def _read_level(self, level, x0, y0, x1, y1):
        return self._array[y0:y1, x0:x1]


@contextlib.contextmanager
def _no_pixel_limit():
    """Lift Pillow's decompression-bomb limit (89 Mpx) for a slide the user named: a whole-slide
    JPEG or PNG is legitimately larger (it warns above the limit and refuses above twice it)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


class PillowImage(SlideImage):
    """JPEG or PNG, opened for its size at once and decoded whole on the first read."""

    def __init__(self, path: str | Path, mpp: float | None):
        self.path = Path(path)
        self.mpp = _check_mpp(mpp, f"Image {self.path}")
        try:
            with _no_pixel_limit(), Image.open(self.path) as im:
                self.width, self.height = im.size
        except Exception as e:  # PIL raises many types for broken files
            raise FormatError(f"Cannot read image {self.path}: {e}. Is it a valid JPEG/PNG?") from e
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    def _load(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                try:
                    with _no_pixel_limit(), Image.open(self.path) as im:
                        self._array = np.asarray(im.convert("RGB"))
                except Exception as e:
                    raise FormatError(f"Cannot decode image {self.path}: {e}.") from e
        return self._array

    def _read_level(self, level, x0, y0, x1, y1):
        return self._load()[y0:y1, x0:x1]


def _tiff_mpp(tf) -> float | None:
    """Level-0 µm per pixel from OME-XML, an SVS description, ImageJ or resolution tags."""
    page = tf.pages[0]
    if tf.is_ome and tf.ome_metadata:
        try:
            root = ET.fromstring(tf.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                    value = float(el.get("PhysicalSizeX"))
                    unit = el.get("PhysicalSizeXUnit", "µm")
                    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
                    return value * scale.get(unit, 1.0)
        except (ET.ParseError, ValueError):
            pass
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        return float(m.group(1))
    if desc.startswith("{"):
        try:
            meta = json.loads(desc)
            if isinstance(meta, dict) and "mpp" in meta:
                return float(meta["mpp"])
        except (json.JSONDecodeError, TypeError, ValueError):
            pass
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if tf.is_imagej and (tf.imagej_metadata or {}).get("unit") in ("micron", "um", "µm"):
        return 1.0 / px_per_unit
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2 and px_per_unit > 1000:  # inch; ignore screen defaults such as 72 or 300 dpi
        return 25400.0 / px_per_unit
    return None


class TiffImage(SlideImage):
    """TIFF / pyramidal TIFF / OME-TIFF / SVS through tifffile, decoding tiles on demand."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tifffile
        import zarr

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            levels = list(series.levels)
        except Exception as e:
            raise FormatError(f"Cannot read TIFF {self.path}: {e}. Is it a valid TIFF?") from e
        file_mpp = _tiff_mpp(self._tif)
        if mpp is not None and file_mpp is not None and abs(mpp - file_mpp) > 1e-3 * file_mpp:
            log.warning("%s: using mpp=%g given, not %g from the file", self.path, mpp, file_mpp)
        self.mpp = _check_mpp(mpp if mpp is not None else file_mpp, f"Image {self.path}")
        self._axes = []
        self._shapes = []
        for lv in levels:
            axes = lv.axes.replace("Q", "")
            if not ("Y" in axes and "X" in axes):
                raise FormatError(f"{self.path}: image axes {lv.axes!r} have no Y and X.")
            self._axes.append(lv.axes)
            self._shapes.append((lv.shape[lv.axes.index("Y")], lv.shape[lv.axes.index("X")]))
        self.height, self.width = self._shapes[0]
        self._downsamples = tuple(self.width / s[1] for s in self._shapes)
        store = series.aszarr()
        root = zarr.open(store, mode="r")
        self._levels = (
            [root] if hasattr(root, "shape") else [root[str(i)] for i in range(len(levels))]
        )

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    def level_shape(self, level: int) -> tuple[int, int]:
        return self._shapes[level]

    def _read_level(self, level, x0, y0, x1, y1):
        axes = self._axes[level]
        index = []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y0, y1))
            elif ax == "X":
                index.append(slice(x0, x1))
            elif ax == "S":
                index.append(slice(None))
            else:  # first plane of any other axis (channel planes are handled below)
                index.append(slice(None) if ax == "C" else 0)
        a = np.asarray(self._levels[level][tuple(index)])
        kept = [ax for ax in axes if ax in "YXSC"]
        for ax in "SC":  # planar RGB (PlanarConfiguration=2: SYX) or channel planes: move last
            if ax in kept and kept.index(ax) < kept.index("X"):
                a = np.moveaxis(a, kept.index(ax), -1)
                kept.append(kept.pop(kept.index(ax)))
        return _to_rgb(a, self.path)

    def close(self) -> None:
        self._tif.close()


class OpenSlideImage(SlideImage):
    """Any format OpenSlide reads (``pip install 'hexpress[openslide]'``)."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        try:
            import openslide
        except ImportError as e:
            raise FormatError(
                f"{path}: this format needs OpenSlide. Install it with "
                "`pip install 'hexpress[openslide]'`, or convert the slide to pyramidal TIFF."
            ) from e
        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as e:
            raise FormatError(f"OpenSlide cannot read {self.path}: {e}.") from e
        props = self._slide.properties
        file_mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = _check_mpp(mpp if mpp is not None else file_mpp, f"Image {self.path}")
        self.width, self.height = self._slide.dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    def level_shape(self, level: int) -> tuple[int, int]:
        w, h = self._slide.level_dimensions[level]
        return h, w

    def _read_level(self, level, x0, y0, x1, y1):
        d = self.level_downsamples[level]
        region = self._slide.read_region(
            (round(x0 * d), round(y0 * d)), level, (x1 - x0, y1 - y0)
        ).convert("RGB")
        return np.asarray(region)


def open_image(path: str | Path, mpp: float | None = None) -> SlideImage:
    """Open a slide image lazily, choosing the backend by file type.

    Args:
        path: TIFF/OME-TIFF/SVS (tifffile), JPEG/PNG (Pillow), or an OpenSlide format.
        mpp: µm per pixel of the full-resolution level. Required where the file does not say;
            overrides the file's value where it does.

    Raises:
        InputFileError: the file does not exist.
        FormatError: the file cannot be read or its type is not supported.
        UnitsError: no ``mpp`` given and none in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Image file not found: {path}. Check the path.")
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return TiffImage(path, mpp)
    if name.endswith(PILLOW_SUFFIXES):
        return PillowImage(path, mpp)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return OpenSlideImage(path, mpp)
    raise FormatError(
        f"Unsupported image type {path.suffix!r} for {path}. Supported: "
        f"{', '.join(IMAGE_SUFFIXES)}."
    )


def write_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float,
    *,
    tile: int = 256,
    min_level_side: int = 512,
    compression: str | None = "zlib",
) -> Path:
    """Write an RGB array as a tiled pyramidal TIFF with its pixel size, atomically.

    Levels halve until the longer side is under ``min_level_side``; they are stored as SubIFDs
    (readable by tifffile, OpenSlide, QuPath). The pixel size is stored as resolution in
    pixels per centimetre and as ``{"mpp": ...}`` in the image description.
    """
    import tifffile

    path = Path(path)
    image = _to_rgb(np.asarray(image), "write_tiff")
    mpp = _check_mpp(mpp, "write_tiff")
    levels = [image]
    while max(levels[-1].shape[:2]) > min_level_side:
        prev = levels[-1]
        h, w = prev.shape[:2]
        smaller = Image.fromarray(prev).resize(
            (max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX
        )
        levels.append(np.asarray(smaller))
    res = 1e4 / mpp
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
        kw = dict(
            photometric="rgb",
            tile=(tile, tile),
            compression=compression,
            resolutionunit="CENTIMETER",
        )
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            resolution=(res, res),
            description=json.dumps({"mpp": mpp}),
            metadata=None,
            **kw,
        )
        for i, lv in enumerate(levels[1:], start=1):
            r = res / 2**i
            tw.write(lv, subfiletype=1, resolution=(r, r), metadata=None, **kw)
    return path
