"""Input pipelines: determinism, epoch-exactness, host sharding, resumption, preprocessing, split
selection (tfds slicing, stratified hold-outs, per-class subsets), normalisation, errors.

Most tests use sklearn's digits or small image folders written here whose pixels encode each
image's id, so the examples a batch holds can be read back. The tests on the real Fashion-MNIST and
CIFAR-10 copies skip when ../shared/data is absent.
"""

import logging
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
import types

import jax
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from absl import flags
from jax.sharding import Mesh
from ml_collections import config_flags
from PIL import Image

from alignmix_jax import data
from alignmix_jax.data import (
    augment,
    device_transform,
    image_folder,
    pipeline,
    sources,
    splits,
    tfds_source,
)
from alignmix_jax.data.base import ArraySource
from alignmix_jax.data.config import TFDS_SOURCES, resolve_spec
from alignmix_jax.trainer import experiment_config

ID_STEP = 4  # pixel value of image id k is ID_STEP * k
NUM_TRAIN_PER_CLASS, NUM_TEST_PER_CLASS = 24, 5
CACHE_DIR = os.path.expanduser("~/.cache/alignmix_jax")


def write_id_folder(root, train_counts, test_counts):
    """An image folder of 8x8 grayscale PNGs, `{split}/{class}/` with the given number of images
    per class; ids run over train then test, class by class, and image id k has every pixel 4k."""
    image_id = 0
    for split, counts in (("train", train_counts), ("test", test_counts)):
        for class_name, count in counts.items():
            (root / split / class_name).mkdir(parents=True)
            for k in range(count):
                pixels = np.full((8, 8), ID_STEP * image_id, np.uint8)
                Image.fromarray(pixels).save(root / split / class_name / f"{k:03d}.png")
                image_id += 1
    return root


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
    """Two classes, cat and dog: 24 train images each (ids 0-47), 5 test images each (48-57)."""
    root = tmp_path_factory.mktemp("id_folder")
    counts = {"train": NUM_TRAIN_PER_CLASS, "test": NUM_TEST_PER_CLASS}
    return write_id_folder(root, *(dict.fromkeys(("cat", "dog"), counts[s]) for s in counts))


def folder_config(root, **overrides):
    fields = {"path": str(root), "image_size": 8, "cache_dir": str(root.parent / "cache")}
    return data.default_data_config("image_folder", **(fields | overrides))


def image_ids(batch, info):
    """Reads the ids back from the uint8 images of the id folder (no augmentation)."""
    assert batch["image"].dtype == np.uint8
    return np.rint(batch["image"][:, 0, 0, 0] / ID_STEP).astype(int)


def model_input(batch, info):
    """The float32 model input the steps make of a host batch (normalised on the device)."""
    return np.asarray(data.model_input(batch, info.normalisation))


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_digits_fixed_split_and_shapes():
    config = data.default_data_config("digits")
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval, info.num_classes) == (1437, 360, 10)
    assert info.image_shape == (32, 32, 1)
    batches = list(data.make_eval_iterator(config, 100))
    assert len(batches) == 4 and batches[0]["image"].shape == (100, 32, 32, 1)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 360 and mask[-40:].sum() == 0
    from sklearn.datasets import load_digits

    expected = load_digits().target[np.random.default_rng(0).permutation(1797)[1437:]]
    labels = np.concatenate([b["label"] for b in batches])[:360]
    np.testing.assert_array_equal(labels, expected)
    pixels = np.concatenate([b["image"] for b in batches])[:360]
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() > 230
    unit = model_input(batches[0], info) * info.std[0] + info.mean[0]
    np.testing.assert_allclose(unit, batches[0]["image"] / 255.0, atol=1e-6)


