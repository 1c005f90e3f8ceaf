"""Whole-slide inference: dense maps on disk and expression of any units from them."""

from hexpress.infer.aggregate_disk import (
    aggregate_geometries,
    aggregate_units,
    finish_units,
    unit_sums,
    write_geometries,
    write_h5ad_atomic,
)
from hexpress.infer.dense_map import DenseMap, create_dense_map, open_dense_map
from hexpress.infer.engine import ModelInfo, model_info, predict_slide, resolve_device
from hexpress.infer.patch_engine import predict_patches
from hexpress.infer.pipeline import PredictOptions, predict_one, predict_slides
from hexpress.infer.preview import map_thumbnail, write_previews
from hexpress.infer.tiling import Tile, TileGrid, make_tile_grid
from hexpress.infer.tissue import TissueMask, detect_tissue
from hexpress.infer.units import (
    Units,
    grid_bins,
    grid_discs,
    keep_inside,
    read_cells,
    read_spots,
    units_from_anndata,
)

__all__ = [
    "DenseMap",
    "ModelInfo",
    "PredictOptions",
    "Tile",
    "TileGrid",
    "TissueMask",
    "Units",
    "aggregate_geometries",
    "aggregate_units",
    "create_dense_map",
    "detect_tissue",
    "finish_units",
    "grid_bins",
    "grid_discs",
    "keep_inside",
    "make_tile_grid",
    "map_thumbnail",
    "model_info",
    "open_dense_map",
    "predict_one",
    "predict_patches",
    "predict_slide",
    "predict_slides",
    "read_cells",
    "read_spots",
    "resolve_device",
    "unit_sums",
    "units_from_anndata",
    "write_geometries",
    "write_h5ad_atomic",
    "write_previews",
]
