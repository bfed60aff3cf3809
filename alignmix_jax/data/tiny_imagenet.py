"""A tfds builder for TinyImageNet (200 classes, 64x64) from the official `tiny-imagenet-200`.

tfds ships no TinyImageNet builder. This one reads the unzipped folder given as the manual_dir:
`wnids.txt`, `train/<wnid>/images/*.JPEG` (500 per class) and `val/images/*.JPEG` labelled by
`val/val_annotations.txt` (50 per class). The unlabelled `test` images are not used.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

ROOT_NAME = "tiny-imagenet-200"
IMAGE_SIZE = 64


def find_tiny_imagenet_root(path: str | None) -> str | None:
    """`path` or `path/tiny-imagenet-200` when it holds `wnids.txt` and `train/`, else None."""
    if path is None:
        return None
    for candidate in (path, os.path.join(path, ROOT_NAME)):
        has_wnids = os.path.isfile(os.path.join(candidate, "wnids.txt"))
        if has_wnids and os.path.isdir(os.path.join(candidate, "train")):
            return candidate
    return None


def read_wnids(root: str) -> list[str]:
    """The class WordNet ids in `wnids.txt` order (the label order)."""
    with open(os.path.join(root, "wnids.txt")) as file:
        return [line.strip() for line in file if line.strip()]


def _load_rgb(path: str) -> np.ndarray:
    """(64, 64, 3) uint8; some TinyImageNet JPEGs are grayscale, so convert every image."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """TinyImageNet-200: train (100,000) and validation (10,000) images, 64x64x3."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From the official tiny-imagenet-200 folder."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass the "
        "tiny-imagenet-200 folder (or its parent) as the manual_dir (data.path)."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        # The class list (wnids.txt) is only known once the folder is read: _split_generators sets
        # it, and tfds stores it with the prepared data.
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"
                    ),
                    "label": tfds.features.ClassLabel(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager):
        root = find_tiny_imagenet_root(os.fspath(dl_manager.manual_dir))
        if root is None:
            raise FileNotFoundError(
                f"no {ROOT_NAME} folder with wnids.txt and train/ in {dl_manager.manual_dir}"
            )
        wnids = read_wnids(root)
        self.info.features["label"].names = wnids
        return {
            "train": self._generate_examples(self._train_files(root, wnids)),
            "validation": self._generate_examples(self._validation_files(root, wnids)),
        }

    @staticmethod
    def _train_files(root: str, wnids: list[str]) -> list[tuple[str, int]]:
        files = []
        for label, wnid in enumerate(wnids):
            image_dir = os.path.join(root, "train", wnid, "images")
            files += [(os.path.join(image_dir, n), label) for n in sorted(os.listdir(image_dir))]
        return files

    @staticmethod
    def _validation_files(root: str, wnids: list[str]) -> list[tuple[str, int]]:
        label_of = {wnid: label for label, wnid in enumerate(wnids)}
        files = []
        with open(os.path.join(root, "val", "val_annotations.txt")) as file:
            for line in file:
                fields = line.split("\t")
                if len(fields) >= 2:
                    image_path = os.path.join(root, "val", "images", fields[0])
                    files.append((image_path, label_of[fields[1]]))
        return files

    def _generate_examples(self, files: list[tuple[str, int]]):
        for path, label in files:
            name = os.path.basename(path)
            yield name, {"image": _load_rgb(path), "label": label, "file_name": name}
