"""Where the examples come from: one module per kind of source behind `get_source`, and the
selection of a split's rows (tfds slicing, `(stratified)`, `data.train_examples_per_class`).

Source modules: `tfds_source` (tfds datasets, prepared once as array_record; TinyImageNet through
`tiny_imagenet`'s builder), `image_folder` (`{split}/{class}/*.jpg|png`), `digits` (scikit-learn).
Each provides `metadata(spec)`, `read_split(spec, name)` and `split_labels(spec, name)`; see
`base`. `load_split(spec, split)` returns the selected examples as an object answering
`len()` and `read(indices)`.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from alignmix_jax.data import digits, image_folder, splits, tfds_source
from alignmix_jax.data.base import DatasetMetadata, channel_stats
from alignmix_jax.data.config import DataSpec

SOURCES: dict[str, types.ModuleType] = {
    "tfds": tfds_source,
    "tfds_records": tfds_source,
    "image_folder": image_folder,
    "digits": digits,
}
TRAIN_FIELD = "data.train_split"


def get_source(spec: DataSpec) -> types.ModuleType:
    """The source module of `spec`'s dataset (`tfds_source`, `image_folder` or `digits`)."""
    return SOURCES[spec.defaults.source]


def dataset_metadata(spec: DataSpec) -> DatasetMetadata:
    """Class names, channels, split shard lengths and default normalisation of the dataset."""
    return _metadata(spec.storage)


@functools.cache
def _metadata(storage: DataSpec) -> DatasetMetadata:
    return get_source(storage).metadata(storage)


def _split_size(spec: DataSpec, split: str, field: str) -> int:
    """Rows `split` names (before any per-class subset); ValueError naming `field` when it does
    not parse or fit the dataset."""
    return splits.split_size(split, dataset_metadata(spec).split_shards, field=field)


def select(
    spec: DataSpec, split: str, *, per_class: int | None = None, field: str = "split"
) -> splits.Selection:
    """The rows `split` names, ((split name, rows (n,)), ...); with `per_class`, a seeded subset
    of `per_class` rows of every class (`splits.examples_per_class`). A split that does not parse
    or fit the dataset raises ValueError naming `field`."""
    _split_size(spec, split, field)
    return _select(spec.storage, spec.split_seed, split, per_class)


@functools.lru_cache(maxsize=16)
def _select(storage: DataSpec, seed: int, split: str, per_class: int | None):
    meta = _metadata(storage)
    labels_of = functools.partial(get_source(storage).split_labels, storage)
    selection = splits.select_rows(split, meta.split_shards, labels_of, seed)
    if per_class is None:
        return selection
    return splits.examples_per_class(
        selection, labels_of, per_class, seed, meta.class_names, split
    )


def num_examples(
    spec: DataSpec, split: str, *, per_class: int | None = None, field: str = "split"
) -> int:
    """How many examples `select` holds; reads labels only for `per_class` (the size of a slice
    does not depend on the order it is taken from)."""
    size = _split_size(spec, split, field)
    if per_class is None:
        return size
    return sum(len(rows) for _, rows in _select(spec.storage, spec.split_seed, split, per_class))


def load_split(spec: DataSpec, split: str, *, per_class: int | None = None, field: str = "split"):
    """The examples `select` names, as an `ArraySource` (in memory) or a
    `tfds_source.RecordSource` (decoded per record); both answer `len()` and `read(indices)`."""
    _split_size(spec, split, field)
    return _load(spec.storage, spec.split_seed, split, per_class)


@functools.lru_cache(maxsize=8)
def _load(storage: DataSpec, seed: int, split: str, per_class: int | None):
    source = get_source(storage)
    parts = []
    for name, rows in _select(storage, seed, split, per_class):
        whole = source.read_split(storage, name)
        is_whole = len(rows) == len(whole) and np.array_equal(rows, np.arange(len(whole)))
        parts.append(whole if is_whole else whole.take(rows))
    return parts[0] if len(parts) == 1 else type(parts[0]).concatenate(parts)


def training_examples(spec: DataSpec):
    """`load_split` of the training rows: `data.train_split`, subset by
    `data.train_examples_per_class`."""
    return load_split(
        spec, spec.train_split, per_class=spec.train_examples_per_class, field=TRAIN_FIELD
    )


def num_training_examples(spec: DataSpec) -> int:
    """How many examples `training_examples` holds."""
    return num_examples(
        spec, spec.train_split, per_class=spec.train_examples_per_class, field=TRAIN_FIELD
    )


def _check_channels(field: str, values: tuple[float, ...], spec: DataSpec, channels: int):
    if len(values) != channels:
        raise ValueError(
            f"data.{field}: expected {channels} values, one per channel of dataset "
            f"{spec.name!r}, got {values!r}"
        )
    return values


@functools.cache
def normalisation(spec: DataSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on [0, 1] the pipelines normalise with: `data.mean`/`data.std`
    when set, else the dataset's default, else computed from the training rows (image folders,
    digits: the rows of `data.train_split` after `data.train_examples_per_class`)."""
    meta = dataset_metadata(spec)
    mean = spec.mean or meta.mean
    std = spec.std or meta.std
    if mean is None or std is None:
        images = training_examples(spec).images
        computed_mean, computed_std = channel_stats(images)
        mean, std = mean or computed_mean, std or computed_std
        if min(std) <= 0:
            raise ValueError(
                f"data.std: the training rows of {spec.name!r} are constant in a channel (std "
                f"{std}); set data.std"
            )
    mean = _check_channels("mean", mean, spec, meta.channels)
    return mean, _check_channels("std", std, spec, meta.channels)
