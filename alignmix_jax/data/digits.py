"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled; no download at all.

The fixed `train` (1,437) / `test` (360) split is a permutation with seed 0; images are uint8
(the 17 grey levels upsampled bilinearly, then rounded to 0..255), shape (S, S, 1) for
`image_size` S.
"""

from __future__ import annotations

import functools

import numpy as np

from alignmix_jax.data import augment
from alignmix_jax.data.base import ArraySource, DatasetMetadata
from alignmix_jax.data.config import DataSpec

NUM_TRAIN = 1437


@functools.lru_cache(maxsize=4)
def _splits(image_size: int) -> dict[str, ArraySource]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    upsampled = augment.bilinear_upsample(digits.images * (255.0 / 16.0), image_size)[..., None]
    images = np.clip(np.round(upsampled), 0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    split_rows = {"train": order[:NUM_TRAIN], "test": order[NUM_TRAIN:]}
    labels = digits.target.astype(np.int32)
    return {
        split: ArraySource(np.ascontiguousarray(images[rows]), labels[rows])
        for split, rows in split_rows.items()
    }


def metadata(spec: DataSpec) -> DatasetMetadata:
    """Class names "0".."9", one channel, the two splits; normalisation from the training rows."""
    splits = _splits(spec.image_size)
    return DatasetMetadata(
        class_names=tuple(str(digit) for digit in range(10)),
        channels=1,
        split_shards={split: (len(source),) for split, source in splits.items()},
        mean=None,
        std=None,
    )


def read_split(spec: DataSpec, name: str) -> ArraySource:
    """The whole split `name` ("train" or "test") in memory."""
    return _splits(spec.image_size)[name]


def split_labels(spec: DataSpec, name: str) -> np.ndarray:
    """Labels (n,) int32 of split `name`."""
    return _splits(spec.image_size)[name].labels
