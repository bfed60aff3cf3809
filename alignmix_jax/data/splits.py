"""Which examples a split names: tfds's split syntax for every source, a seeded stratified variant,
and seeded per-class subsets of the training rows.

Syntax of `data.train_split`, `data.eval_split` and `make_eval_iterator(split=...)`::

    SPLIT := PART ("+" PART)*                          rows of each PART, concatenated
    PART  := NAME | NAME "[" FROM ":" TO "]" | "all"   optionally followed by "(stratified)"
    FROM, TO := empty | INT | NUMBER "%" | INT "shard"   (a negative INT counts from the end)

e.g. `train[:45000]`, `train[45000:]`, `train[:90%]`, `train[-10%:]`, `train[:10%]+test`. The
slices are tfds's for every source (tfds datasets, image folders, digits), resolved here without
importing tfds, to the rows that `tfds.core.ReadInstruction.from_spec(PART).to_absolute(split
infos)` gives (tests/test_splits.py compares them): each part becomes rows `[from, to)` of one
split, and percentages round as in tfds (to the closest row, `round(percent * n / 100)`, ties to
even: 50% of 1,437 rows is 718).

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

STRATIFIED = "stratified"
STRATIFIED_STREAM = 2  # random streams distinct from pipeline.PERMUTATION/AUGMENTATION_STREAM
SUBSET_STREAM = 3
_PART = re.compile(r"^\s*(?P<slice>[^()]*?)\s*(?:\((?P<option>[^()]*)\))?\s*$")
# tfds's grammar (tensorflow_datasets/core/splits.py): NAME[SELECTOR], each bound VALUE[UNIT].
_SLICE = re.compile(r"^(?P<name>[\w-]+)(?:\[(?P<selector>[\d\w%:.-]+)\])?$")
_BOUND = re.compile(r"^(?:(?P<value>-?[\d_.]+)(?P<unit>%|shard)?)?$")
ALL = "all"
SYNTAX = (
    "NAME, NAME[FROM:TO] with FROM/TO empty, an int (negative: from the end), a percentage "
    "('90%') or a shard count ('2shard'), optionally followed by '(stratified)', and parts "
    "joined by '+', e.g. 'train[:45000]', 'train[90%:](stratified)', 'train+test'"
)

# A selection: (split name, rows of that split (n,) int64) for each part, in the order named.
Selection = tuple[tuple[str, np.ndarray], ...]


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One `+`-separated part of a split: its slice (e.g. "train[:90%]") and whether the
    slice is taken from the stratified order."""

    slice: str
    stratified: bool


@dataclasses.dataclass(frozen=True)
class _Slice:
    """A parsed slice, as tfds's `ReadInstruction`: bounds in `unit` ("abs", "%" or "shard"),
    None where open; `name` "all" (no bounds) stands for every split."""

    name: str
    start: int | float | None = None
    stop: int | float | None = None
    unit: str = "abs"


def _parse_slice(text: str) -> _Slice:
    """`text` ("train[:90%]") as tfds parses it; ValueError with the reason when it does not."""
    match = _SLICE.match(text)
    if match is None:
        raise ValueError(f"unrecognized split format {text!r}")
    name, selector = match["name"], match["selector"]
    if name == ALL:
        if selector:
            raise ValueError(f"{ALL!r} does not support slices")
        return _Slice(ALL)
    if selector is None:
        return _Slice(name)
    bounds = [_BOUND.match(bound) for bound in selector.split(":")]
    if not all(bounds) or not any(bound[0] for bound in bounds) or len(bounds) > 2:
        raise ValueError(f"unrecognized split format {text!r}")
    try:
        if len(bounds) == 1:  # NAME[k shard]: one shard
            (bound,) = bounds
            if bound["unit"] != "shard":
                raise ValueError("absolute or percent bounds need the slice syntax [FROM:TO]")
            start, stop, unit = bound["value"], int(bound["value"]) + 1, "shard"
        else:
            start, stop = (bound["value"] for bound in bounds)
            unit = bounds[0]["unit"] or bounds[1]["unit"] or "abs"
        number = float if unit == "%" else int
        start = None if start is None else number(start)
        stop = None if stop is None else number(stop)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    if unit == "%" and max(abs(start or 0), abs(stop or 0)) > 100:
        raise ValueError(f"{text!r}: percentages must lie in [-100, 100]")
    return _Slice(name, start, stop, unit)


def _absolute(part: _Slice, split_shards: Mapping[str, Sequence[int]]) -> tuple[str, int, int]:
    """(split name, from, to) of `part` (not "all") in the dataset of `split_shards`, as tfds's
    `ReadInstruction.to_absolute`; ValueError with the reason when it does not fit."""
    if part.name not in split_shards:
        raise ValueError(f"unknown split {part.name!r}")
    shards = list(split_shards[part.name])
    n = sum(shards)
    start, stop = part.start, part.stop
    if part.unit == "%":
        start = 0 if start is None else int(round(start * n / 100.0))
        stop = n if stop is None else int(round(stop * n / 100.0))
    elif part.unit == "shard":
        start = 0 if start is None else sum(shards[:start])
        if stop is not None and stop <= 0:
            stop = len(shards) + stop
        stop = n if stop is None else sum(shards[:stop])
    else:
        start = 0 if start is None else start
        stop = n if stop is None else stop
    if abs(start) > n or abs(stop) > n:
        raise ValueError(f"slice [{start}:{stop}] of split {part.name!r} exceeds its {n} rows")
    start = n + start if start < 0 else start
    stop = n + stop if stop < 0 else stop
    return part.name, start, max(start, stop)


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
            _parse_slice(match["slice"])
        except ValueError as error:
            raise ValueError(f"{field}: {split!r}: {error}; expected {SYNTAX}") from None
        parts.append(SplitPart(match["slice"], option == STRATIFIED))
    return tuple(parts)


def split_names(split: str) -> tuple[str, ...]:
    """The names of the splits that `split` reads from, in order ("all" stays "all")."""
    return tuple(_parse_slice(part.slice).name for part in parse_split(split))


def _ranges(
    split: str, split_shards: Mapping[str, Sequence[int]], field: str
) -> list[tuple[str, int, int, bool]]:
    """(split name, from, to, stratified) of every part of `split` ("all": every split, in the
    order of `split_shards`)."""
    ranges = []
    for part in parse_split(split, field=field):
        parsed = _parse_slice(part.slice)
        whole = [_Slice(name) for name in split_shards] if parsed.name == ALL else [parsed]
        try:
            for piece in whole:
                ranges.append((*_absolute(piece, split_shards), part.stratified))
        except ValueError as error:
            sizes = {name: sum(shards) for name, shards in sorted(split_shards.items())}
            raise ValueError(
                f"{field}: {split!r} does not fit this dataset ({error}); available: "
                f"{sorted(sizes)}, of sizes {sizes}"
            ) from None
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
