"""hexpress.models: dense and patch models, encoders, aggregation, loss, TTA and checkpoints.

Importing this package registers every model family, so :func:`create_model` and
``hexpress models`` see them all.
"""

from hexpress.models import patch as _patch  # noqa: F401  (registers patch models)
from hexpress.models import pixnet as _pixnet  # noqa: F401  (registers PixNet variants)
from hexpress.models import ridge as _ridge  # noqa: F401  (registers ridge baselines)
from hexpress.models.aggregate import (
    MODES,
    Footprints,
    aggregate,
    aggregate_batch,
    footprint_area_px,
    footprint_weights,
    predict_units,
    weights_to_torch,
)
from hexpress.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from hexpress.models.encoders import (
    create_encoder,
    encoder_weights_available,
    list_encoders,
    load_lite0_classifier,
    load_packaged_classifier,
)
from hexpress.models.loss import per_gene_pcc, pixnet_loss
from hexpress.models.patch import MeanBaseline, PatchModel
from hexpress.models.pixnet import PixNet
from hexpress.models.registry import (
    create_model,
    describe_model,
    encoder_info,
    list_models,
    register_model,
)
from hexpress.models.ridge import RidgeBaseline
from hexpress.models.tta import dense_tta, tta_predict

__all__ = [
    "MODES",
    "Checkpoint",
    "Footprints",
    "MeanBaseline",
    "PatchModel",
    "PixNet",
    "RidgeBaseline",
    "aggregate",
    "aggregate_batch",
    "create_encoder",
    "create_model",
    "dense_tta",
    "encoder_info",
    "encoder_weights_available",
    "footprint_area_px",
    "footprint_weights",
    "list_encoders",
    "list_models",
    "load_checkpoint",
    "load_lite0_classifier",
    "load_packaged_classifier",
    "describe_model",
    "per_gene_pcc",
    "pixnet_loss",
    "predict_units",
    "register_model",
    "save_checkpoint",
    "tta_predict",
    "weights_to_torch",
]
