"""Where the examples come from: tfds `array_record` data sources, image folders, sklearn digits.

Small datasets (CIFAR, Fashion-MNIST, digits, image folders) are held in memory as one array per
split (`ArraySource`); large ones (ImageNet, CUB, TinyImageNet) are read and decoded per record
from a tfds random-access data source (`RecordSource`). Both answer `read(indices)`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.parse

import jax
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from alignmix_jax.data import augment
from alignmix_jax.data.config import DataSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DIGITS_NUM_TRAIN = 1437
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
READ_CHUNK = 10_000


class DataUnavailableError(FileNotFoundError, ValueError):
    """A dataset or path is missing; the message says which files are needed and where."""


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """Facts about a dataset that do not require reading its images."""

    class_names: tuple[str, ...]
    channels: int
    split_sizes: dict[str, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """One split in memory: `images (N, S, S, C)` uint8 (or float32 on [0, 1]), `labels (N,)`."""

    images: np.ndarray
    labels: np.ndarray
    variable_size = False
    has_boxes = False

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray):
        """Returns (images (n, S, S, C), labels (n,) int32, None) of the examples at `indices`."""
        return self.images[indices], self.labels[indices], None


class RecordSource:
    """One split of a tfds data source, decoded record by record."""

    def __init__(self, data_source, image_size: int, variable_size: bool, box_key: str | None):
        self._data_source = data_source
        self._image_size = image_size
        self.variable_size = variable_size
        self.has_boxes = box_key is not None
        self._box_key = box_key

    def __len__(self) -> int:
        return len(self._data_source)

    def read(self, indices: np.ndarray):
        """Returns (images, labels (n,) int32, boxes (n, 4) float32 or None) at `indices`; images
        is a list of (H_i, W_i, C) uint8 arrays for variable-size data, else (n, S, S, C) uint8."""
        records = self._data_source.__getitems__([int(index) for index in indices])
        images = [record["image"] for record in records]
        if not self.variable_size:
            images = augment.resize_images(np.stack(images), self._image_size)
        labels = np.array([record["label"] for record in records], np.int32)
        boxes = None
        if self.has_boxes:
            boxes = np.stack([np.asarray(r[self._box_key], np.float32) for r in records])
        return images, labels, boxes


def check_split(spec: DataSpec, split: str, available) -> None:
    """Raises ValueError naming the available splits when `split` is not one of them."""
    if split not in available:
        raise ValueError(
            f"split: {split!r} is not a split of dataset {spec.name!r}; available: "
            f"{sorted(available)}"
        )


# ----------------------------------------------------------------------------- tfds datasets


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


def _reachable(urls: list[str], timeout: float = 5.0) -> bool:
    """Whether a TCP connection to every host of `urls` opens within `timeout` seconds."""
    hosts = {
        (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
        for parsed in map(urllib.parse.urlparse, urls)
    }
    for host in hosts:
        try:
            socket.create_connection(host, timeout=timeout).close()
        except OSError:
            return False
    return bool(hosts)


def _unavailable(name: str, builder, reason: str, files: list[str], urls: list[str]):
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


def _check_can_prepare(name: str, builder, manual_dir: str | None) -> None:
    """Raises DataUnavailableError unless `manual_dir` holds the files or the network answers."""
    files, urls = _required_files(builder)
    if manual_dir is None:
        if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            raise _unavailable(name, builder, "needs a manual download", files, urls)
        if not _reachable(urls):
            raise _unavailable(
                name, builder, "the network cannot reach its download hosts", files, urls
            )
        return
    present = set(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else set()
    missing = [file for file in files if file not in present]
    if missing or not present:
        raise _unavailable(
            name,
            builder,
            f"data.manual_dir {manual_dir!r} lacks {missing or 'all of them'}",
            files,
            urls,
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

    Preparation reads `spec.manual_dir` when given; without it, tfds downloads, after a quick
    check that the download hosts answer. A missing dataset raises `DataUnavailableError` naming
    the files needed and where to put them, instead of waiting on network retries. With several
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


def _prepare_builder(spec: DataSpec):
    """`prepared_builder` on one process: prepares `spec` unless its data_dir already has it."""
    import tensorflow_datasets as tfds

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
        _check_can_prepare(spec.name, builder, manual_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    return builder


def _tfds_metadata(spec: DataSpec) -> DatasetMetadata:
    builder = prepared_builder(spec)
    info = builder.info
    return DatasetMetadata(
        class_names=tuple(info.features["label"].names),
        channels=int(info.features["image"].shape[-1]),
        split_sizes={name: int(split.num_examples) for name, split in info.splits.items()},
        mean=spec.defaults.mean,
        std=spec.defaults.std,
    )


def _tfds_source(spec: DataSpec, split: str):
    builder = prepared_builder(spec)
    check_split(spec, split, builder.info.splits.keys())
    data_source = builder.as_data_source(split=split)
    if spec.defaults.source == "tfds_records":
        box_key = "bbox" if spec.defaults.has_boxes else None
        return RecordSource(data_source, spec.image_size, spec.defaults.variable_size, box_key)
    images, labels = [], []
    for start in range(0, len(data_source), READ_CHUNK):
        stop = min(start + READ_CHUNK, len(data_source))
        records = data_source.__getitems__(list(range(start, stop)))
        images.append(np.stack([record["image"] for record in records]))
        labels.append(np.array([record["label"] for record in records], np.int32))
    images = augment.resize_images(np.concatenate(images), spec.image_size)
    return ArraySource(images, np.concatenate(labels))


# ----------------------------------------------------------------------------- sklearn digits


@functools.lru_cache(maxsize=4)
def _digits_splits(image_size: int) -> dict[str, ArraySource]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = augment.bilinear_upsample(digits.images / 16.0, image_size)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    split_indices = {"train": order[:DIGITS_NUM_TRAIN], "test": order[DIGITS_NUM_TRAIN:]}
    labels = digits.target.astype(np.int32)
    return {
        split: ArraySource(np.ascontiguousarray(images[rows]), labels[rows])
        for split, rows in split_indices.items()
    }


def _digits_metadata(spec: DataSpec) -> DatasetMetadata:
    splits = _digits_splits(spec.image_size)
    train = splits["train"].images
    return DatasetMetadata(
        class_names=tuple(str(digit) for digit in range(10)),
        channels=1,
        split_sizes={split: len(source) for split, source in splits.items()},
        mean=(float(train.mean()),),
        std=(float(train.std()),),
    )


# ----------------------------------------------------------------------------- image folders


def _stamp(path: str) -> str:
    stat = os.stat(path)
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _extract_archive(archive: str, cache_dir: str) -> str:
    """Extracts `archive` once into `cache_dir/extracted/`; returns the extracted folder."""
    name = os.path.basename(archive)
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    target = os.path.join(cache_dir, "extracted", f"{name}-{_stamp(archive)}")
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".extracting-", dir=os.path.dirname(target))
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
    try:
        os.rename(scratch, target)
    except OSError:  # another process finished the same extraction first
        shutil.rmtree(scratch)
    return target


def _subdirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_folder_root(spec: DataSpec) -> str:
    """The folder holding `{split}/{class}/*.jpg|png` for `spec.path` (a folder or tar archive)."""
    path = spec.path
    if not os.path.exists(path):
        raise DataUnavailableError(
            f"data.path: {path!r} does not exist; expected a folder of {{split}}/{{class}}/"
            f"*.jpg|png images or a {'/'.join(ARCHIVE_SUFFIXES)} archive of one"
        )
    if os.path.isfile(path):
        if not path.endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"data.path: {path!r} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} archive"
            )
        path = _extract_archive(path, spec.cache_dir)
    while spec.train_split not in _subdirs(path) and len(_subdirs(path)) == 1:
        path = os.path.join(path, _subdirs(path)[0])
    if spec.train_split not in _subdirs(path):
        raise DataUnavailableError(
            f"data.path: {spec.path!r} has no {spec.train_split!r} split folder; expected "
            f"{{split}}/{{class}}/*.jpg|png, found folders {_subdirs(path)}"
        )
    return path


def _list_images(split_dir: str, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    for class_name in _subdirs(split_dir):
        if class_name not in class_names:
            raise ValueError(
                f"data.path: class folder {class_name!r} in {split_dir!r} is not a class of the "
                f"training split {class_names}"
            )
        class_dir = os.path.join(split_dir, class_name)
        names = sorted(n for n in os.listdir(class_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
        files += [os.path.join(class_dir, n) for n in names]
        labels += [class_names.index(class_name)] * len(names)
    return files, np.array(labels, np.int32)


def _decode(file: str, mode: str, image_size: int) -> np.ndarray:
    with Image.open(file) as image:
        image = image.convert(mode)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(image)
    return array[..., None] if mode == "L" else array


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of `images (N, H, W, C) uint8`."""
    flat = images.reshape(-1, images.shape[-1])
    total = np.zeros(flat.shape[1])
    total_sq = np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 22):
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += (chunk**2).sum(0)
    mean = total / len(flat)
    std = np.sqrt(total_sq / len(flat) - mean**2)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _build_image_folder_cache(root: str, spec: DataSpec, target: str) -> None:
    class_names = _subdirs(os.path.join(root, spec.train_split))
    listings = {s: _list_images(os.path.join(root, s), class_names) for s in _subdirs(root)}
    train_files = listings[spec.train_split][0]
    if not train_files:
        raise DataUnavailableError(
            f"data.path: {root!r}/{spec.train_split} holds no {IMAGE_EXTENSIONS} images"
        )
    with Image.open(train_files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
    scratch = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(target))
    decode = functools.partial(_decode, mode=mode, image_size=spec.image_size)
    workers = min(32, (os.cpu_count() or 1) * 4)
    split_sizes = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for split, (files, labels) in listings.items():
            if files:
                images = np.stack(list(pool.map(decode, files, chunksize=256)))
            else:
                shape = (0, spec.image_size, spec.image_size, 1 if mode == "L" else 3)
                images = np.zeros(shape, np.uint8)
            np.save(os.path.join(scratch, f"{split}-images.npy"), images)
            np.save(os.path.join(scratch, f"{split}-labels.npy"), labels)
            split_sizes[split] = len(files)
            if split == spec.train_split:
                mean, std = _channel_stats(images)
    meta = {"class_names": class_names, "channels": 1 if mode == "L" else 3,
            "split_sizes": split_sizes, "mean": mean, "std": std, "root": root}
    with open(os.path.join(scratch, "meta.json"), "w") as file:
        json.dump(meta, file)
    try:
        os.rename(scratch, target)
    except OSError:  # another process built the same cache first
        shutil.rmtree(scratch)


