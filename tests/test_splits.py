"""Split slicing is resolved without tfds, to exactly the rows tfds's own resolution gives."""

import itertools

import pytest

from alignmix_jax.data import splits

SHARDS = {"train": (400, 400, 237, 400), "test": (333,), "validation": (1, 2, 3)}
NAMES = ("train", "test", "validation", "all", "bogus")
BOUNDS = (
    "", "0", "1", "-1", "17", "-17", "333", "-333", "334", "1437", "-1437", "1438", "1_0",
    "1.5", "0%", "1%", "-1%", "50%", "-50%", "33%", "66.6%", "12.5%", "100%", "-100%", "101%",
    "0shard", "1shard", "-1shard", "2shard", "3shard", "4shard", "-4shard", "5shard", "%", "_",
)


def rows(split: str) -> list[tuple[str, list[int]]]:
    """The rows `split` selects from SHARDS, as (split name, row list) per part."""
    selection = splits.select_rows(split, SHARDS, lambda name: None, seed=0)
    return [(name, list(part)) for name, part in selection]


def tfds_rows(tfds, split: str):
    """The same, resolved by tfds: ReadInstruction.from_spec(split).to_absolute(split infos)."""
    infos = {
        name: tfds.core.SplitInfo(
            name=name, shard_lengths=list(shards), num_bytes=0, filename_template=None
        )
        for name, shards in SHARDS.items()
    }
    result = []
    for instruction in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos):
        start = instruction.from_ or 0
        n = infos[instruction.splitname].num_examples
        stop = n if instruction.to is None else instruction.to
        result.append((instruction.splitname, list(range(start, max(start, stop)))))
    return result


def specs():
    """Every NAME[FROM:TO] over NAMES and BOUNDS, NAME[BOUND], plain names and sums of them."""
    for name in NAMES:
        yield name
        for bound in BOUNDS:
            yield f"{name}[{bound}]"
        for start, stop in itertools.product(BOUNDS, repeat=2):
            yield f"{name}[{start}:{stop}]"
    yield from ("train[:10%]+test", "test+train[-2shard:]", "all+train[5:9]", "train[:0]+test[:]")


def test_slices_are_tfds_slices_without_tfds_installed():
    """Known values of tfds's rules: closest row with ties to even, shard sums, negatives."""
    assert rows("train[:50%]") == rows("train[:718]")  # 1,437 * 0.5 = 718.5 -> 718
    assert rows("test[:50%]") == [("test", list(range(166)))]  # 166.5 -> 166
    assert rows("train[1shard:-1shard]") == [("train", list(range(400, 1037)))]
    assert rows("train[2shard]") == [("train", list(range(800, 1037)))]
    assert rows("validation[-1:]+test[-1%:]") == [("validation", [5]), ("test", [330, 331, 332])]
    assert rows("all") == [(name, list(range(sum(s)))) for name, s in SHARDS.items()]
    assert rows("test[10:5]") == [("test", [])]
    assert splits.split_size("train[:10%]+test", SHARDS) == 144 + 333


@pytest.mark.parametrize("bad", ["test[:101%]", "test[:334]", "all[:5]", "train[5]", "x[:]"])
def test_bad_slices_name_the_field(bad):
    with pytest.raises(ValueError, match="^data.eval_split: "):
        splits.split_size(bad, SHARDS, field="data.eval_split")


def test_every_slice_resolves_as_tfds_resolves_it():
    tfds = pytest.importorskip("tensorflow_datasets")
    checked = failed = 0
    for spec in specs():
        try:
            expected = tfds_rows(tfds, spec)
        except (ValueError, NotImplementedError):
            expected = None
        try:
            ours = rows(spec)
        except ValueError:
            ours = None
        assert ours == expected, spec
        checked += 1
        failed += expected is None
    assert checked == len(NAMES) * (1 + len(BOUNDS) + len(BOUNDS) ** 2) + 4
    assert 0 < failed < checked  # both outcomes, rows and errors, are compared
