"""tfds datasets (CIFAR, Fashion-MNIST, ImageNet, CUB, and TinyImageNet through this package's
builder) read through `array_record` random-access data sources.

A dataset is prepared once per data_dir by tfds (`download_and_prepare`): from `data.manual_dir`
when given, else by downloading. Preparing needs TensorFlow, which the `prepare` extra installs
(`pip install 'alignmix_jax[prepare]'`); reading a prepared dataset does not import it. tfds itself
(tensorflow-datasets) comes with the `tfds` extra and is imported only when a tfds dataset is
used; image folders and digits never import it. Small
datasets are held in memory (`ArraySource`); large ones are decoded per record (`RecordSource`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import urllib.error
import urllib.parse

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from alignmix_jax.data import augment
from alignmix_jax.data.base import ArraySource, DatasetMetadata, DataUnavailableError
from alignmix_jax.data.config import DataSpec

PREPARE_EXTRA = (
    "pip install 'alignmix_jax[prepare]' (in a checkout: pip install -e '.[prepare]')"
)
TFDS_EXTRA = "pip install 'alignmix_jax[tfds]' (in a checkout: pip install -e '.[tfds]')"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
READ_CHUNK = 10_000
DOWNLOAD_PROBE_SEC = 10  # one connection attempt to each download host before tfds downloads


class RecordSource:
    """Rows of one or more tfds data sources, decoded record by record.

    `data_sources` are tfds random-access sources whose images are left encoded
    (`SkipDecoding`): they are decoded here, with PIL, as tfds would without OpenCV, or cropped
    while decoding (`read_cropped`); `index (n, 2)` lists (source, row) per example.
    """

    def __init__(self, data_sources, index, image_size, variable_size, box_key, channels):
        self._data_sources = list(data_sources)
        self._index = np.asarray(index, np.int64).reshape(-1, 2)
        self._image_size = image_size
        self.variable_size = variable_size
        self.has_boxes = box_key is not None
        self._box_key = box_key
        self._channels = channels

    def _like(self, data_sources, index) -> RecordSource:
        return RecordSource(
            data_sources, index, self._image_size, self.variable_size, self._box_key,
            self._channels,
        )

    @classmethod
    def of(cls, data_source, image_size, variable_size, box_key, channels) -> RecordSource:
        """Every record of `data_source` (images left encoded), in order."""
        index = np.stack([np.zeros(len(data_source), np.int64), np.arange(len(data_source))], 1)
        return cls([data_source], index, image_size, variable_size, box_key, channels)

    def __len__(self) -> int:
        return len(self._index)

    def take(self, rows: np.ndarray) -> RecordSource:
        """The examples at `rows (n,)`, in that order (nothing is read)."""
        return self._like(self._data_sources, self._index[rows])

    @staticmethod
    def concatenate(parts: list[RecordSource]) -> RecordSource:
        """The examples of `parts`, one after the other."""
        sources, indices = [], []
        for part in parts:
            indices.append(part._index + np.array([len(sources), 0]))
            sources += part._data_sources
        return parts[0]._like(sources, np.concatenate(indices))

    def _records(self, indices: np.ndarray) -> list:
        records = [None] * len(indices)
        index = self._index[indices]
        for source in np.unique(index[:, 0]):
            positions = np.flatnonzero(index[:, 0] == source)
            rows = [int(row) for row in index[positions, 1]]
            for position, record in zip(
                positions, self._data_sources[source].__getitems__(rows), strict=True
            ):
                records[position] = record
        return records

    def read(self, indices: np.ndarray):
        """Returns (images, labels (n,) int32, boxes (n, 4) float32 or None) at `indices`; images
        is a list of (H_i, W_i, C) uint8 arrays for variable-size data, else (n, S, S, C) uint8."""
        records = self._records(np.asarray(indices))
        images = [augment.decode(record["image"], self._channels) for record in records]
        if not self.variable_size:
            images = augment.resize_images(np.stack(images), self._image_size)
        labels = np.array([record["label"] for record in records], np.int32)
        boxes = None
        if self.has_boxes:
            boxes = np.stack([np.asarray(r[self._box_key], np.float32) for r in records])
        return images, labels, boxes

    def read_cropped(self, indices: np.ndarray, params: dict, image_size: int):
        """Returns (images (n, image_size, image_size, C) uint8, labels (n,) int32): the
        RandomResizedCrop of each example by the rows of `params`, decoded at reduced size where
        the crop allows (`augment.decode_crop_resize`)."""
        records = self._records(np.asarray(indices))
        crops = [
            augment.decode_crop_resize(
                record["image"], augment.param_row(params, k), image_size, self._channels
            )
            for k, record in enumerate(records)
        ]
        labels = np.array([record["label"] for record in records], np.int32)
        return np.stack(crops), labels


# ----------------------------------------------------------------------------- preparation


def _required_files(builder) -> tuple[list[str], list[str]]:
    """(file names expected in a manual_dir, their URLs) for a tfds builder."""
    url_infos = builder.url_infos or {}
    names, urls = [], []
    for url, info in url_infos.items():
        name = info.filename or os.path.basename(urllib.parse.urlparse(url).path)
        if name not in names:
            names.append(name)
        urls.append(url)
    return names, urls


def _unavailable(name: str, builder, reason: str) -> DataUnavailableError:
    files, urls = _required_files(builder)
    lines = [
        f"dataset {name!r} is not prepared in {builder.data_dir} and {reason}.",
        f"It needs these files: {files}.",
    ]
    if urls:
        lines.append(f"Download them from {urls}")
    lines.append(
        "Put them in one folder and set data.manual_dir to it: tfds then prepares the dataset "
        "from there without network."
    )
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        lines.append(f"tfds's instructions: {instructions.strip()}")
    return DataUnavailableError("\n".join(lines))


def _check_manual_dir(name: str, builder, manual_dir: str | None) -> None:
    """Raises DataUnavailableError when `manual_dir` lacks a file tfds lists for `builder`, or
    when there is no manual_dir and the dataset needs a manual download."""
    if manual_dir is None:
        if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            raise _unavailable(name, builder, "needs a manual download")
        return
    files, _ = _required_files(builder)
    present = set(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else set()
    missing = [file for file in files if file not in present]
    if missing or not present:
        reason = f"data.manual_dir {manual_dir!r} lacks {missing or 'all of them'}"
        raise _unavailable(name, builder, reason)


def _check_tensorflow(name: str, builder) -> None:
    """Raises DataUnavailableError naming the `prepare` extra when TensorFlow is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        raise DataUnavailableError(
            f"dataset {name!r} is not prepared in {builder.data_dir}, and preparing it needs "
            f"TensorFlow, which is not installed: {PREPARE_EXTRA}. Only preparing needs it; "
            "reading a prepared dataset does not."
        )


