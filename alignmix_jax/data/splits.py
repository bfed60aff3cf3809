"""Which examples a split names: tfds's split syntax for every source, a seeded stratified variant,
and seeded per-class subsets of the training rows.

Syntax of `data.train_split`, `data.eval_split` and `make_eval_iterator(split=...)`::

    SPLIT := PART ("+" PART)*                          rows of each PART, concatenated
    PART  := NAME | NAME "[" FROM ":" TO "]" | "all"   optionally followed by "(stratified)"
    FROM, TO := empty | INT | NUMBER "%" | INT "shard"   (a negative INT counts from the end)

e.g. `train[:45000]`, `train[45000:]`, `train[:90%]`, `train[-10%:]`, `train[:10%]+test`. The
slices are tfds's own for every source (tfds datasets, image folders, digits):
`tfds.core.ReadInstruction.from_spec(PART).to_absolute(split sizes)` turns each part into rows
`[from, to)` of one split, so percentages round exactly as in tfds (to the closest row,
`round(percent * n / 100)`, ties to even: 50% of 1,437 rows is 718).

A plain slice is contiguous in the split's stored order: for tfds datasets the order tfds wrote
when it prepared the dataset (it shuffles most datasets then), for image folders the class
folders in sorted order with files sorted by name (so `train[90%:]` of a folder holds out only its
last classes), for digits a fixed permutation. `(stratified)` takes the slice from a seeded
stratified order of the split instead (`stratified_order`): `train[:90%](stratified)` holds 90% of
every class, drawn at random with `data.split_seed`, and `train[90%:](stratified)` with the same
seed holds exactly the other rows. Rows come back in ascending order within each part.
`examples_per_class` then draws `data.train_examples_per_class` rows of each class from the
training rows, with the same seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

STRATIFIED = "stratified"
STRATIFIED_STREAM = 2  # random streams distinct from pipeline.PERMUTATION/AUGMENTATION_STREAM
SUBSET_STREAM = 3
_PART = re.compile(r"^\s*(?P<slice>[^()]*?)\s*(?:\((?P<option>[^()]*)\))?\s*$")
SYNTAX = (
    "NAME, NAME[FROM:TO] with FROM/TO empty, an int (negative: from the end), a percentage "
    "('90%') or a shard count ('2shard'), optionally followed by '(stratified)', and parts "
    "joined by '+', e.g. 'train[:45000]', 'train[90%:](stratified)', 'train+test'"
)

# A selection: (split name, rows of that split (n,) int64) for each part, in the order named.
Selection = tuple[tuple[str, np.ndarray], ...]


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One `+`-separated part of a split: its tfds slice (e.g. "train[:90%]") and whether the
    slice is taken from the stratified order."""

    slice: str
    stratified: bool


def parse_split(split: str, *, field: str = "split") -> tuple[SplitPart, ...]:
    """Parses `split` (see the module docstring); ValueError naming `field` when it is invalid."""
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"{field}: expected a split such as 'train[:45000]', got {split!r}")
    parts = []
    for text in split.split("+"):
        match = _PART.match(text)
        option = match["option"] if match else None
        if match is None or not match["slice"] or option not in (None, STRATIFIED):
            raise ValueError(
                f"{field}: cannot parse {text.strip()!r} of {split!r}; expected {SYNTAX}"
            )
        try:
            tfds.core.ReadInstruction.from_spec(match["slice"])
        except (ValueError, NotImplementedError) as error:
            reason = str(error).strip().splitlines()[-1]
            raise ValueError(f"{field}: {split!r}: {reason}; expected {SYNTAX}") from None
        parts.append(SplitPart(match["slice"], option == STRATIFIED))
    return tuple(parts)


def split_names(split: str) -> tuple[str, ...]:
    """The names of the splits that `split` reads from, in order ("all" stays "all")."""
    return tuple(re.match(r"[\w-]*", part.slice)[0] for part in parse_split(split))