def test_train_stream_is_deterministic_for_a_seed():
    config = data.default_data_config("digits")
    first = take(data.make_train_iterator(config, 64, seed=3), 3)
    again = take(data.make_train_iterator(config, 64, seed=3), 3)
    other = take(data.make_train_iterator(config, 64, seed=4), 3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    assert first[0]["image"].dtype == np.uint8 and first[0]["label"].dtype == np.int32


def test_resume_at_step_equals_uninterrupted_stream_across_epochs():
    config = data.default_data_config("digits")
    assert data.steps_per_epoch(config, 256) == 5
    uninterrupted = take(data.make_train_iterator(config, 256, seed=7), 12)
    resumed = take(data.make_train_iterator(config, 256, seed=7, start_step=4), 8)
    for a, b in zip(uninterrupted[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_epochs_are_exact_and_host_shares_disjoint_and_covering(id_folder):
    config = folder_config(id_folder, augment="none")
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval, info.class_names) == (48, 10, ("cat", "dog"))
    hosts = [
        take(data.make_train_iterator(config, 16, seed=0, process_index=p, process_count=2), 6)
        for p in range(2)
    ]
    for epoch in range(2):
        shares = [
            np.concatenate([image_ids(b, info) for b in hosts[p][3 * epoch : 3 * epoch + 3]])
            for p in range(2)
        ]
        assert len(shares[0]) == len(shares[1]) == 24
        assert not set(shares[0]) & set(shares[1])
        assert sorted(np.concatenate(shares)) == list(range(48))
    first_epoch = np.concatenate([image_ids(b, info) for b in hosts[0][:3]])
    second_epoch = np.concatenate([image_ids(b, info) for b in hosts[0][3:]])
    assert not np.array_equal(first_epoch, second_epoch)
    labels = np.concatenate([b["label"] for b in hosts[0]])
    ids = np.concatenate([image_ids(b, info) for b in hosts[0]])
    np.testing.assert_array_equal(labels, ids >= NUM_TRAIN_PER_CLASS)


def test_host_batches_side_by_side_equal_the_single_host_batch(id_folder):
    config = folder_config(id_folder, augment="cifar")
    single = take(data.make_train_iterator(config, 16, seed=5, process_count=1, process_index=0), 4)
    halves = [
        take(data.make_train_iterator(config, 16, seed=5, process_index=p, process_count=2), 4)
        for p in range(2)
    ]
    for step in range(4):
        for key in ("image", "label"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])
    padded_zeros = np.isclose(single[0]["image"], single[0]["image"].min()).any(axis=(1, 2, 3))
    assert padded_zeros.any()  # some crops reach into the zero padding


def test_eval_pass_pads_last_batch_and_splits_hosts(id_folder):
    config = folder_config(id_folder)
    info = data.get_dataset_info(config)
    seen = []
    for p in range(2):
        batches = list(data.make_eval_iterator(config, 4, process_index=p, process_count=2))
        assert len(batches) == 3 and all(b["image"].shape == (2, 8, 8, 1) for b in batches)
        for batch in batches:
            seen += list(image_ids(batch, info)[batch["mask"] == 1])
    assert sorted(seen) == list(range(48, 58))
    train_pass = list(data.make_eval_iterator(config, 48, split="train"))
    assert list(image_ids(train_pass[0], info)) == list(range(48))


def test_random_crop_flip_matches_explicit_slicing():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 10, 12, 3), dtype=np.uint8)
    offset = rng.integers(0, 9, size=(6, 2))
    flip = np.array([True, False, True, False, True, False])
    out = augment.random_crop_flip(images, offset, flip, pad=4)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for k in range(6):
        window = padded[k, offset[k, 0] : offset[k, 0] + 10, offset[k, 1] : offset[k, 1] + 12]
        np.testing.assert_array_equal(out[k], window[:, ::-1] if flip[k] else window)


def test_test_time_resize_crop_moves_the_box_with_the_object():
    image = np.zeros((300, 200, 3), np.uint8)
    image[90:210, 40:120] = 255  # the object: rows 90..210, cols 40..120
    box = np.array([90 / 300, 40 / 200, 210 / 300, 120 / 200], np.float32)
    out, moved = augment.resize_shorter_center_crop(image, 224, box)
    assert out.shape == (224, 224, 3)
    rows = np.nonzero(out[..., 0].max(axis=1) > 127)[0]
    cols = np.nonzero(out[..., 0].max(axis=0) > 127)[0]
    found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / 224
    np.testing.assert_allclose(moved, found, atol=2 / 224)


