"""Data configuration: the supported datasets, their defaults, and validation of `config.data`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

DEFAULT_CACHE_DIR = "~/.cache/alignmix_jax"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    """What a dataset name implies: where it comes from, its size and its paper augmentation."""

    source: str  # "tfds" (small, held in memory), "tfds_records" (decoded per record), "digits",
    # "image_folder"
    image_size: int
    auto_augment: str
    eval_split: str
    mean: tuple[float, ...] | None  # None: computed from the training split
    std: tuple[float, ...] | None
    variable_size: bool = False  # records of any size: resized/cropped to image_size per image
    has_boxes: bool = False


DATASETS: dict[str, DatasetDefaults] = {
    "cifar10": DatasetDefaults(
        "tfds", 32, "cifar", "test", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetDefaults(
        "tfds", 32, "cifar", "test", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    # Fashion-MNIST "auto": random crop 28 pad 4 + horizontal flip (the CIFAR recipe at 28x28).
    "fashion_mnist": DatasetDefaults("tfds", 28, "cifar", "test", (0.2860,), (0.3530,)),
    "imagenet2012": DatasetDefaults(
        "tfds_records", 224, "imagenet", "validation", IMAGENET_MEAN, IMAGENET_STD, True
    ),
    "caltech_birds2011": DatasetDefaults(
        "tfds_records", 224, "imagenet", "test", IMAGENET_MEAN, IMAGENET_STD, True, True
    ),
    "tiny_imagenet": DatasetDefaults(
        "tfds_records",
        64,
        "tinyimagenet",
        "validation",
        (0.4802, 0.4481, 0.3975),
        (0.2770, 0.2691, 0.2821),
    ),
    "image_folder": DatasetDefaults("image_folder", 32, "cifar", "test", None, None),
    # Digits "auto": random crop with padding image_size // 8, no flip (digits are not symmetric).
    "digits": DatasetDefaults("digits", 32, "digits", "test", None, None),
}

AUGMENTATIONS = ("none", "cifar", "tinyimagenet", "imagenet", "digits")
CONFIG_FIELDS = (
    "name",
    "data_dir",
    "manual_dir",
    "path",
    "cache_dir",
    "image_size",
    "augment",
    "train_split",
    "eval_split",
)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A validated, hashable `config.data` with every default filled in and paths expanded."""

    name: str
    data_dir: str | None
    manual_dir: str | None
    path: str | None
    cache_dir: str
    image_size: int
    augment: str
    train_split: str
    eval_split: str

    @property
    def defaults(self) -> DatasetDefaults:
        return DATASETS[self.name]


def default_data_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """Returns a complete `config.data` ConfigDict for dataset `name`, with `overrides` applied."""
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    defaults = DATASETS[name]
    fields = {
        "name": name,
        "data_dir": None,
        "manual_dir": None,
        "path": None,
        "cache_dir": DEFAULT_CACHE_DIR,
        "image_size": defaults.image_size,
        "augment": "auto",
        "train_split": "train",
        "eval_split": defaults.eval_split,
    }
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"overrides: unknown fields {unknown}; expected among {CONFIG_FIELDS}")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def _expand(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def resolve_spec(data_config: Mapping[str, Any] | ml_collections.ConfigDict) -> DataSpec:
    """Validates `config.data` (ConfigDict or dict) and fills in the per-dataset defaults."""
    if isinstance(data_config, ml_collections.ConfigDict):
        data_config = data_config.to_dict()
    if not isinstance(data_config, Mapping):
        raise ValueError(
            f"data_config: expected a ConfigDict or dict, got {type(data_config).__name__}"
        )
    name = data_config.get("name")
    if name not in DATASETS:
        raise ValueError(f"data.name: unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    unknown = sorted(set(data_config) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"data: unknown fields {unknown}; expected among {CONFIG_FIELDS}")
    defaults = DATASETS[name]
    image_size = data_config.get("image_size") or defaults.image_size
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"data.image_size: expected an int >= 8, got {image_size!r}")
    augment = data_config.get("augment") or "auto"
    if augment == "auto":
        augment = defaults.auto_augment
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"data.augment: got {augment!r}; expected 'auto' or one of {list(AUGMENTATIONS)}"
        )
    path = _expand(data_config.get("path"))
    if name in ("tiny_imagenet", "image_folder") and path is None:
        raise ValueError(f"data.path: dataset {name!r} needs the root folder of its data, got None")
    return DataSpec(
        name=name,
        data_dir=_expand(data_config.get("data_dir")),
        manual_dir=_expand(data_config.get("manual_dir")),
        path=path,
        cache_dir=_expand(data_config.get("cache_dir") or DEFAULT_CACHE_DIR),
        image_size=image_size,
        augment=augment,
        train_split=data_config.get("train_split") or "train",
        eval_split=data_config.get("eval_split") or defaults.eval_split,
    )