def _ranges(
    split: str, split_shards: Mapping[str, Sequence[int]], field: str
) -> list[tuple[str, int, int, bool]]:
    """(split name, from, to, stratified) of every part of `split`, bounds resolved by tfds."""
    infos = {
        name: tfds.core.SplitInfo(
            name=name, shard_lengths=list(shards), num_bytes=0, filename_template=None
        )
        for name, shards in split_shards.items()
    }
    ranges = []
    for part in parse_split(split, field=field):
        try:
            instructions = tfds.core.ReadInstruction.from_spec(part.slice).to_absolute(infos)
        except ValueError as error:
            reason = str(error).strip().splitlines()[-1]
            sizes = {name: sum(shards) for name, shards in sorted(split_shards.items())}
            raise ValueError(
                f"{field}: {split!r} does not fit this dataset ({reason}); available: "
                f"{sorted(sizes)}, of sizes {sizes}"
            ) from None
        for instruction in instructions:
            start = instruction.from_ or 0
            stop = infos[instruction.splitname].num_examples
            stop = stop if instruction.to is None else instruction.to
            ranges.append((instruction.splitname, start, max(start, stop), part.stratified))
    return ranges


def split_size(
    split: str, split_shards: Mapping[str, Sequence[int]], *, field: str = "split"
) -> int:
    """Number of examples `split` selects; `split_shards` maps every split of the dataset to its
    shard lengths (one shard of all its examples for in-memory data)."""
    return sum(stop - start for _, start, stop, _ in _ranges(split, split_shards, field))


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of `labels (n,)` in which every prefix and suffix is stratified.

    Each class's members are shuffled; the k-th of the n_c members of class c gets the key
    (k + 1/2) / n_c, and the order sorts the keys, ties in a seeded random order (the order in
    which the Sainte-Lague/Webster method hands out seats). A prefix of m rows then holds close to
    m * n_c / n examples of class c (within two in practice), and exactly m * n_c / n whenever
    that is an integer for every class (4,500 of each CIFAR-10 class in `[:45000]`); the
    complementary suffix holds the rest. Returns positions (n,) int64.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([STRATIFIED_STREAM, seed])
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((rng.permutation(len(labels)), keys))


def select_rows(
    split: str,
    split_shards: Mapping[str, Sequence[int]],
    labels_of: Callable[[str], np.ndarray],
    seed: int,
    *,
    field: str = "split",
) -> Selection:
    """The rows `split` names: ((split name, rows (n,) int64), ...), one entry per part
    (`split_shards` as in `split_size`).

    `labels_of(name)` returns the labels (size,) of split `name`; it is called only for
    `(stratified)` parts, whose order comes from `stratified_order(labels, seed)`.
    """
    selection = []
    for name, start, stop, stratified in _ranges(split, split_shards, field):
        if stratified:
            rows = np.sort(stratified_order(labels_of(name), seed)[start:stop])
        else:
            rows = np.arange(start, stop)
        selection.append((name, rows.astype(np.int64)))
    return tuple(selection)


def examples_per_class(
    selection: Selection,
    labels_of: Callable[[str], np.ndarray],
    per_class: int,
    seed: int,
    class_names: Sequence[str],
    split: str,
) -> Selection:
    """`per_class` examples of every class of `class_names`, drawn from `selection` (the rows of
    `split`, named in the error) with `seed`.

    Each class's rows are shuffled by a generator seeded with `seed` alone, and the first
    `per_class` are kept, so the subset for N is part of the subset for any larger N. Raises
    ValueError naming the classes that have fewer than `per_class` examples in the selection.
    """
    labels = np.concatenate([labels_of(name)[rows] for name, rows in selection])
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"{class_names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < per_class)]
    if short:
        raise ValueError(
            f"data.train_examples_per_class: {per_class} examples of each class requested, but "
            f"split {split!r} has fewer of class {', '.join(short[:10])}"
            f"{' ...' if len(short) > 10 else ''}"
        )
    rng = np.random.default_rng([SUBSET_STREAM, seed])
    keep = np.zeros(len(labels), bool)
    for label in range(len(class_names)):
        keep[rng.permutation(np.flatnonzero(labels == label))[:per_class]] = True
    kept, start = [], 0
    for name, rows in selection:
        kept.append((name, rows[keep[start : start + len(rows)]]))
        start += len(rows)
    return tuple(kept)