def _unreachable_host(urls: list[str]) -> str | None:
    """"host:port (why)" of the first download URL whose host takes no TCP connection within
    DOWNLOAD_PROBE_SEC, or None when every host answers."""
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=DOWNLOAD_PROBE_SEC):
                pass
        except OSError as error:
            return f"{parsed.hostname}:{port} ({error})"
    return None


def _download_errors() -> tuple[type[BaseException], ...]:
    """The errors tfds's download manager raises when a file cannot be fetched."""
    import requests
    import tensorflow_datasets as tfds

    return (
        tfds.download.DownloadError,
        requests.exceptions.RequestException,
        urllib.error.URLError,
    )


def _tiny_imagenet_builder(spec: DataSpec):
    from alignmix_jax.data.tiny_imagenet import TinyImagenet, find_tiny_imagenet_root

    builder = TinyImagenet(data_dir=spec.data_dir, file_format="array_record")
    if not builder.is_prepared() and find_tiny_imagenet_root(spec.path) is None:
        raise DataUnavailableError(
            f"dataset 'tiny_imagenet' is not prepared in {builder.data_dir} and data.path "
            f"{spec.path!r} holds no tiny-imagenet-200 folder (wnids.txt, words.txt, "
            "train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt). "
            f"Download and unzip {TINY_IMAGENET_URL} and set data.path to the folder."
        )
    return builder, spec.path


@functools.cache
def prepared_builder(spec: DataSpec):
    """The tfds builder of `spec.name`, prepared as `array_record` in `spec.data_dir`.

    Preparation reads `spec.manual_dir` when given; without it, tfds downloads. A missing dataset
    raises `DataUnavailableError` naming the files needed and where to put them (also when tfds's
    download fails), and a missing TensorFlow raises it naming the `prepare` extra. With several
    JAX processes, process 0 prepares first while the others wait at a barrier, so hosts sharing
    one data_dir never prepare the same dataset at the same time.
    """
    if jax.process_count() == 1:
        return _prepare_builder(spec)
    barrier = f"alignmix_jax: tfds dataset {spec.name} prepared by process 0"
    if jax.process_index() == 0:
        try:
            return _prepare_builder(spec)
        finally:  # also on failure, so the other processes do not wait forever
            multihost_utils.sync_global_devices(barrier)
    multihost_utils.sync_global_devices(barrier)
    return _prepare_builder(spec)


def _import_tfds(name: str):
    """The tensorflow_datasets module; DataUnavailableError naming the `tfds` extra and dataset
    `name` when it is not installed."""
    try:
        import tensorflow_datasets as tfds
    except ModuleNotFoundError as error:
        if error.name != "tensorflow_datasets":
            raise
        raise DataUnavailableError(
            f"dataset {name!r} is a tfds dataset, and tensorflow-datasets is not installed: "
            f"{TFDS_EXTRA}"
        ) from None
    return tfds


