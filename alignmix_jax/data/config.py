"""Data configuration: the supported datasets, their defaults, and validation of `config.data`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from alignmix_jax.data import splits

DEFAULT_CACHE_DIR = "~/.cache/alignmix_jax"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What the official AlignMixup code normalises CIFAR-10, CIFAR-100 and TinyImageNet with
# (cifar10_100/main.py, tiny_imgnet/main.py). The mean is CIFAR-10's; the std is the widely copied
# (0.2023, 0.1994, 0.2010), not the std of CIFAR-10's pixels, (0.2470, 0.2435, 0.2616), which is
# the `cifar10` default here.
OFFICIAL_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_CIFAR_STD = (0.2023, 0.1994, 0.2010)


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

TFDS_SOURCES = ("tfds", "tfds_records")
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
    "validation_split",
    "split_seed",
    "train_examples_per_class",
    "mean",
    "std",
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
    validation_split: str | None  # held out, evaluated beside eval_split: e.g. "train[45000:]"
    split_seed: int
    train_examples_per_class: int | None
    mean: tuple[float, ...] | None  # None: the dataset default or computed from the training rows
    std: tuple[float, ...] | None

    @property
    def defaults(self) -> DatasetDefaults:
        return DATASETS[self.name]

    @property
    def storage(self) -> DataSpec:
        """This spec reduced to what decides how whole splits are read and stored (dataset,
        paths, image size, the split folder classes come from): what sources cache them under."""
        return dataclasses.replace(
            self,
            augment="none",
            train_split=splits.split_names(self.train_split)[0],
            eval_split="",
            validation_split=None,
            split_seed=0,
            train_examples_per_class=None,
            mean=None,
            std=None,
        )


def default_data_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """Returns a complete `config.data` ConfigDict for dataset `name`, with `overrides` applied.

    Fields left unset are typed placeholders (None until set), so that the command line can set
    them: `--config.data.std='(0.2023, 0.1994, 0.2010)'`,
    `--config.data.train_examples_per_class=10`.
    """
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    defaults = DATASETS[name]
    fields = {
        "name": name,
        "data_dir": config_dict.placeholder(str),
        "manual_dir": config_dict.placeholder(str),
        "path": config_dict.placeholder(str),
        "cache_dir": DEFAULT_CACHE_DIR,
        "image_size": defaults.image_size,
        "augment": "auto",
        "train_split": "train",
        "eval_split": defaults.eval_split,
        "validation_split": config_dict.placeholder(str),
        "split_seed": 0,
        "train_examples_per_class": config_dict.placeholder(int),
        "mean": config_dict.placeholder(tuple),
        "std": config_dict.placeholder(tuple),
    }
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"overrides: unknown fields {unknown}; expected among {CONFIG_FIELDS}")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def _expand(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def _int_at_least(field: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive" if least == 1 else "a non-negative"
        raise ValueError(f"data.{field}: expected {kind} int, got {value!r}")
    return value


def _channel_values(field: str, value: Any) -> tuple[float, ...] | None:
    """`data.mean`/`data.std` as a tuple of floats (None stays None); std must be positive."""
    if value is None:
        return None
    numbers = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    numbers = numbers and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or (field == "std" and min(value) <= 0):
        kind = "positive" if field == "std" else "finite"
        raise ValueError(
            f"data.{field}: expected a tuple of {kind} numbers on the [0, 1] pixel scale, one per "
            f"channel (e.g. (0.2023, 0.1994, 0.2010)), got {value!r}"
        )
    return tuple(float(v) for v in value)


def _split_field(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"data.{field}: expected a split such as 'train[:45000]', got {value!r}")
    splits.parse_split(value, field=f"data.{field}")
    return value


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
    if defaults.source not in TFDS_SOURCES:
        for field in ("data_dir", "manual_dir"):
            if data_config.get(field) is not None:
                raise ValueError(
                    f"data.{field}: dataset {name!r} does not read it (only tfds datasets do), "
                    f"got {data_config[field]!r}; unset it"
                )
    per_class = data_config.get("train_examples_per_class")
    if per_class is not None:
        per_class = _int_at_least("train_examples_per_class", per_class, 1)
    split_seed = data_config.get("split_seed")
    return DataSpec(
        name=name,
        data_dir=_expand(data_config.get("data_dir")),
        manual_dir=_expand(data_config.get("manual_dir")),
        path=path,
        cache_dir=_expand(data_config.get("cache_dir") or DEFAULT_CACHE_DIR),
        image_size=image_size,
        augment=augment,
        train_split=_split_field("train_split", data_config.get("train_split") or "train"),
        eval_split=_split_field("eval_split", data_config.get("eval_split") or defaults.eval_split),
        validation_split=(
            None
            if data_config.get("validation_split") is None
            else _split_field("validation_split", data_config["validation_split"])
        ),
        split_seed=_int_at_least("split_seed", 0 if split_seed is None else split_seed, 0),
        train_examples_per_class=per_class,
        mean=_channel_values("mean", data_config.get("mean")),
        std=_channel_values("std", data_config.get("std")),
    )
