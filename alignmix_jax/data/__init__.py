"""Input pipelines: tfds datasets, TinyImageNet, image folders and sklearn digits.

`config.data` names a dataset and its splits (see `default_data_config`; the split syntax is in
`splits`); `get_dataset_info` describes it; `make_train_iterator` / `make_eval_iterator` yield
host-local NumPy batches; `prefetch_to_mesh` turns them into global `jax.Array`s sharded along the
`data` mesh axis. Images arrive as uint8; `model_input` (inside the jitted steps) augments them
where the batch carries parameters and normalises them (`device_transform`).
"""

from alignmix_jax.data.base import DataUnavailableError
from alignmix_jax.data.config import (
    DATASETS,
    OFFICIAL_CIFAR_MEAN,
    OFFICIAL_CIFAR_STD,
    default_data_config,
)
from alignmix_jax.data.device_transform import Normalisation, model_input
from alignmix_jax.data.pipeline import (
    DatasetInfo,
    get_dataset_info,
    make_eval_iterator,
    make_train_iterator,
    prefetch_to_mesh,
    steps_per_epoch,
)

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "DatasetInfo",
    "Normalisation",
    "OFFICIAL_CIFAR_MEAN",
    "OFFICIAL_CIFAR_STD",
    "default_data_config",
    "get_dataset_info",
    "make_eval_iterator",
    "make_train_iterator",
    "model_input",
    "prefetch_to_mesh",
    "steps_per_epoch",
]
