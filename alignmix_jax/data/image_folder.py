"""Any `{split}/{class}/*.jpg|png` folder, or a .tar/.tar.gz/.tgz archive of one.

Each split folder is decoded once, resized to `image_size`, into `.npy` arrays under
`cache_dir/image_folder/` (an archive is first extracted under `cache_dir/extracted/`); later runs
read the arrays. Classes are the training split's folder names, sorted; the examples of a split are
in class order, files sorted by name. Normalisation is computed from the training rows.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile

import numpy as np
from PIL import Image

from alignmix_jax.data import splits
from alignmix_jax.data.base import ArraySource, DatasetMetadata, DataUnavailableError
from alignmix_jax.data.config import DataSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# The generated archive of `:smoke` runs: classes, training and test images per class, image side.
SMOKE_SHAPE = (10, 16, 8, 32)


def smoke_archive(cache_dir: str) -> str:
    """A small archive in this source's format for `:smoke` runs, written once under
    `cache_dir/smoke/`: `images/{train,test}/class<k>/<i>.jpg`, SMOKE_SHAPE's classes of 32x32
    JPEGs (each class a colour, plus noise). Returns its path."""
    path = os.path.join(os.path.expanduser(cache_dir), "smoke", "image_folder.tar.gz")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    num_classes, num_train, num_test, side = SMOKE_SHAPE
    rng = np.random.default_rng(0)
    colours = rng.uniform(0, 255, (num_classes, 3))
    handle, scratch = tempfile.mkstemp(prefix=".writing-", dir=os.path.dirname(path))
    with os.fdopen(handle, "wb") as file, tarfile.open(fileobj=file, mode="w:gz") as archive:
        for split, count in (("train", num_train), ("test", num_test)):
            for label in range(num_classes):
                for index in range(count):
                    noise = rng.normal(0.0, 40.0, (side, side, 3))
                    pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                    encoded = io.BytesIO()
                    Image.fromarray(pixels).save(encoded, "JPEG")
                    member = tarfile.TarInfo(f"images/{split}/class{label}/{index:03d}.jpg")
                    member.size = encoded.tell()
                    encoded.seek(0)
                    archive.addfile(member, encoded)
    os.replace(scratch, path)
    return path


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


def _train_folder(spec: DataSpec) -> str:
    """The split folder the classes come from: the first split `data.train_split` names."""
    return splits.split_names(spec.train_split)[0]


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
    train = _train_folder(spec)
    while train not in _subdirs(path) and len(_subdirs(path)) == 1:
        path = os.path.join(path, _subdirs(path)[0])
    if train not in _subdirs(path):
        raise DataUnavailableError(
            f"data.path: {spec.path!r} has no {train!r} split folder (from data.train_split "
            f"{spec.train_split!r}); expected {{split}}/{{class}}/*.jpg|png, found folders "
            f"{_subdirs(path)}"
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


def _build_cache(root: str, train: str, image_size: int, target: str) -> None:
    class_names = _subdirs(os.path.join(root, train))
    listings = {s: _list_images(os.path.join(root, s), class_names) for s in _subdirs(root)}
    train_files = listings[train][0]
    if not train_files:
        raise DataUnavailableError(
            f"data.path: {root!r}/{train} holds no {IMAGE_EXTENSIONS} images"
        )
    with Image.open(train_files[0]) as first:
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
    scratch = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(target))
    decode = functools.partial(_decode, mode=mode, image_size=image_size)
    workers = min(32, (os.cpu_count() or 1) * 4)
    split_sizes = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for split, (files, labels) in listings.items():
            if files:
                images = np.stack(list(pool.map(decode, files, chunksize=256)))
            else:
                images = np.zeros((0, image_size, image_size, 1 if mode == "L" else 3), np.uint8)
            np.save(os.path.join(scratch, f"{split}-images.npy"), images)
            np.save(os.path.join(scratch, f"{split}-labels.npy"), labels)
            split_sizes[split] = len(files)
    meta = {"class_names": class_names, "channels": 1 if mode == "L" else 3,
            "split_sizes": split_sizes, "root": root}
    with open(os.path.join(scratch, "meta.json"), "w") as file:
        json.dump(meta, file)
    try:
        os.rename(scratch, target)
    except OSError:  # another process built the same cache first
        shutil.rmtree(scratch)


@functools.cache
def _cache_folder(spec: DataSpec) -> str:
    """The cache folder holding each split of an image folder decoded once as .npy arrays."""
    root = image_folder_root(spec)
    train = _train_folder(spec)
    key = hashlib.sha1(f"{root}|{train}|{spec.image_size}".encode()).hexdigest()[:12]
    target = os.path.join(spec.cache_dir, "image_folder", f"{os.path.basename(root)}-{key}")
    if not os.path.isdir(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _build_cache(root, train, spec.image_size, target)
    return target


def metadata(spec: DataSpec) -> DatasetMetadata:
    """Class names (the training folder's subfolders), channels, split sizes (every subfolder)."""
    with open(os.path.join(_cache_folder(spec), "meta.json")) as file:
        meta = json.load(file)
    return DatasetMetadata(
        class_names=tuple(meta["class_names"]),
        channels=meta["channels"],
        split_shards={split: (size,) for split, size in meta["split_sizes"].items()},
        mean=None,
        std=None,
    )


@functools.lru_cache(maxsize=4)
def read_split(spec: DataSpec, name: str) -> ArraySource:
    """The whole split folder `name`, images (n, S, S, C) uint8, in memory."""
    images = np.load(os.path.join(_cache_folder(spec), f"{name}-images.npy"))
    return ArraySource(images, split_labels(spec, name))


def split_labels(spec: DataSpec, name: str) -> np.ndarray:
    """Labels (n,) int32 of split folder `name`."""
    return np.load(os.path.join(_cache_folder(spec), f"{name}-labels.npy"))
