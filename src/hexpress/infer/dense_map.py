"""The on-disk dense map of a slide: a chunked zarr store, float16, that describes itself.

Layout of ``map.zarr`` (a zarr group):

* ``map``: ``(H, W, C)`` float16, **channels last**, chunked spatially with every channel of a
  chunk together (``(core, core, C)``, one chunk per tile core). Aggregation reads a spatial
  window and needs all channels of it at once (a unit's prediction is a vector over genes), and
  the summed-area-table gathers pick ``(n, C)`` rows that are contiguous in this layout. Map cell
  ``(i, j)`` covers input pixels ``[i*stride, (i+1)*stride)`` (rows) of the slide at
  ``model_mpp``; its level-0 area is ``[j, j+1) * map_mpp / slide_mpp`` in x. ``C`` is the
  number of genes (``mode="field"``) or genes + 1 total channel (``mode="density"``, last).
  Cells that were never predicted (tiles without tissue) hold the fill value **NaN**.
  Compressed with Blosc LZ4 and byte shuffle, which decodes several times faster than zarr's
  default Zstandard; maps written before in Zstandard read and resume as they are.
* ``coverage``: ``(H, W)`` bool, True where the model was run.
* ``tiles_done``: ``(n_tiles,)`` bool, set after each batch of tiles is written (resume).
* ``tissue``: ``(h, w)`` bool, the thumbnail tissue mask (``attrs["tissue_scale"]`` mask px per
  level-0 px).
* ``attrs``: ``map_mpp`` (= ``model_mpp * stride``), ``origin_px`` (level-0 px of the map's
  top-left corner, ``[0, 0]``), ``stride``, ``model_mpp``, ``genes``, ``channels``,
  ``normalization``, ``mode``, ``model`` (name, kwargs), ``checkpoint`` (path, sha256), ``slide``
  (path, width, height, mpp), ``tile_grid``, ``fill_value`` and ``complete``.

``complete`` is written ``False`` at creation and ``True`` last, after every tile; readers refuse a
map that is not complete, so a killed run never leaves a map that looks finished.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hexpress._files import atomic_dir
from hexpress.errors import FormatError, InputFileError

__all__ = ["DenseMap", "create_dense_map", "open_dense_map", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_KIND = "hexpress.dense_map"


def _map_codec():
    """The map's compressor: Blosc LZ4 with byte shuffle (fast to decode; every aggregation
    pass decodes the whole map), in place of zarr's default Zstandard."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