@functools.cache
def _image_folder_cache(spec: DataSpec) -> str:
    """The cache folder holding each split of an image folder decoded once as .npy arrays."""
    root = image_folder_root(spec)
    key = hashlib.sha1(f"{root}|{spec.train_split}|{spec.image_size}".encode()).hexdigest()[:12]
    target = os.path.join(spec.cache_dir, "image_folder", f"{os.path.basename(root)}-{key}")
    if not os.path.isdir(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _build_image_folder_cache(root, spec, target)
    return target


def _image_folder_metadata(spec: DataSpec) -> DatasetMetadata:
    with open(os.path.join(_image_folder_cache(spec), "meta.json")) as file:
        meta = json.load(file)
    return DatasetMetadata(
        class_names=tuple(meta["class_names"]),
        channels=meta["channels"],
        split_sizes=meta["split_sizes"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )


def _image_folder_source(spec: DataSpec, split: str) -> ArraySource:
    cache = _image_folder_cache(spec)
    check_split(spec, split, _image_folder_metadata(spec).split_sizes)
    images = np.load(os.path.join(cache, f"{split}-images.npy"))
    return ArraySource(images, np.load(os.path.join(cache, f"{split}-labels.npy")))


# ----------------------------------------------------------------------------- dispatch


@functools.cache
def dataset_metadata(spec: DataSpec) -> DatasetMetadata:
    """Class names, channels, split sizes and normalisation statistics of `spec`'s dataset."""
    kind = spec.defaults.source
    if kind == "digits":
        return _digits_metadata(spec)
    if kind == "image_folder":
        return _image_folder_metadata(spec)
    return _tfds_metadata(spec)


@functools.lru_cache(maxsize=8)
def load_split(spec: DataSpec, split: str):
    """The `ArraySource` or `RecordSource` of one split; ValueError for an unknown split."""
    kind = spec.defaults.source
    if kind == "digits":
        splits = _digits_splits(spec.image_size)
        check_split(spec, split, splits)
        return splits[split]
    if kind == "image_folder":
        return _image_folder_source(spec, split)
    return _tfds_source(spec, split)
