"""What every data source delivers: its metadata, its splits as `ArraySource`s (in memory) or
`tfds_source.RecordSource`s (decoded per record), and `DataUnavailableError` when data is missing.

A source module (`tfds_source`, `image_folder`, `digits`) provides `metadata(spec) ->
DatasetMetadata`, `read_split(spec, name)` (a whole split) and `split_labels(spec, name) -> (n,)
int32`; `sources.get_source(spec)` picks the module of a dataset.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alignmix_jax.data import augment

STATS_CHUNK = 1 << 22  # pixels per chunk when computing channel statistics


class DataUnavailableError(FileNotFoundError, ValueError):
    """A dataset or path is missing; the message says which files are needed and where."""


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """Facts about a dataset that do not require reading its images.

    `split_shards` maps each split to its shard lengths (one shard for in-memory data); `mean` and
    `std` are the dataset's default normalisation, None where it is computed from the training rows.
    """

    class_names: tuple[str, ...]
    channels: int
    split_shards: dict[str, tuple[int, ...]]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @property
    def split_sizes(self) -> dict[str, int]:
        return {name: sum(shards) for name, shards in self.split_shards.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """Examples in memory: `images (N, S, S, C)` uint8, `labels (N,)`."""

    images: np.ndarray
    labels: np.ndarray
    variable_size = False
    has_boxes = False

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray):
        """Returns (images (n, S, S, C), labels (n,) int32, None) of the examples at `indices`."""
        return self.images[indices], self.labels[indices], None

    def read_cropped(self, indices: np.ndarray, params: dict, image_size: int):
        """Returns (images (n, image_size, image_size, C) uint8 cropped and resized by
        `augment.imagenet_crop_resize` with the rows of `params`, labels (n,) int32)."""
        crops = [
            augment.imagenet_crop_resize(self.images[index], augment.param_row(params, k),
                                         image_size)
            for k, index in enumerate(indices)
        ]
        return np.stack(crops), self.labels[indices]

    def take(self, rows: np.ndarray) -> ArraySource:
        """The examples at `rows (n,)`, in that order, copied into one array."""
        return ArraySource(self.images[rows], self.labels[rows])

    @staticmethod
    def concatenate(parts: list[ArraySource]) -> ArraySource:
        """The examples of `parts`, one after the other."""
        images = np.concatenate([part.images for part in parts])
        return ArraySource(images, np.concatenate([part.labels for part in parts]))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale of `images (N, H, W, C)`, uint8 (read as
    value / 255) or float on [0, 1]; accumulated in float64 over chunks."""
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    flat = images.reshape(-1, images.shape[-1])
    total = np.zeros(flat.shape[1])
    total_sq = np.zeros(flat.shape[1])
    for start in range(0, len(flat), STATS_CHUNK):
        chunk = flat[start : start + STATS_CHUNK].astype(np.float64) * scale
        total += chunk.sum(0)
        total_sq += (chunk**2).sum(0)
    mean = total / len(flat)
    std = np.sqrt(np.maximum(total_sq / len(flat) - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