class DenseMap:
    """A dense map store opened for reading or writing (see the module docstring).

    Use :func:`create_dense_map` and :func:`open_dense_map` rather than the constructor.
    """

    def __init__(self, group, path: Path):
        self._group = group
        self.path = Path(path)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``: map cells and channels."""
        return tuple(self._group["map"].shape)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(self._group["map"].chunks)

    @property
    def genes(self) -> list[str]:
        return list(self._group.attrs["genes"])

    @property
    def mode(self) -> str:
        return str(self._group.attrs["mode"])

    @property
    def stride(self) -> int:
        return int(self._group.attrs["stride"])

    @property
    def model_mpp(self) -> float:
        return float(self._group.attrs["model_mpp"])

    @property
    def map_mpp(self) -> float:
        return float(self._group.attrs["map_mpp"])

    @property
    def slide_mpp(self) -> float:
        return float(self._group.attrs["slide"]["mpp"])

    @property
    def normalization(self) -> dict:
        return dict(self._group.attrs.get("normalization") or {})

    @property
    def complete(self) -> bool:
        return bool(self._group.attrs.get("complete", False))

    @property
    def tissue_mask(self):
        """The thumbnail tissue mask as a :class:`~hexpress.infer.tissue.TissueMask`."""
        from hexpress.infer.tissue import TissueMask

        return TissueMask(
            np.asarray(self._group["tissue"][:], dtype=bool),
            float(self._group.attrs["tissue_scale"]),
        )

    # -- data ----------------------------------------------------------------------------------
    def read(
        self, y0: int, y1: int, x0: int, x1: int, *, dtype=np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read map cells ``[y0:y1, x0:x1]``, padding outside the map as not covered.

        Args:
            y0, y1, x0, x1: the cells (any range; cells outside the map are not covered).
            dtype: of the values; ``np.float16`` gives the stored values without a conversion
                (and, for a window inside the map, without a copy).

        Returns:
            ``(values, covered)``: ``(h, w, C)`` ``dtype`` with NaN where not covered, and
            ``(h, w)`` bool.
        """
        H, W, C = self.shape
        if 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W:  # inside the map: nothing to pad
            vals = self._group["map"][y0:y1, x0:x1].astype(dtype, copy=False)
            return vals, np.asarray(self._group["coverage"][y0:y1, x0:x1], dtype=bool)
        vals = np.full((y1 - y0, x1 - x0, C), np.nan, dtype=dtype)
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
        if cy1 > cy0 and cx1 > cx0:
            vals[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._group["map"][cy0:cy1, cx0:cx1]
        return vals, self.read_coverage(y0, y1, x0, x1)

    def read_coverage(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``(h, w)`` bool: which of cells ``[y0:y1, x0:x1]`` were predicted (False outside)."""
        H, W = self.shape[:2]
        cov = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
        if cy1 > cy0 and cx1 > cx0:
            cov[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._group["coverage"][
                cy0:cy1, cx0:cx1
            ]
        return cov

    def write(self, y0: int, x0: int, values: np.ndarray) -> None:
        """Write ``(h, w, C)`` values at map cell ``(y0, x0)`` and mark them covered."""
        h, w = values.shape[:2]
        self._group["map"][y0 : y0 + h, x0 : x0 + w] = values.astype(np.float16)
        self._group["coverage"][y0 : y0 + h, x0 : x0 + w] = True

    def tiles_done(self) -> np.ndarray:
        """``(n_tiles,)`` bool: tiles already written (or skipped for lack of tissue)."""
        return np.asarray(self._group["tiles_done"][:], dtype=bool)

    def mark_done(self, indices) -> None:
        """Record tiles as written; called after their values are on disk."""
        done = self.tiles_done()
        done[np.asarray(list(indices), dtype=np.int64)] = True
        self._group["tiles_done"][:] = done

    def finalize(self, **extra) -> None:
        """Mark the map complete (the last write of a run)."""
        done = self.tiles_done()
        if not done.all():
            raise FormatError(
                f"{self.path}: {int((~done).sum())} tile(s) are not written; cannot mark complete."
            )
        attrs = dict(extra)
        attrs["complete"] = True
        self._group.attrs.update(attrs)

    def __repr__(self) -> str:
        H, W, C = self.shape
        state = "complete" if self.complete else "INCOMPLETE"
        return (
            f"DenseMap({str(self.path)!r}, {H} x {W} cells x {C} channels, "
            f"map_mpp={self.map_mpp:g}, mode={self.mode}, {state})"
        )


def create_dense_map(
    path: str | Path,
    *,
    map_shape: tuple[int, int],
    n_channels: int,
    chunk_cells: int,
    n_tiles: int,
    tissue_mask: np.ndarray,
    attrs: dict[str, Any],
) -> DenseMap:
    """Create an empty, incomplete map store at ``path`` (an existing one is removed).

    Args:
        path: the ``.zarr`` folder.
        map_shape: ``(H, W)`` in map cells.
        n_channels: channels of the model's output.
        chunk_cells: spatial chunk side in map cells (a tile core, so tile writes hit whole
            chunks and never read-modify-write a neighbour's chunk).
        n_tiles: tiles of the grid (for the resume flags).
        tissue_mask: thumbnail tissue mask, stored with the map.
        attrs: the map's description (see the module docstring); ``complete`` is set False.
    """
    import zarr

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    # the folder appears under its final name only once its arrays exist
    with atomic_dir(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        H, W = int(map_shape[0]), int(map_shape[1])
        c = max(1, min(int(chunk_cells), max(H, W)))
        group.create_array(
            "map", shape=(H, W, int(n_channels)), chunks=(c, c, int(n_channels)), dtype="float16",
            fill_value=np.nan, compressors=[_map_codec()],
        )  # fmt: skip
        group.create_array("coverage", shape=(H, W), chunks=(c, c), dtype="bool", fill_value=False)
        group.create_array(
            "tiles_done", shape=(max(1, n_tiles),), chunks=(max(1, n_tiles),), dtype="bool",
            fill_value=False,
        )  # fmt: skip
        if n_tiles == 0:
            group["tiles_done"][:] = True
        tm = np.asarray(tissue_mask, dtype=bool)
        group.create_array("tissue", shape=tm.shape, dtype="bool", fill_value=False)
        group["tissue"][:] = tm
        meta = dict(attrs)
        meta.update(kind=_KIND, format_version=FORMAT_VERSION, fill_value="NaN", complete=False)
        group.attrs.update(meta)
    return DenseMap(zarr.open_group(str(path), mode="r+"), path)


def open_dense_map(path: str | Path, *, mode: str = "r", require_complete: bool = True) -> DenseMap:
    """Open a map written by :func:`hexpress.infer.predict_slide`.

    Args:
        path: the ``map.zarr`` folder.
        mode: ``"r"`` or ``"r+"``.
        require_complete: refuse a map whose run did not finish.

    Raises:
        InputFileError: no such folder.
        FormatError: not a hexpress map, or (with ``require_complete``) an incomplete one.
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"Dense map not found: {path}. Run `hexpress predict` first.")
    try:
        group = zarr.open_group(str(path), mode=mode)
        kind = group.attrs.get("kind")
    except Exception as e:  # zarr raises several types for foreign folders
        raise FormatError(f"{path} is not a zarr store: {e}.") from e
    if kind != _KIND:
        raise FormatError(
            f"{path} is not a hexpress dense map (kind={kind!r}); it must be written by "
            "`hexpress predict`."
        )
    dm = DenseMap(group, path)
    if require_complete and not dm.complete:
        done = dm.tiles_done()
        raise FormatError(
            f"{path} is incomplete: its run stopped after {int(done.sum())} of {len(done)} "
            "tiles. Rerun the same `hexpress predict` command to resume it."
        )
    return dm
