"""The tile grid of a whole-slide dense prediction.

Everything is in pixels of the slide resampled to the checkpoint's ``model_mpp`` ("input px").
The dense map has one cell per ``stride`` x ``stride`` input pixels: map cell ``(i, j)`` covers
input pixels ``[i*stride, (i+1)*stride) x [j*stride, (j+1)*stride)``.

Each tile is a *core* of whole map cells plus a *margin* on every side that is at least the
model's receptive field. Only the core of a tile's output is kept, so every kept map cell sees the
same input pixels as in one untiled pass over the (white-padded) slide: tiling does not change the
result. Core corners, margin and tile size are multiples of ``align_px`` (the stride, or the
network's total downsampling when larger), so the pooling grids of the network fall on the same
pixels in every tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from hexpress.errors import ConfigError

__all__ = [
    "Tile",
    "TileGrid",
    "make_tile_grid",
    "DEFAULT_CORE_PX",
    "DEFAULT_TILE_PX",
    "GRAPH_TILE_PX",
]

DEFAULT_TILE_PX = 3072
"""Tile side (margins included) when no tile size is given. Memory grows with the tile side
(PixNet-Lite0, 250 genes, batches of 2 tiles run one at a time on the CPU, each tile's core kept
as float16 as soon as it is computed: 2.27 GB peak for the whole process at 2560 px, 2.50 GB at
3072 px, 3.05 GB at 3584 px, with a 256 px margin; about 1.1 GB of it before the first tile) and
the overlap shrinks with it: at 3072 px with a 512 px margin 44 % of the pixels are kept, with
256 px 69 %. PixNet runs its decoder on the core only, so most of the FLOPs are kept either way.
``benchmarks/bench_tile_memory.py`` measures the peak per tile side."""

GRAPH_TILE_PX = 2048
"""Largest default tile side for a dense model run as an exported graph (``runtime="onnx"`` or
``"openvino"``). The graph holds a whole tile's encoder activations at once (PyTorch runs the
encoder's first stages in strips of rows): with OpenVINO, PixNet-Lite0 and 250 genes, the
process peaked at 3.8 GB with 3,040 px tiles and 2.5 GB with 2,304 px ones. On 2 cores the
6.5 mm region took as long in 2,048 px tiles (220 s) as in 2,912 px ones (219 s), the graph
running at a higher rate on the smaller tile (docs/benchmarks.md)."""

DEFAULT_CORE_PX = 1024
"""The smallest core a default tile gets (models with margins wider than 768 px)."""


@dataclass(frozen=True)
class Tile:
    """One tile. ``index`` is its position in :attr:`TileGrid.tiles` (row-major)."""

    index: int
    row: int
    col: int
    cell_y0: int  # core, in map cells: [cell_y0, cell_y1) x [cell_x0, cell_x1), clipped to the map
    cell_x0: int
    cell_y1: int
    cell_x1: int
    read_y: int  # the pixels read, in input px: [read_y, read_y + tile_px) (may extend outside)
    read_x: int


@dataclass(frozen=True)
class TileGrid:
    """A grid of overlapping tiles over a slide at ``model_mpp``.

    Attributes:
        image_shape: ``(height, width)`` of the slide at ``model_mpp`` in input px.
        map_shape: ``(height, width)`` of the dense map in cells, ``ceil(image / stride)``.
        stride: input px per map cell.
        tile_px: side of a tile as fed to the model, in input px.
        margin_px: overlap on each side, in input px (>= receptive field, multiple of align_px).
        core_cells: side of a tile's kept core in map cells.
    """

    image_shape: tuple[int, int]
    map_shape: tuple[int, int]
    stride: int
    tile_px: int
    margin_px: int
    core_cells: int

    @property
    def n_rows(self) -> int:
        return math.ceil(self.map_shape[0] / self.core_cells)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.map_shape[1] / self.core_cells)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def tile(self, index: int) -> Tile:
        row, col = divmod(index, self.n_cols)
        c = self.core_cells
        y0, x0 = row * c, col * c
        return Tile(
            index=index,
            row=row,
            col=col,
            cell_y0=y0,
            cell_x0=x0,
            cell_y1=min(y0 + c, self.map_shape[0]),
            cell_x1=min(x0 + c, self.map_shape[1]),
            read_y=y0 * self.stride - self.margin_px,
            read_x=x0 * self.stride - self.margin_px,
        )

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self)):
            yield self.tile(i)

    def to_dict(self) -> dict:
        return {
            "image_shape": list(self.image_shape),
            "map_shape": list(self.map_shape),
            "stride": self.stride,
            "tile_px": self.tile_px,
            "margin_px": self.margin_px,
            "core_cells": self.core_cells,
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
        }


def make_tile_grid(
    image_shape: tuple[int, int],
    *,
    stride: int,
    receptive_field_px: int,
    tile_px: int | None = None,
    align_px: int | None = None,
    max_tile_px: int = DEFAULT_TILE_PX,
) -> TileGrid:
    """Lay out tiles over an image of ``image_shape`` input px.

    Args:
        image_shape: ``(height, width)`` of the slide at ``model_mpp``.
        stride: input px per map cell.
        receptive_field_px: the model's receptive field in input px; the margin covers it.
        tile_px: requested tile side in input px; rounded down to a multiple of ``align_px``.
            Default (``None``): at most ``max_tile_px`` (or a core of
            :data:`DEFAULT_CORE_PX` px plus the margins when that is larger), with the cores
            shrunk to share the image's longest side out evenly.
        align_px: tile corners fall on multiples of this (default ``stride``); it is rounded up
            to a multiple of ``stride``.
        max_tile_px: the largest default tile side (:data:`DEFAULT_TILE_PX`; exported graphs
            :data:`GRAPH_TILE_PX`).

    Raises:
        ConfigError: the tile is too small to hold its margins and one aligned core.
    """
    stride = int(stride)
    if stride < 1:
        raise ConfigError(f"the model's stride must be a positive integer, got {stride}.")
    align = max(stride, int(align_px or stride))
    align = math.ceil(align / stride) * stride
    margin = math.ceil(max(0, int(receptive_field_px)) / align) * align
    if tile_px is None:
        min_core = max(align, math.ceil(DEFAULT_CORE_PX / align) * align)
        max_core = max(int(max_tile_px), 2 * margin + min_core) - 2 * margin
        max_core = max(align, max_core // align * align)
        # as few cores along the longest side as fit, shared out evenly (the last tile would
        # otherwise be mostly outside the image)
        longest = max(int(image_shape[0]), int(image_shape[1]), 1)
        n = math.ceil(longest / max_core)
        tile_px = 2 * margin + min(max_core, math.ceil(longest / n / align) * align)
    tile = (int(tile_px) // align) * align
    core_px = tile - 2 * margin
    if core_px < align:
        need = 2 * margin + align
        raise ConfigError(
            f"tile of {tile_px} px is too small for a margin of {margin} px on each side "
            f"(the model's receptive field is {receptive_field_px} px): use --tile-px {need} "
            "or more (a few times that is faster)."
        )
    h, w = int(image_shape[0]), int(image_shape[1])
    map_shape = (math.ceil(h / stride), math.ceil(w / stride))
    return TileGrid(
        image_shape=(h, w),
        map_shape=map_shape,
        stride=stride,
        tile_px=tile,
        margin_px=margin,
        core_cells=core_px // stride,
    )