def test_imagenet_augmentation_is_deterministic_and_bounded(id_folder):
    config = folder_config(id_folder, augment="imagenet")
    first = next(data.make_train_iterator(config, 8, seed=2))
    again = next(data.make_train_iterator(config, 8, seed=2))
    np.testing.assert_array_equal(first["image"], again["image"])
    assert first["image"].shape == (8, 8, 8, 1) and first["image"].dtype == np.uint8
    # flip, jitter and lighting travel with the batch, as drawn for (seed, step) on the host
    drawn = augment.draw_params(np.random.default_rng([1, 2, 0]), "imagenet", 8, 8)
    np.testing.assert_array_equal(first["augment"], device_transform.pack_params(drawn))
    assert np.isfinite(model_input(first, data.get_dataset_info(config))).all()
    rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    params = augment.draw_params(np.random.default_rng(3), "imagenet", 1, 24)
    row = {key: value[0] for key, value in params.items()}
    out = augment.imagenet_train_transform(rgb, row, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    assert -0.2 < out.min() and out.max() < 1.2  # jitter is clipped to [0, 1], lighting is small


def test_bad_inputs_raise_clear_errors(id_folder, tmp_path):
    digits = data.default_data_config("digits")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.get_dataset_info({"name": "mnist"})
    with pytest.raises(ValueError, match=r"'valid'.*available: \['test', 'train'\]"):
        data.make_eval_iterator(digits, 10, split="valid")
    with pytest.raises(ValueError, match="with_boxes: dataset 'digits' has no bounding boxes"):
        data.make_eval_iterator(digits, 10, with_boxes=True)
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        data.make_train_iterator(digits, 64, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="exceeds the 1437 training examples"):
        data.steps_per_epoch(digits, 2048)
    with pytest.raises(ValueError, match="data.augment"):
        data.get_dataset_info(data.default_data_config("digits", augment="mixup"))
    missing = str(tmp_path / "no_such_folder")
    with pytest.raises(data.DataUnavailableError, match="no_such_folder.*does not exist"):
        data.get_dataset_info(folder_config(id_folder, path=missing))


def test_missing_tfds_dataset_names_the_files_and_where_to_put_them(tmp_path):
    empty = tmp_path / "manual"
    empty.mkdir()
    config = data.default_data_config(
        "fashion_mnist", data_dir=str(tmp_path), manual_dir=str(empty)
    )
    with pytest.raises(data.DataUnavailableError) as error:
        data.get_dataset_info(config)
    message = str(error.value)
    for needed in ("'fashion_mnist'", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert needed in message
    assert str(empty) in message and "data.manual_dir" in message


def write_fake_tiny_imagenet(root, wnids=("n01", "n02", "n03")):
    """A tiny-imagenet-200 folder: 4 train JPEGs per class, 2 grayscale val JPEGs per class;
    every image of class c is a flat colour."""
    root = root / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    annotations = []
    for label, wnid in enumerate(wnids):
        colour = np.full((64, 64, 3), 60 * (label + 1), np.uint8)
        (root / "train" / wnid / "images").mkdir(parents=True)
        for k in range(4):
            Image.fromarray(colour).save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
        for k in range(2):
            name = f"val_{label}_{k}.JPEG"
            Image.fromarray(colour[..., 0]).save(root / "val" / "images" / name)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(annotations))


@pytest.fixture(scope="module")
def tiny_imagenet_config(tmp_path_factory):
    """A fake tiny-imagenet-200 folder, prepared by the first test that reads it."""
    root = tmp_path_factory.mktemp("tiny_imagenet")
    write_fake_tiny_imagenet(root / "download")
    (root / "tfds").mkdir()
    return data.default_data_config(
        "tiny_imagenet", path=str(root / "download"), data_dir=str(root / "tfds")
    )


def test_tiny_imagenet_builder_reads_the_official_layout(tiny_imagenet_config):
    config = tiny_imagenet_config
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval) == (12, 6)
    assert info.class_names == ("n01", "n02", "n03") and info.image_shape == (64, 64, 3)
    (batch,) = list(data.make_eval_iterator(config, 6))
    grey = (model_input(batch, info)[:, 32, 32] * np.array(info.std) + np.array(info.mean)) * 255
    expected = np.repeat(60 * (batch["label"][:, None] + 1), 3, axis=1)
    np.testing.assert_allclose(grey, expected, atol=3)
    train = next(data.make_train_iterator(config, 12, seed=0))
    assert train["image"].shape == (12, 64, 64, 3)
    assert sorted(np.bincount(train["label"])) == [4, 4, 4]



def test_decoded_batches_are_the_batches_of_their_chunks(monkeypatch):
    """Decoding sources are read in chunks of DECODE_CHUNK rows on several threads; joined in
    order, the chunks are exactly the batches `rows_at` makes whole, for a batch size that the
    chunks do not divide, from a first batch other than 0, and with one thread or several."""
    host_batch = 2 * pipeline.DECODE_CHUNK + 3
    asked = []

    def rows_at(batch, rows):
        asked.append(range(host_batch)[rows])
        ids = np.arange(batch * host_batch, (batch + 1) * host_batch)[rows]
        return {"id": ids, "square": np.stack([ids, ids**2], axis=1)}

    for cores in (1, 3):
        monkeypatch.setattr(  # raising=False: macOS has no sched_getaffinity
            pipeline.os, "sched_getaffinity", lambda _, n=cores: set(range(n)), raising=False
        )
        asked.clear()
        batches = list(pipeline.decoded_batches(rows_at, 2, 6, host_batch))
        assert len(batches) == 4
        for batch, got in zip(range(2, 6), batches, strict=True):
            expected = rows_at(batch, slice(None))
            assert got.keys() == expected.keys()
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])
        assert max(len(rows) for rows in asked[:-4]) == pipeline.DECODE_CHUNK
    assert pipeline.decode_threads() == 3 * pipeline.DECODE_THREADS_PER_CORE


def test_record_sources_crop_while_decoding(tiny_imagenet_config):
    """ImageNet-style training on per-record data: the crop is made while decoding, equal to
    the crop of the decoded image, and the batch carries the on-device parameters."""
    config = tiny_imagenet_config.copy_and_resolve_references()
    config.augment = "imagenet"
    source = sources.training_examples(resolve_spec(config))
    params = augment.draw_params(np.random.default_rng(0), "imagenet", 6, 32)
    cropped, labels = source.read_cropped(np.arange(6), params, 32)
    images, expected_labels, _ = source.read(np.arange(6))
    expected = [augment.imagenet_crop_resize(image, augment.param_row(params, k), 32)
                for k, image in enumerate(images)]
    np.testing.assert_array_equal(cropped, np.stack(expected))
    np.testing.assert_array_equal(labels, expected_labels)
    batch = next(data.make_train_iterator(config, 12, seed=0))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (12, 64, 64, 3)
    assert batch["augment"].shape == (12, device_transform.AUGMENT_WIDTH)


