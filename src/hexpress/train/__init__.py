"""hexpress.train: configs, training data, the training loop and distributed training.

``train(load_config("configs/pixnet_her2st.yaml", ["optim.max_steps=100"]))`` runs a recipe;
``hexpress train CONFIG [key.sub=value ...]`` is the same from the command line.
``optim.phases: [{frozen: N}, {finetune: M}]`` trains the decoder on cached frozen-encoder
features first (:mod:`hexpress.train.feature_cache`, ``hexpress cache info|clear``);
``hexpress study`` runs an ablation grid scored on validation blocks (:mod:`hexpress.train.study`).
"""

from hexpress.train.augment import AugmentParams, colour_jitter, d4_image, d4_points
from hexpress.train.config import (
    AugmentConfig,
    DataConfig,
    GenesConfig,
    GeometryConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SampleSource,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from hexpress.train.data import (
    DenseCropDataset,
    PatchDataset,
    SlideData,
    TrainingData,
    UnitSet,
    crop_units,
    load_training_data,
)
from hexpress.train.distributed import DistInfo, init_distributed
from hexpress.train.feature_cache import (
    FeatureCache,
    PooledFeatures,
    build_feature_cache,
    build_pooled_cache,
    clear_cache,
    describe_cache,
)
from hexpress.train.study import expand_study, load_study, run_study
from hexpress.train.trainer import RunResult, load_training_state, train

__all__ = [
    "FeatureCache",
    "PooledFeatures",
    "build_feature_cache",
    "build_pooled_cache",
    "clear_cache",
    "describe_cache",
    "expand_study",
    "load_study",
    "run_study",
    "AugmentConfig",
    "AugmentParams",
    "DataConfig",
    "DenseCropDataset",
    "DistInfo",
    "GenesConfig",
    "GeometryConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PatchDataset",
    "RunConfig",
    "RunResult",
    "SampleSource",
    "SlideData",
    "TrainConfig",
    "TrainingData",
    "UnitSet",
    "apply_overrides",
    "colour_jitter",
    "config_from_dict",
    "config_to_dict",
    "crop_units",
    "d4_image",
    "d4_points",
    "init_distributed",
    "load_config",
    "load_training_data",
    "load_training_state",
    "save_config",
    "train",
]
