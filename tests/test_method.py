"""The mixed forward pass (`method.make_mixed_forward`) against forwards rebuilt by hand.

For each method, the forward's own draws (lam, partner, point, direction) are read back and the
forward is rebuilt from the public pieces (`model.apply` slices, `mixup`, `align_mix`, `cutmix`):
the input branch mixes the images and BatchNorm sees the mixed batch; the aligned branch runs the
encoder on the clean batch, aligns and mixes the last map, then the head. Logits, updated
BatchNorm statistics, partner labels and lam must agree. Then: the same on 8 devices with global
partners, and the draws' distributions.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from alignmix_jax import align_mix, cutmix, mixup, models
from alignmix_jax.core import method
from alignmix_jax.core.mixing import saliencymix
from alignmix_jax.core.ot import plan_statistics, sinkhorn_plan
from alignmix_jax.trainer import experiment_config, parallel

NUM_CLASSES = 10
BATCH = 16
IMAGE_SHAPE = (16, 16, 3)
MODEL = {"name": "preact_resnet18", "stage_sizes": (1, 1), "base_width": 8}
LAST = "stage2"
MANIFOLD_STAGES = ("input", "stage1", "stage2")
# The input-pasting methods, by hand: (keys, x, x_partner, lam) -> (mixed, lam of the kept area).
PASTES = {
    "cutmix": cutmix,
    "saliencymix": saliencymix,
    "resizemix": lambda keys, x, x_partner, lam: jax.jit(method.resize_paste)(keys, x, x_partner),
}


def mix_config(name: str, **changes):
    mix = experiment_config.default_config("digits").mix
    mix.method = name
    mix.num_iters = 20
    mix.update(changes)
    return mix


@pytest.fixture(scope="module")
def setup():
    model = models.build_model(MODEL, NUM_CLASSES)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(BATCH, *IMAGE_SHAPE)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH), jnp.int32)
    variables = model.init(jax.random.key(1), images, train=False)
    return model, variables, images, labels


def train_apply(model, variables, x, start_at="input", stop_at=None):
    """(output, variables with the updated batch_stats) of a train-mode slice."""
    (out, _), mutated = model.apply(
        variables, x, train=True, start_at=start_at, stop_at=stop_at, mutable=["batch_stats"]
    )
    return out, {"params": variables["params"], "batch_stats": mutated["batch_stats"]}


def by_hand(model, variables, images, labels, out, mix, key):
    """The method's forward rebuilt from its draws: (logits, batch_stats)."""
    partner, lam = np.asarray(out.partner), out.lam
    options = dict(epsilon=mix.epsilon, num_iters=mix.num_iters)
    if mix.method == "none" or mix.method in PASTES:
        assert all(float(out.diagnostics[name]) == 0.0 for name in method.DIAGNOSTICS)
    if mix.method == "none":
        logits, variables = train_apply(model, variables, images)
        return logits, variables["batch_stats"]
    if mix.method in PASTES:
        keys = method.step_keys(key)
        box_keys = jax.random.split(keys["example"], BATCH)
        lam_drawn = jax.random.beta(keys["lam"], mix.alpha, mix.alpha)
        mixed, corrected = PASTES[mix.method](box_keys, images, images[partner], lam_drawn)
        np.testing.assert_allclose(out.lam, corrected, rtol=1e-6)
        logits, variables = train_apply(model, variables, mixed)
        return logits, variables["batch_stats"]
    point = int(out.point)
    if mix.method == "input_mixup" or (mix.method == "alignmixup" and point == 0):
        stage, aligned = "input", False
    elif mix.method == "manifold_mixup":
        stage, aligned = MANIFOLD_STAGES[point], False
    else:
        stage, aligned = LAST, True
    features = images
    if stage != "input":
        features, variables = train_apply(model, variables, images, stop_at=stage)
    if aligned:
        direction = int(out.direction)
        mixed = align_mix(features, features[partner], lam, direction=direction, **options)
        flat = features.reshape(BATCH, -1, features.shape[-1])
        statistics = plan_statistics(sinkhorn_plan(flat, flat[partner], **options))
        expected = {"aligned": 1.0, "plan_marginal_l1": statistics["column_marginal_l1"],
                    "plan_row_max": statistics["row_max"],
                    "plan_column_coverage": statistics["column_coverage"],
                    "feature_norm": np.linalg.norm(flat, axis=-1).mean(),
                    "pooled_gap_to_linear": pooled_gap(mixed, features, features[partner], lam)}
    else:
        mixed = mixup(features, features[partner], lam)
        expected = dict.fromkeys(method.DIAGNOSTICS, 0.0)
    for name, value in expected.items():
        np.testing.assert_allclose(out.diagnostics[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    logits, variables = train_apply(model, variables, mixed, start_at=stage)
    return logits, variables["batch_stats"]


def pooled_gap(aligned, a, b, lam):
    """By hand: mean over the batch of the relative distance between the position-means of the
    aligned mix and of the linear mix lam a + (1 - lam) b."""
    lam = np.asarray(lam, np.float64).reshape(-1, 1)
    pooled_aligned = np.asarray(aligned, np.float64).mean((1, 2))
    pooled_linear = lam * np.asarray(a, np.float64).mean((1, 2)) + (1 - lam) * np.asarray(
        b, np.float64).mean((1, 2))
    gap = np.linalg.norm(pooled_aligned - pooled_linear, axis=-1)
    return (gap / np.linalg.norm(pooled_linear, axis=-1)).mean()


def assert_close_trees(a, b, rtol=1e-5, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


CASES = [
    ("none", {}),
    ("input_mixup", {}),
    ("manifold_mixup", {}),
    ("cutmix", {}),
    ("saliencymix", {}),
    ("resizemix", {}),
    ("alignmix", {"direction": "0"}),
    ("alignmix", {"direction": "1"}),
    ("alignmixup", {"input_prob": 1.0}),
    ("alignmixup", {"input_prob": 0.0, "direction": "0"}),
    ("input_mixup", {"lam_mode": "example"}),
]


@pytest.mark.parametrize(("name", "changes"), CASES)
def test_forward_equals_the_method_rebuilt_by_hand(setup, name, changes):
    model, variables, images, labels = setup
    mix = mix_config(name, **changes)
    forward = jax.jit(method.make_mixed_forward(model, mix))
    key = jax.random.key(7)
    out = forward(variables["params"], variables["batch_stats"], images, labels, key)
    partner = np.asarray(out.partner)
    if name == "none":
        np.testing.assert_array_equal(partner, np.arange(BATCH))
        np.testing.assert_array_equal(out.lam, np.ones(BATCH))
    else:
        assert sorted(partner.tolist()) == list(range(BATCH))  # a permutation of the batch
        assert np.any(partner != np.arange(BATCH))
    np.testing.assert_array_equal(out.partner_labels, np.asarray(labels)[partner])
    if name == "alignmixup":  # the coin: input with probability input_prob
        assert int(out.point) == (0 if changes["input_prob"] == 1.0 else 1)
    if "direction" in changes:
        assert int(out.direction) == int(changes["direction"])
    lam = np.asarray(out.lam)
    if changes.get("lam_mode") == "example":
        assert len(set(lam.tolist())) == BATCH  # one draw per example
    elif name != "none" and name not in PASTES:
        assert len(set(lam.tolist())) == 1 and 0.0 < lam[0] < 1.0
    logits, batch_stats = by_hand(model, variables, images, labels, out, mix, key)
    np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-5)
    assert_close_trees(out.batch_stats, batch_stats)


def test_mixing_turned_off_by_a_traced_flag_is_method_none_in_the_same_program(setup):
    """`mixing` True: the mixed forward; False: method none's (f(x) with its statistics, lam 1,
    each example its own partner), both from one compiled program."""
    model, variables, images, labels = setup
    mix = mix_config("alignmixup", input_prob=0.0)
    args = (variables["params"], variables["batch_stats"], images, labels, jax.random.key(7))
    flagged = jax.jit(method.make_mixed_forward(model, mix))
    on, off = flagged(*args, jnp.asarray(True)), flagged(*args, jnp.asarray(False))
    assert flagged._cache_size() == 1
    assert float(on.diagnostics["aligned"]) == 1.0 and int(on.point) == 1
    logits, batch_stats = by_hand(model, variables, images, labels, on, mix, args[-1])
    np.testing.assert_allclose(on.logits, logits, rtol=1e-5, atol=1e-5)
    assert_close_trees(on.batch_stats, batch_stats)
    logits, plain = train_apply(model, variables, images)
    np.testing.assert_allclose(off.logits, logits, rtol=1e-5, atol=1e-5)
    assert_close_trees(off.batch_stats, plain["batch_stats"])
    np.testing.assert_array_equal(off.lam, np.ones(BATCH))
    np.testing.assert_array_equal(off.partner, np.arange(BATCH))
    np.testing.assert_array_equal(off.partner_labels, labels)
    assert int(off.point) == -1
    assert all(float(off.diagnostics[name]) == 0.0 for name in method.DIAGNOSTICS)


def test_resizemix_pastes_the_partner_shrunk_into_a_box_weighed_by_its_area():
    """ResizeMix: each mixed image is the image but for one square box inside it, of side
    floor(tau * 20) with tau ~ U(0.1, 0.8), holding the partner resized to the box; lam is the
    fraction of pixels kept."""
    count, side = 256, 20
    images = jax.random.normal(jax.random.key(0), (count, side, side, 3))
    partners = jax.random.normal(jax.random.key(1), (count, side, side, 3))
    keys = jax.random.split(jax.random.key(2), count)
    mixed, lam = map(np.asarray, jax.jit(method.resize_paste)(keys, images, partners))
    sides, tops = [], []
    for example in range(count):
        changed = np.any(mixed[example] != np.asarray(images[example]), axis=-1)
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert len(rows) == len(cols) and changed.sum() == len(rows) * len(cols)  # a square box
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
        assert lam[example] == pytest.approx(1.0 - len(rows) ** 2 / side**2, abs=1e-6)
        sides.append(len(rows))
        tops.append(rows[0])
        if example < 3:  # its content: the partner resized to the box
            box = mixed[example, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            shrunk = jax.image.resize(partners[example], box.shape, "linear")
            np.testing.assert_allclose(box, shrunk, atol=1e-5)
    sides = np.asarray(sides)
    assert sides.min() >= 2 and sides.max() <= 16  # floor(20 tau), tau in [0.1, 0.8)
    # floor(20 tau) with 20 tau ~ U(2, 16): mean 8.5, sd 4.04; the mean of 256 within 4 sd.
    assert abs(sides.mean() - 8.5) < 4 * 4.04 / np.sqrt(count)
    assert min(tops) == 0 and np.any(np.asarray(tops) + sides == side)  # boxes reach both ends


def test_batch_norm_sees_the_clean_batch_in_the_aligned_branch(setup):
    """The updated statistics of the aligned branch are those of the encoder on clean images,
    not of mixed images: the two differ, so the comparison above can tell them apart."""
    model, variables, images, labels = setup
    mix = mix_config("alignmix")
    out = jax.jit(method.make_mixed_forward(model, mix))(
        variables["params"], variables["batch_stats"], images, labels, jax.random.key(7)
    )
    _, clean = train_apply(model, variables, images)
    mixed_images = mixup(images, images[np.asarray(out.partner)], out.lam)
    _, mixed = train_apply(model, variables, mixed_images)
    # (The batch mean of a mixup of a batch with its permutation is the batch's own mean; the
    # variance tells them apart.)
    stem_clean = clean["batch_stats"]["stem"]["bn"]["var"]
    np.testing.assert_allclose(out.batch_stats["stem"]["bn"]["var"], stem_clean, rtol=1e-6)
    assert not np.allclose(mixed["batch_stats"]["stem"]["bn"]["var"], stem_clean, rtol=1e-3)


# Gathered partner images with per-example draws (cutmix), and gathered maps (alignmixup, aligned);
# tests/test_train.py steps every method on 8 devices against 1.
@pytest.mark.parametrize("name", ["cutmix", "alignmixup"])
def test_eight_devices_with_global_partners_compute_the_one_device_forward(setup, name):
    model, variables, images, labels = setup
    mix = mix_config(name, input_prob=0.0) if name == "alignmixup" else mix_config(name)
    key = jax.random.key(11)
    one = jax.jit(method.make_mixed_forward(model, mix))(
        variables["params"], variables["batch_stats"], images, labels, key
    )
    synced = models.build_model(MODEL, NUM_CLASSES, axis_name=parallel.DATA_AXIS)
    forward = method.make_mixed_forward(synced, mix, parallel.DATA_AXIS)
    mesh = parallel.make_data_mesh()
    sharded = jax.jit(
        jax.shard_map(
            lambda p, s, x, y, k: forward(p, s, x, y, k),
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec("data"),
                      PartitionSpec("data"), PartitionSpec()),
            out_specs=method.MixedForward(
                PartitionSpec("data"), PartitionSpec(), PartitionSpec("data"),
                PartitionSpec("data"), PartitionSpec("data"), PartitionSpec(), PartitionSpec(),
                PartitionSpec(),
            ),
            check_vma=False,
        )
    )
    eight = sharded(variables["params"], variables["batch_stats"], images, labels, key)
    np.testing.assert_array_equal(eight.partner, one.partner)
    np.testing.assert_array_equal(eight.partner_labels, one.partner_labels)
    np.testing.assert_allclose(eight.lam, one.lam, rtol=1e-6)
    np.testing.assert_allclose(eight.logits, one.logits, rtol=1e-4, atol=1e-5)
    assert_close_trees(eight.batch_stats, one.batch_stats, rtol=1e-4, atol=1e-6)


def test_device_partners_stay_inside_each_shard(setup):
    model, variables, images, labels = setup
    mix = mix_config("input_mixup", partner="device")
    synced = models.build_model(MODEL, NUM_CLASSES, axis_name=parallel.DATA_AXIS)
    forward = method.make_mixed_forward(synced, mix, parallel.DATA_AXIS)
    mesh = parallel.make_data_mesh()
    partners = jax.jit(
        jax.shard_map(
            lambda p, s, x, y, k: forward(p, s, x, y, k).partner,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec("data"),
                      PartitionSpec("data"), PartitionSpec()),
            out_specs=PartitionSpec("data"),
            check_vma=False,
        )
    )(variables["params"], variables["batch_stats"], images, labels, jax.random.key(3))
    shard = BATCH // mesh.size
    for device in range(mesh.size):
        rows = np.asarray(partners)[device * shard : (device + 1) * shard]
        assert sorted(rows.tolist()) == list(range(shard))  # a permutation of its own shard


def test_the_coins_follow_their_probabilities(setup):
    """Over 400 keys: the input point with probability input_prob, a fair direction coin, lam
    with mean 1/2 (Beta(2, 2)). (The forward mixes at the point its method chooses: above.)"""
    model = setup[0]
    spec = method.MixSpec.from_config(mix_config("alignmixup", input_prob=0.25), model)

    def draws(key):
        drawn = method.Draws(spec, key, BATCH, 0, 1)
        point = method.METHOD_REGISTRY["alignmixup"](spec, drawn).choice
        return point, drawn.direction, drawn.lam[0]

    point, direction, lam = jax.jit(jax.vmap(draws))(jax.random.split(jax.random.key(0), 400))
    # Binomial(400, p) stays within 4 standard deviations (sd <= 10) of its mean.
    assert abs(int(np.sum(point == 0)) - 100) < 4 * np.sqrt(400 * 0.25 * 0.75)
    assert abs(int(np.sum(direction == 1)) - 200) < 4 * 10
    assert abs(float(np.mean(lam)) - 0.5) < 4 * np.sqrt(0.05 / 400)


def test_the_readme_lists_the_registered_methods():
    """The README's list of methods is `methods_markdown()` of the registry (a new method's line
    comes from its docstring)."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    start = "<!-- generated: alignmix_jax.core.method.methods_markdown() -->\n"
    listed = readme.split(start)[1].split("<!-- end generated -->")[0]
    expected = method.methods_markdown()
    assert listed == expected, f"README.md's methods are out of date; list them as:\n{expected}"