def test_record_datasets_take_subsets_and_joined_slices(tiny_imagenet_config):
    """Per-record (tfds_records) data: a per-class subset of a stratified slice, and two splits
    joined by '+', read through the same rows as the whole splits."""
    config = tiny_imagenet_config.copy_and_resolve_references()
    config.train_split, config.train_examples_per_class = "train[:75%](stratified)", 2
    config.eval_split, config.augment = "validation[-2:]+train[:1]", "none"
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval) == (6, 3)
    train = next(data.make_train_iterator(config, 6, seed=0))
    np.testing.assert_array_equal(np.bincount(train["label"]), [2, 2, 2])
    (joined,) = list(data.make_eval_iterator(config, 3))
    (validation,) = list(data.make_eval_iterator(config, 6, split="validation"))
    (train,) = list(data.make_eval_iterator(config, 12, split="train"))
    for key in ("image", "label"):
        expected = np.concatenate([validation[key][4:], train[key][:1]])
        np.testing.assert_array_equal(joined[key], expected)


# Makes TensorFlow look uninstalled: no finder finds it (sys.modules["tensorflow"] = None would
# also stop tfds, which checks whether TensorFlow was imported by looking it up there).
HIDE_TENSORFLOW = """
import sys

class HideTensorFlow:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow" or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # find_distributions, invalidate_caches, ...
        return getattr(self.finder, name)

sys.meta_path[:] = [HideTensorFlow(finder) for finder in sys.meta_path]
"""


def test_reading_needs_no_tensorflow_and_preparing_without_it_names_the_extra(
    tiny_imagenet_config, tmp_path
):
    data.get_dataset_info(tiny_imagenet_config)  # prepared here, with TensorFlow
    prepared = tiny_imagenet_config.to_dict()
    unprepared = prepared | {"data_dir": str(tmp_path)}
    script = HIDE_TENSORFLOW + f"""
from alignmix_jax import data

batch = next(data.make_eval_iterator({prepared!r}, 6))
assert "tensorflow" not in sys.modules, "reading a prepared dataset imported tensorflow"
print("read", batch["image"].shape, sorted(batch["label"].tolist()))
try:
    data.get_dataset_info({unprepared!r})
except data.DataUnavailableError as error:
    print("error:", error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read (6, 64, 64, 3) [0, 0, 1, 1, 2, 2]" in result.stdout
    error = result.stdout.partition("error:")[2]
    assert "'tiny_imagenet'" in error and "needs TensorFlow" in error
    assert "pip install 'alignmix_jax[prepare]'" in error and "-e '.[prepare]'" in error


def test_failed_tfds_download_names_the_files_and_their_urls(monkeypatch, tmp_path):
    def offline(self, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded (NameResolutionError)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    monkeypatch.setattr(tfds_source, "_unreachable_host", lambda urls: None)  # hosts answer
    config = data.default_data_config("fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(data.DataUnavailableError) as error:
        data.get_dataset_info(config)
    message = str(error.value)
    assert "'fashion_mnist'" in message and "tfds could not download it: ConnectionError" in message
    assert "train-images-idx3-ubyte.gz" in message and "data.manual_dir" in message
    assert "http" in message and isinstance(error.value.__cause__, requests.ConnectionError)


def test_missing_tiny_imagenet_folder_says_what_to_download(tmp_path):
    config = data.default_data_config(
        "tiny_imagenet", path=str(tmp_path / "nothing"), data_dir=str(tmp_path)
    )
    with pytest.raises(data.DataUnavailableError, match="tiny-imagenet-200.zip"):
        data.get_dataset_info(config)


def test_prefetch_to_mesh_shards_the_batch_over_devices():
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    config = data.default_data_config("digits")
    host_batches = take(data.make_train_iterator(config, 16, seed=0), 3)
    fed = list(data.prefetch_to_mesh(iter(host_batches), mesh, size=2))
    assert len(fed) == 3
    for host, device in zip(host_batches, fed, strict=True):
        assert device["image"].shape == (16, 32, 32, 1)
        assert device["image"].sharding.spec == jax.sharding.PartitionSpec("data")
        assert len(device["image"].addressable_shards) == len(devices)
        np.testing.assert_array_equal(np.asarray(device["image"]), host["image"])
        np.testing.assert_array_equal(np.asarray(device["label"]), host["label"])
    with pytest.raises(ValueError, match="'data' axis"):
        data.prefetch_to_mesh(iter(host_batches), Mesh(devices, ("model",)))


def slow_batches(delay_s: float):
    """Endless host batches of 8 digits-sized images, each `delay_s` in the making."""
    while True:
        time.sleep(delay_s)
        yield {"image": np.zeros((8, 32, 32, 1), np.uint8)}


def test_closing_prefetch_to_mesh_joins_its_thread():
    """close() returns only once the producer thread has ended, even when it was busy making a
    batch: a thread left running at exit gets killed wherever it stands (inside jax's C++, the
    process aborts)."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    before = set(threading.enumerate())
    batches = data.prefetch_to_mesh(slow_batches(0.3), mesh, size=1)
    next(batches)
    assert set(threading.enumerate()) - before  # the producer, making the next batch
    batches.close()
    assert set(threading.enumerate()) - before == set()