def _prepare_builder(spec: DataSpec):
    """`prepared_builder` on one process: prepares `spec` unless its data_dir already has it."""
    tfds = _import_tfds(spec.name)
    if spec.data_dir is not None and not os.path.isdir(spec.data_dir):
        raise DataUnavailableError(
            f"data.data_dir {spec.data_dir!r} does not exist: point it at the folder that holds "
            f"prepared tfds datasets, or create it (empty) to prepare {spec.name!r} into it"
        )

    if spec.name == "tiny_imagenet":
        builder, manual_dir = _tiny_imagenet_builder(spec)
    else:
        builder = tfds.builder(spec.name, data_dir=spec.data_dir, file_format="array_record")
        manual_dir = spec.manual_dir
    if builder.is_prepared():
        if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise DataUnavailableError(
                f"dataset {spec.name!r} is prepared in {builder.data_dir} as "
                f"{builder.info.file_format.value}, but random access needs array_record: set "
                "data.data_dir to another folder to prepare it again as array_record"
            )
        return builder
    if spec.name != "tiny_imagenet":
        _check_manual_dir(spec.name, builder, manual_dir)
    _check_tensorflow(spec.name, builder)
    if manual_dir is None:
        files, urls = _required_files(builder)
        unreachable = _unreachable_host(urls)
        if unreachable is not None:  # tfds would retry for minutes before failing
            raise _unavailable(
                spec.name, builder,
                f"its download host {unreachable} cannot be reached (one try of "
                f"{DOWNLOAD_PROBE_SEC} s)",
            )
        logging.warning(
            "tfds downloads %s (%s) from %s. Set data.manual_dir to a folder holding these files "
            "to skip the download.", spec.name, files, urls,
        )
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
    except _download_errors() as error:
        reason = f"tfds could not download it: {type(error).__name__}: {error}"
        raise _unavailable(spec.name, builder, reason) from error
    return builder


# ----------------------------------------------------------------------------- reading


def metadata(spec: DataSpec) -> DatasetMetadata:
    """Class names, channels and shard lengths from tfds's dataset info; the default
    normalisation of `DATASETS[spec.name]`. Prepares the dataset once."""
    info = prepared_builder(spec).info
    return DatasetMetadata(
        class_names=tuple(info.features["label"].names),
        channels=int(info.features["image"].shape[-1]),
        split_shards={name: tuple(split.shard_lengths) for name, split in info.splits.items()},
        mean=spec.defaults.mean,
        std=spec.defaults.std,
    )


def _record_chunks(data_source):
    """Every record of `data_source`, in order, as lists of at most READ_CHUNK records."""
    for start in range(0, len(data_source), READ_CHUNK):
        stop = min(start + READ_CHUNK, len(data_source))
        yield data_source.__getitems__(list(range(start, stop)))


@functools.lru_cache(maxsize=4)
def read_split(spec: DataSpec, name: str) -> ArraySource | RecordSource:
    """The whole split `name`: in memory (resized to `image_size`) for small datasets, a
    `RecordSource` for the ones decoded per record."""
    builder = prepared_builder(spec)
    if spec.defaults.source == "tfds_records":
        import tensorflow_datasets as tfds

        decoders = {"image": tfds.decode.SkipDecoding()}
        data_source = builder.as_data_source(split=name, decoders=decoders)
        box_key = "bbox" if spec.defaults.has_boxes else None
        channels = int(builder.info.features["image"].shape[-1])
        return RecordSource.of(
            data_source, spec.image_size, spec.defaults.variable_size, box_key, channels
        )
    data_source = builder.as_data_source(split=name)
    images, labels = [], []
    for records in _record_chunks(data_source):
        images.append(np.stack([record["image"] for record in records]))
        labels.append(np.array([record["label"] for record in records], np.int32))
    images = augment.resize_images(np.concatenate(images), spec.image_size)
    return ArraySource(images, np.concatenate(labels))


@functools.lru_cache(maxsize=4)
def split_labels(spec: DataSpec, name: str) -> np.ndarray:
    """Labels (n,) int32 of split `name`; records are read without decoding their images."""
    import tensorflow_datasets as tfds

    if spec.defaults.source != "tfds_records":
        return read_split(spec, name).labels
    decoders = {"image": tfds.decode.SkipDecoding()}
    data_source = prepared_builder(spec).as_data_source(split=name, decoders=decoders)
    labels = [
        np.array([record["label"] for record in records], np.int32)
        for records in _record_chunks(data_source)
    ]
    return np.concatenate(labels) if labels else np.zeros(0, np.int32)
