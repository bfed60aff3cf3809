"""Split selection: tfds slicing on every source, `(stratified)` hold-outs, per-class subsets.

The image folder written here encodes each image's id in its pixels (as in test_data.py), so the
rows an iterator delivers can be read back. The comparison with tfds's own slicing of the real
Fashion-MNIST is in test_data.py, next to its prepared-data fixture.
"""

import logging

import numpy as np
import pytest
from PIL import Image

from alignmix_jax import data
from alignmix_jax.data import sources, splits
from alignmix_jax.data.config import resolve_spec

ID_STEP = 4  # pixel value of image id k is ID_STEP * k
PER_CLASS = {"cat": 24, "dog": 12, "emu": 8}  # train images per class; ids in this order


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
    """8x8 grayscale PNGs: train has 24 cats (ids 0-23), 12 dogs (24-35), 8 emus (36-43); test has
    2 of each (ids 44-49). Every pixel of image id k is 4 * k."""
    root = tmp_path_factory.mktemp("split_folder")
    image_id = 0
    for split, counts in (("train", PER_CLASS), ("test", dict.fromkeys(PER_CLASS, 2))):
        for class_name, count in counts.items():
            (root / split / class_name).mkdir(parents=True)
            for k in range(count):
                pixels = np.full((8, 8), ID_STEP * image_id, np.uint8)
                Image.fromarray(pixels).save(root / split / class_name / f"{k:03d}.png")
                image_id += 1
    return root


def folder_config(root, **overrides):
    fields = {"path": str(root), "image_size": 8, "cache_dir": str(root.parent / "cache")}
    fields |= {"augment": "none", "mean": (0.0,), "std": (1.0,)}  # ids read back exactly
    return data.default_data_config("image_folder", **(fields | overrides))


def eval_ids(config, split):
    """The ids of every real example of one ordered eval pass over `split`."""
    batches = data.make_eval_iterator(config, 16, split=split)
    return np.concatenate([ids(b)[b["mask"] == 1] for b in batches])


def ids(batch):
    return np.rint(batch["image"][:, 0, 0, 0] * 255 / ID_STEP).astype(int)


def class_of(image_ids):
    return np.searchsorted(np.cumsum(list(PER_CLASS.values())), image_ids, side="right")


def test_plain_slices_are_tfds_slices_of_the_stored_order(id_folder):
    config = folder_config(id_folder)
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


def test_stratified_hold_out_is_disjoint_covering_and_keeps_class_shares(id_folder):
    config = folder_config(
        id_folder, train_split="train[:75%](stratified)", eval_split="train[75%:](stratified)"
    )
    info = data.get_dataset_info(config)
    assert (info.num_train, info.num_eval) == (33, 11)
    one_epoch = data.make_train_iterator(config, 11, seed=0)
    trained = np.concatenate([ids(next(one_epoch)) for _ in range(3)])
    held_out = eval_ids(config, None)
    assert len(set(trained)) == 33 and not set(trained) & set(held_out)
    assert sorted(np.concatenate([trained, held_out])) == list(range(44))
    np.testing.assert_array_equal(np.bincount(class_of(held_out)), [6, 3, 2])  # 25% of each
    # the plain slice is contiguous: it holds out the last classes' images only
    assert set(class_of(eval_ids(config, "train[75%:]"))) == {1, 2}
    # reproducible, and another split_seed draws another hold-out
    assert list(eval_ids(config, None)) == list(held_out)
    reseeded = eval_ids(folder_config(id_folder, split_seed=1), "train[75%:](stratified)")
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


def test_evaluating_on_training_rows_is_logged(id_folder, caplog):
    config = folder_config(id_folder, train_split="train[:40]", eval_split="train[30:]")
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