def test_a_prefetch_read_on_after_its_first_reader_ended_says_so():
    """Its producer stops with the thread that first read it; a read from another thread then
    raises instead of waiting forever."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batches = data.prefetch_to_mesh(slow_batches(0.05), mesh, size=1)
    reader = threading.Thread(target=next, args=(batches,), name="first_reader")
    reader.start()
    reader.join()
    with pytest.raises(RuntimeError, match="first_reader, the thread that first read it, ended"):
        for _ in range(10):  # at most the one batch already made comes first
            next(batches)


def test_a_prefetch_whose_producer_ended_while_its_reader_waited_yields_every_batch(monkeypatch):
    """The reader's wait times out, then the producer puts its last batches and ends before the
    reader looks at it: the batches it left are still read, with no error."""

    class QueueThatTimesOutOnce(queue.Queue):
        timed_out = False

        def get(self, block=True, timeout=None):
            if not QueueThatTimesOutOnce.timed_out:
                QueueThatTimesOutOnce.timed_out = True
                for thread in threading.enumerate():
                    if thread.name == "prefetch_to_mesh":
                        thread.join()
                raise queue.Empty
            return super().get(block, timeout)

    monkeypatch.setattr(
        pipeline, "queue", types.SimpleNamespace(Queue=QueueThatTimesOutOnce, Empty=queue.Empty)
    )
    mesh = Mesh(np.array(jax.devices()), ("data",))
    host_batches = [{"image": np.full((8, 2), k, np.uint8)} for k in range(2)]
    fed = list(data.prefetch_to_mesh(iter(host_batches), mesh, size=3))  # all of it, and the end
    assert [int(batch["image"][0, 0]) for batch in fed] == [0, 1]


def test_a_prefetch_left_open_neither_holds_the_process_nor_stops_early():
    """The main thread leaves one prefetch open and ends; a worker thread then consumes another:
    the worker gets all its batches (the producer serves its consumer's thread, not the main one)
    and the process exits."""
    code = (
        "import threading, time, jax, numpy as np\n"
        "from jax.sharding import Mesh\n"
        "from alignmix_jax import data\n"
        "def slow_batches():\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
        "        yield {'image': np.zeros((8, 4), np.float32)}\n"
        "mesh = Mesh(np.array(jax.devices()), ('data',))\n"
        "def worker():\n"
        "    threading.main_thread().join()\n"
        "    batches = data.prefetch_to_mesh(slow_batches(), mesh)\n"
        "    print('worker', sum(1 for _, _ in zip(range(5), batches)))\n"
        "threading.Thread(target=worker).start()\n"
        "batches = data.prefetch_to_mesh(slow_batches(), mesh)\n"
        "next(batches)\n"
        "print('main')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["main", "worker 5"]


# ----------------------------------------------------------------------------- split selection

UNEVEN = {"cat": 24, "dog": 12, "emu": 8}  # train images per class, ids 0-23, 24-35, 36-43


@pytest.fixture(scope="module")
def uneven_folder(tmp_path_factory):
    """Train: 24 cats, 12 dogs, 8 emus (ids 0-43); test: 2 of each (ids 44-49)."""
    return write_id_folder(
        tmp_path_factory.mktemp("uneven_folder"), UNEVEN, dict.fromkeys(UNEVEN, 2)
    )


def uneven_config(root, **overrides):
    return folder_config(root, augment="none", **overrides)


def eval_ids(config, split):
    """The ids of every real example of one ordered eval pass over `split`."""
    info = data.get_dataset_info(config)
    batches = data.make_eval_iterator(config, 16, split=split)
    return np.concatenate([image_ids(b, info)[b["mask"] == 1] for b in batches])


def class_of(ids):
    return np.searchsorted(np.cumsum(list(UNEVEN.values())), ids, side="right")


def test_plain_slices_are_tfds_slices_of_the_stored_order(uneven_folder):
    config = folder_config(uneven_folder)
    np.testing.assert_array_equal(eval_ids(config, "train[:10]"), np.arange(10))
    np.testing.assert_array_equal(eval_ids(config, "train[40:]"), np.arange(40, 44))
    np.testing.assert_array_equal(eval_ids(config, "train[-3:]"), np.arange(41, 44))
    np.testing.assert_array_equal(eval_ids(config, "train[:25%]"), np.arange(11))  # 44/4 = 11
    both = eval_ids(config, "train[:2]+test[-1:]")
    np.testing.assert_array_equal(both, [0, 1, 49])
    np.testing.assert_array_equal(np.sort(eval_ids(config, "all")), np.arange(50))
    # percentages round as tfds rounds them: 1,437 * 50% = 718.5 -> 718 (ties to even)
    digits = data.default_data_config("digits", train_split="train[:50%]", eval_split="train[50%:]")
    info = data.get_dataset_info(digits)
    assert (info.num_train, info.num_eval) == (718, 719)


def test_stratified_hold_out_is_disjoint_covering_and_keeps_class_shares(uneven_folder):
    config = uneven_config(
        uneven_folder, train_split="train[:75%](stratified)", eval_split="train[75%:](stratified)"
    )
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval) == (33, 11)
    one_epoch = data.make_train_iterator(config, 11, seed=0)
    trained = np.concatenate([image_ids(next(one_epoch), info) for _ in range(3)])
    held_out = eval_ids(config, None)
    assert len(set(trained)) == 33 and not set(trained) & set(held_out)
    assert sorted(np.concatenate([trained, held_out])) == list(range(44))
    np.testing.assert_array_equal(np.bincount(class_of(held_out)), [6, 3, 2])  # 25% of each
    # the plain slice is contiguous: it holds out the last classes' images only
    assert set(class_of(eval_ids(config, "train[75%:]"))) == {1, 2}
    # reproducible, and another split_seed draws another hold-out
    assert list(eval_ids(config, None)) == list(held_out)
    reseeded = eval_ids(uneven_config(uneven_folder, split_seed=1), "train[75%:](stratified)")
    assert set(reseeded) != set(held_out)
    np.testing.assert_array_equal(np.bincount(class_of(reseeded)), [6, 3, 2])


def test_stratified_order_spreads_every_class_over_any_prefix():
    labels = np.repeat(np.arange(10), 5000)
    order = splits.stratified_order(labels, seed=0)
    assert sorted(order) == list(range(50_000))
    np.testing.assert_array_equal(np.bincount(labels[order[:45_000]]), [4500] * 10)
    rng = np.random.default_rng(0)
    uneven = rng.permutation(np.repeat(np.arange(7), 4 * rng.integers(1, 20, 7)))
    order = splits.stratified_order(uneven, seed=3)
    shares = np.bincount(uneven) / len(uneven)
    for prefix in range(len(uneven) + 1):
        counts = np.bincount(uneven[order[:prefix]], minlength=7)
        quotas = prefix * shares
        assert np.abs(counts - quotas).max() < 2
        if np.allclose(quotas, np.rint(quotas)):  # e.g. a quarter of every class
            np.testing.assert_array_equal(counts, np.rint(quotas))


def test_train_examples_per_class_is_a_seeded_nested_stratified_subset():
    def rows(**overrides):
        config = data.default_data_config("digits", **overrides)
        ((name, selected),) = sources.select(
            resolve_spec(config), config.train_split,
            per_class=config.train_examples_per_class,
        )
        return set(selected)

    config = data.default_data_config("digits", train_examples_per_class=5)
    info = data.get_dataset_info(config)
    assert info.num_train == 50 and data.steps_per_epoch(config, 10) == 5
    epoch = data.make_train_iterator(config, 10, seed=0)
    labels = np.concatenate([next(epoch)["label"] for _ in range(5)])
    np.testing.assert_array_equal(np.bincount(labels), [5] * 10)
    assert rows(train_examples_per_class=5) == rows(train_examples_per_class=5)
    assert rows(train_examples_per_class=5) < rows(train_examples_per_class=20)
    assert rows(train_examples_per_class=5) != rows(train_examples_per_class=5, split_seed=1)
    # a subset of a stratified training slice stays out of the matching hold-out
    held = {"train_split": "train[:80%](stratified)", "eval_split": "train[80%:](stratified)"}
    subset = rows(train_examples_per_class=20, **held)
    assert subset < rows(**held) and len(subset) == 200
    eval_spec = resolve_spec(data.default_data_config("digits", **held))
    ((_, held_out),) = sources.select(eval_spec, held["eval_split"])
    assert not subset & set(held_out)
    with pytest.raises(ValueError, match=r"data.train_examples_per_class: 200 .*class '0' \(1"):
        data.get_dataset_info(data.default_data_config("digits", train_examples_per_class=200))


def test_evaluating_on_training_rows_is_logged(uneven_folder, caplog):
    config = uneven_config(uneven_folder, train_split="train[:40]", eval_split="train[30:]")
    with caplog.at_level(logging.WARNING):
        data.get_dataset_info(config)
    assert "shares 10 examples with the training rows" in caplog.text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train_split", "train[::2]", r"data.train_split: 'train\[::2\]'.*expected NAME"),
        ("train_split", "train(shuffled)", r"data.train_split: cannot parse 'train\(shuffled\)'"),
        ("eval_split", "test[:2000]", r"data.eval_split: 'test\[:2000\]' does not fit.*360"),
        ("eval_split", "valid", r"data.eval_split: 'valid'.*available: \['test', 'train'\]"),
        ("split_seed", -1, "data.split_seed: expected a non-negative int"),
        ("train_examples_per_class", 0, "data.train_examples_per_class: expected a positive"),
        ("mean", (0.5, 0.5, 0.5), r"data.mean: expected 1 values, one per channel"),
        ("std", (0.0,), "data.std: expected a tuple of positive numbers"),
    ],
)
def test_bad_split_and_subset_fields_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        data.get_dataset_info(data.default_data_config("digits", **{field: value}))


@pytest.fixture(scope="module")
def fashion_mnist_config(shared_data):
    """Fashion-MNIST prepared once from the local files into the persistent cache."""
    os.makedirs(os.path.join(CACHE_DIR, "tfds"), exist_ok=True)
    return data.default_data_config(
        "fashion_mnist",
        manual_dir=str(shared_data / "fashion_mnist"),
        data_dir=os.path.join(CACHE_DIR, "tfds"),
    )


def test_fashion_mnist_from_manual_dir(fashion_mnist_config):
    info = data.get_dataset_info(fashion_mnist_config)
    assert (info.num_train, info.num_eval, info.image_shape) == (60_000, 10_000, (28, 28, 1))
    assert data.steps_per_epoch(fashion_mnist_config, 2000) == 30
    stream = data.make_train_iterator(fashion_mnist_config, 2000, seed=0)
    train_labels = np.concatenate([b["label"] for b in take(stream, 30)])
    np.testing.assert_array_equal(np.bincount(train_labels), [6000] * 10)
    eval_batches = list(data.make_eval_iterator(fashion_mnist_config, 3000))
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in eval_batches])
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


def test_tfds_dataset_slices_are_tfds_own_slices(fashion_mnist_config):
    config = fashion_mnist_config.copy_and_resolve_references()
    config.train_split, config.eval_split = "train[:45000]", "train[45000:]"
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval) == (45_000, 15_000)
    config.train_split = "train[:90%]"
    assert data.get_dataset_info(config).num_train == 54_000
    spec = resolve_spec(config)
    builder = tfds.builder("fashion_mnist", data_dir=spec.data_dir)
    theirs = builder.as_data_source(split="train[45000:]")
    ours = sources.load_split(spec, "train[45000:]")
    assert len(ours) == len(theirs) == 15_000
    rows = [0, 1, 14_999]
    images, labels, _ = ours.read(np.array(rows))
    for image, label, record in zip(images, labels, theirs.__getitems__(rows), strict=True):
        np.testing.assert_array_equal(image, record["image"])
        assert label == record["label"]
    # a stratified hold-out of the real dataset: 1,500 of each class, disjoint from training
    config.train_split, config.eval_split = "train[:54000](stratified)", "train[54000:](stratified)"
    spec = resolve_spec(config)
    ((_, held_out),) = sources.select(spec, config.eval_split)
    ((_, trained),) = sources.select(spec, config.train_split)
    all_labels = sources.load_split(spec, "train").labels
    np.testing.assert_array_equal(np.bincount(all_labels[held_out]), [600] * 10)
    assert len(np.union1d(trained, held_out)) == 60_000


def test_cifar10_jpeg_archive(shared_data):
    archive = shared_data / "cifar10_jpg" / "CIFAR-10-images.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    config = data.default_data_config("image_folder", path=str(archive), cache_dir=CACHE_DIR)
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval, info.image_shape) == (50_000, 10_000, (32, 32, 3))
    assert info.class_names[:3] == ("airplane", "automobile", "bird")
    counts = np.zeros(10, int)
    for batch in data.make_eval_iterator(config, 10_000, split="train"):
        counts += np.bincount(batch["label"], minlength=10)
    np.testing.assert_array_equal(counts, [5000] * 10)
    np.testing.assert_allclose(info.mean, data.DATASETS["cifar10"].mean, atol=3e-3)
    first = next(data.make_eval_iterator(config, 500))
    assert np.bincount(first["label"], minlength=10)[0] == 500  # sorted: airplanes first
    root = image_folder.image_folder_root(resolve_spec(config))
    airplanes = os.path.join(root, "test", "airplane")
    with Image.open(os.path.join(airplanes, sorted(os.listdir(airplanes))[0])) as image:
        decoded = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(first["image"][0], decoded)
    expected = (decoded / 255.0 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(model_input(first, info)[0], expected, atol=1e-5)


def test_the_smoke_archive_is_an_image_folder_written_once(tmp_path):
    archive = image_folder.smoke_archive(str(tmp_path))
    written = os.stat(archive).st_mtime_ns
    assert image_folder.smoke_archive(str(tmp_path)) == archive
    assert os.stat(archive).st_mtime_ns == written
    config = data.default_data_config("image_folder", path=archive, cache_dir=str(tmp_path))
    info = data.get_dataset_info(config)
    num_classes, num_train, num_test, side = image_folder.SMOKE_SHAPE
    assert (info.num_classes, info.num_train, info.num_eval) == (
        num_classes, num_classes * num_train, num_classes * num_test
    )
    assert info.image_shape == (side, side, 3)
    batch = next(data.make_train_iterator(config, 16, seed=0))
    assert batch["image"].shape == (16, side, side, 3) and len(set(batch["label"])) > 1


@pytest.mark.parametrize("process_index", [0, 1])
def test_process_zero_prepares_tfds_data_before_the_others(monkeypatch, process_index):
    events = []

    def prepare(spec):
        events.append("prepare")
        if spec.name == "broken":
            raise data.DataUnavailableError("missing")
        return "builder"

    monkeypatch.setattr(tfds_source.jax, "process_count", lambda: 2)
    monkeypatch.setattr(tfds_source.jax, "process_index", lambda: process_index)
    monkeypatch.setattr(tfds_source.multihost_utils, "sync_global_devices", events.append)
    monkeypatch.setattr(tfds_source, "_prepare_builder", prepare)
    spec = types.SimpleNamespace(name="fashion_mnist")
    assert tfds_source.prepared_builder.__wrapped__(spec) == "builder"
    barrier = events[1 - process_index]
    assert events == (["prepare", barrier] if process_index == 0 else [barrier, "prepare"])
    if process_index == 0:  # a failure on process 0 still releases the others
        events.clear()
        with pytest.raises(data.DataUnavailableError):
            tfds_source.prepared_builder.__wrapped__(types.SimpleNamespace(name="broken"))
        assert events == ["prepare", barrier.replace("fashion_mnist", "broken")]


PAPER_CONFIGS = (
    "cifar10_preactresnet18.py",
    "cifar10_wrn16_8.py",
    "cifar100_preactresnet18.py",
    "cifar100_wrn16_8.py",
    "tinyimagenet_preactresnet18.py",
    "cifar10_jpg_short.py",
)
EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def fake_rgb_source(monkeypatch):
    """Every dataset reads 4 RGB train/test/validation images of known pixels instead (the
    tfds default normalisation stays); returns the uint8 images (4, S, S, 3) of a size S."""
    pixels = {}

    def images(size):
        rng = np.random.default_rng(size)
        return pixels.setdefault(size, rng.integers(0, 256, (4, size, size, 3), np.uint8))

    fake = types.SimpleNamespace(
        metadata=lambda spec: sources.DatasetMetadata(
            ("a", "b"), 3, dict.fromkeys(("train", "test", "validation"), (4,)),
            spec.defaults.mean,
            spec.defaults.std,
        ),
        read_split=lambda spec, name: ArraySource(images(spec.image_size), np.arange(4) % 2),
        split_labels=lambda spec, name: np.arange(4) % 2,
    )
    monkeypatch.setattr(sources, "get_source", lambda spec: fake)
    return images


def normalised_batch(data_config, tmp_path):
    """One eval batch of `data_config` on the fake source (unique paths: no cache is shared)."""
    data_config = data_config.copy_and_resolve_references()
    data_config.path = str(tmp_path)
    if resolve_spec(data_config).defaults.source in TFDS_SOURCES:
        data_config.data_dir = str(tmp_path)
    return data.get_dataset_info(data_config), next(data.make_eval_iterator(data_config, 4))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_normalise_like_the_official_code(name, fake_rgb_source, tmp_path):
    config = experiment_config.load_config(str(EXPERIMENTS / name))
    info, batch = normalised_batch(config.data, tmp_path)
    assert info.mean == (0.4914, 0.4822, 0.4465) and info.std == (0.2023, 0.1994, 0.2010)
    pixels = fake_rgb_source(info.image_shape[0]) / 255.0
    expected = (pixels - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2023, 0.1994, 0.2010])
    np.testing.assert_allclose(model_input(batch, info), expected, rtol=1e-6, atol=1e-6)


def test_normalisation_override_from_the_command_line(fake_rgb_source, tmp_path):
    spec = str(EXPERIMENTS / "cifar10_preactresnet18.py")
    argv = ["main", f"--config={spec}", "--config.data.std=(0.5, 0.25, 0.125)",
            "--config.data.train_examples_per_class=2"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.data.train_examples_per_class == 2
    info, batch = normalised_batch(config.data, tmp_path)
    assert info.std == (0.5, 0.25, 0.125) and info.mean == data.OFFICIAL_CIFAR_MEAN
    expected = (fake_rgb_source(32) / 255.0 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(model_input(batch, info), expected, rtol=1e-6, atol=1e-6)
    # the dataset's own default (the true std of CIFAR-10's pixels) without the override
    info, _ = normalised_batch(data.default_data_config("cifar10"), tmp_path)
    assert info.std == data.DATASETS["cifar10"].std == (0.2470, 0.2435, 0.2616)


def test_an_unreachable_download_host_fails_at_once_without_downloading(monkeypatch, tmp_path):
    probed = []

    def refused(address, timeout):
        probed.append((address, timeout))
        raise ConnectionRefusedError("Connection refused")

    def never(self, *args, **kwargs):
        raise AssertionError("tfds must not start a download that cannot succeed")

    monkeypatch.setattr(tfds_source.socket, "create_connection", refused)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", never)
    config = data.default_data_config("fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(data.DataUnavailableError) as error:
        data.get_dataset_info(config)
    message = str(error.value)
    assert len(probed) == 1 and probed[0][1] == tfds_source.DOWNLOAD_PROBE_SEC
    host, port = probed[0][0]
    assert f"its download host {host}:{port} (Connection refused) cannot be reached" in message
    assert "train-images-idx3-ubyte.gz" in message and "data.manual_dir" in message


def test_a_data_dir_that_does_not_exist_is_said_to_not_exist(tmp_path):
    missing = tmp_path / "nonexistent" / "tfds"
    config = data.default_data_config("fashion_mnist", data_dir=str(missing))
    with pytest.raises(data.DataUnavailableError, match="data.data_dir .* does not exist"):
        data.get_dataset_info(config)
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize("field", ["data_dir", "manual_dir"])
def test_datasets_outside_tfds_refuse_the_tfds_folders(field, tmp_path):
    config = data.default_data_config("digits", **{field: str(tmp_path)})
    with pytest.raises(ValueError, match=f"data.{field}: dataset 'digits' does not read it"):
        data.get_dataset_info(config)
