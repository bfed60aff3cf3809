"""Tests of alignmix_jax.models: parity with the official AlignMixup networks (PyTorch, through
the fixtures in tests/fixtures/), sizes, the stage-slice API, BatchNorm behaviour and sync, init."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from alignmix_jax import models

TINY_MODELS = {
    "preact": models.PreActResNet(num_classes=5, stage_sizes=(1, 1), base_width=8),
    "wide": models.WideResNet(num_classes=5, depth=10, widen_factor=1),
    "resnet": models.ResNet(num_classes=5, stage_sizes=(1, 1), base_width=4),
}
TINY_IMAGE_SIZE = {"preact": 8, "wide": 8, "resnet": 16}


def tiny_images(kind: str, batch: int = 4, channels: int = 3, seed: int = 1) -> jax.Array:
    """(batch, S, S, channels) standard-normal images, S the tiny size for `kind`."""
    size = TINY_IMAGE_SIZE[kind]
    return jax.random.normal(jax.random.key(seed), (batch, size, size, channels))


@pytest.fixture(scope="module")
def tiny_variables():
    """{kind: variables} of the tiny models, initialised on their tiny images. The "rbg" key
    compiles about 3x faster than threefry on CPU; the init test covers the default key."""
    key = jax.random.key(0, impl="rbg")
    return {kind: jax.jit(TINY_MODELS[kind].init)(key, tiny_images(kind)) for kind in TINY_MODELS}


def assert_trees_close(actual, expected, atol):
    """Same tree structure and every leaf within `atol`."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0)


FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_NETWORKS = ("preact_resnet18", "wide_resnet", "resnet50")
OFFICIAL_TOP_LEVEL = {
    "preact_resnet18": {"conv1": ("stem", "conv"), "bn1": ("stem", "bn")},
    "wide_resnet": {"conv1": ("stem", "conv"), "bn1": ("stage3", "final_bn")},
    "resnet50": {"conv1": ("stem", "conv"), "bn1": ("stem", "bn")},
}
"""The official encoders' modules outside their `layer{k}`s -> flax module paths."""
OFFICIAL_BLOCK_PARTS = {
    "shortcut.0": "shortcut",
    "downsample.0": "downsample_conv",
    "downsample.1": "downsample_bn",
}
OFFICIAL_LEAVES = {
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
PARITY_TOLERANCE = 2e-4
"""Largest difference from the official network allowed, as a fraction of the largest official
value of the array compared. Measured (float32, 2-core x86 CPU): 1.1e-5 (ResNet-50 train logits),
2.2e-6 (its running statistics), under 5e-7 elsewhere; the He et al. 2016 shortcut is 0.7 off."""


def load_official(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of tests/fixtures/parity_{name}.npz (see make_parity_fixtures.py)."""
    with np.load(FIXTURES / f"parity_{name}.npz") as data:
        arrays = dict(data)
    return json.loads(str(arrays.pop("meta"))), arrays


def port_official_state(name: str, state: dict[str, np.ndarray]) -> dict:
    """flax variables {"params", "batch_stats"} of the official network `name` from its PyTorch
    state dict {torch name: array}: conv weights (O, I, kh, kw) -> kernels (kh, kw, I, O), linear
    (O, I) -> (I, O), BatchNorm weight -> scale, running_mean / running_var -> mean / var."""
    variables = {"params": {}, "batch_stats": {}}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        if module == "classifier":
            path = ("head",)
        else:
            module = module.split(".", 1)[1]  # drop the classifier's "encoder." / "model."
            block = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", module)
            if block:
                part = OFFICIAL_BLOCK_PARTS.get(block[3], block[3])
                path = (f"stage{block[1]}", f"block{int(block[2]) + 1}", part)
            else:
                path = OFFICIAL_TOP_LEVEL[name][module]
        if leaf == "weight":
            collection, leaf = "params", "kernel" if value.ndim > 1 else "scale"
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        else:
            collection, leaf = OFFICIAL_LEAVES[leaf]
        node = variables[collection]
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return variables


def official_state(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The fixture's arrays under `prefix` ("weights/" or "updated/"), keyed by torch name."""
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


def assert_close_to_official(actual, expected):
    """max |actual - expected| <= PARITY_TOLERANCE * max |expected|."""
    atol = PARITY_TOLERANCE * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("name", OFFICIAL_NETWORKS)
def test_matches_official_network(name):
    """With the official PyTorch network's weights ported in (small width, see
    tests/fixtures/make_parity_fixtures.py), `build_model` with its default options gives the
    official eval logits, train-mode logits and BatchNorm running statistics after one train
    forward (PyTorch's unbiased variance; WRN's final BatchNorm with PyTorch momentum 0.9). The
    port fills every variable of the model and nothing else."""
    meta, arrays = load_official(name)
    model = models.build_model(meta["model_config"], meta["num_classes"])
    images = arrays["images"]
    variables = port_official_state(name, official_state(arrays, "weights/"))
    expected_shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, expected_shapes)

    eval_logits, _ = model.apply(variables, images)
    assert_close_to_official(eval_logits, arrays["eval_logits"])
    (train_logits, _), state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert_close_to_official(train_logits, arrays["train_logits"])
    updated = port_official_state(name, official_state(arrays, "updated/"))["batch_stats"]
    assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(updated)
    jax.tree.map(assert_close_to_official, state["batch_stats"], updated)


def test_he2016_shortcut_is_not_the_official_network():
    """shortcut="he2016" (identity blocks add x instead of relu(bn1(x))) with the official
    weights misses the official eval logits by more than 20% of their scale (0.7 measured), so
    the parity test pins the official shortcut down."""
    meta, arrays = load_official("preact_resnet18")
    config = {**meta["model_config"], "shortcut": "he2016"}
    model = models.build_model(config, meta["num_classes"])
    variables = port_official_state("preact_resnet18", official_state(arrays, "weights/"))
    logits, _ = model.apply(variables, arrays["images"])
    expected = arrays["eval_logits"]
    assert np.abs(logits - expected).max() > 0.2 * np.abs(expected).max()


def test_official_options_are_the_defaults():
    """build_model with no options gives the official networks: the official shortcut and
    PyTorch's initialisation for the CIFAR models, torchvision's for ResNet-50."""
    preact = models.build_model({"name": "preact_resnet18"}, 10)
    assert (preact.shortcut, preact.conv_init) == ("official", "pytorch")
    assert models.build_model({"name": "wide_resnet"}, 10).conv_init == "pytorch"
    assert models.build_model({"name": "resnet50"}, 1000).conv_init == "he_fan_out"


@pytest.mark.parametrize(
    "model, image_size, num_params, shapes",
    [
        (
            models.PreActResNet(num_classes=10),
            32,
            11_171_274,
            {"stem": (32, 32, 64), "stage1": (32, 32, 64), "stage2": (16, 16, 128),
             "stage3": (8, 8, 256), "stage4": (4, 4, 512), "pre_logits": (512,)},
        ),
        (
            models.PreActResNet(num_classes=100),
            64,
            11_217_444,
            {"stem": (64, 64, 64), "stage1": (64, 64, 64), "stage2": (32, 32, 128),
             "stage3": (16, 16, 256), "stage4": (8, 8, 512), "pre_logits": (512,)},
        ),
        (
            models.WideResNet(num_classes=10),
            32,
            10_965_866,
            {"stem": (32, 32, 16), "stage1": (32, 32, 128), "stage2": (16, 16, 256),
             "stage3": (8, 8, 512), "pre_logits": (512,)},
        ),
        (
            models.ResNet(num_classes=1000),
            224,
            25_557_032,
            {"stem": (56, 56, 64), "stage1": (56, 56, 256), "stage2": (28, 28, 512),
             "stage3": (14, 14, 1024), "stage4": (7, 7, 2048), "pre_logits": (2048,)},
        ),
    ],
    ids=["preact18-c10", "preact18-c100-64px", "wrn16-8", "resnet50"],
)
def test_full_size_parameter_counts_and_shapes(model, image_size, num_params, shapes):
    """Exact parameter counts of the paper models and the shapes of every named output."""
    images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == num_params
    assert set(variables) == {"params", "batch_stats"}

    logits, intermediates = jax.eval_shape(model.apply, variables, images)
    assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
    assert {name: value.shape[1:] for name, value in intermediates.items()} == shapes
    assert model.stage_names == ("input", *[name for name in shapes if name != "pre_logits"])
    assert model.stage_channels == {
        name: shape[-1] for name, shape in shapes.items() if name != "pre_logits"
    }


def test_stage_names_need_no_init():
    """stage_names follow the depth knobs and are there before any init."""
    three_stages = ("input", "stem", "stage1", "stage2", "stage3")
    assert models.ResNet().stage_names == (*three_stages, "stage4")
    assert models.WideResNet(depth=28).stage_names == three_stages
    assert models.PreActResNet(stage_sizes=(1, 1, 1)).stage_names[-1] == "stage3"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_split_forward_equals_full_forward(tiny_variables, kind, train):
    """For every stage k, stop_at=k then start_at=k (chaining the updated batch_stats) gives the
    full forward's logits, intermediates and batch_stats; each slice returns the whole
    batch_stats collection."""
    model, variables, images = TINY_MODELS[kind], tiny_variables[kind], tiny_images(kind)
    (logits, intermediates), full_state = model.apply(
        variables, images, train=train, mutable=["batch_stats"]
    )
    assert set(intermediates) == set(model.stage_names[1:]) | {"pre_logits"}
    for name in model.stage_names[1:]:
        (features, head_part), first_state = model.apply(
            variables, images, train=train, stop_at=name, mutable=["batch_stats"]
        )
        assert jax.tree.structure(first_state) == jax.tree.structure(full_state)
        chained = {"params": variables["params"], **first_state}
        (split_logits, tail_part), split_state = model.apply(
            chained, features, train=train, start_at=name, mutable=["batch_stats"]
        )
        np.testing.assert_allclose(features, intermediates[name], atol=1e-6, rtol=0)
        np.testing.assert_allclose(split_logits, logits, atol=1e-5, rtol=0)
        assert set(head_part) & set(tail_part) == set()
        assert_trees_close({**head_part, **tail_part}, intermediates, atol=1e-5)
        assert_trees_close(split_state, full_state, atol=1e-6)


def test_batch_stats_update_only_in_train_with_pytorch_momentum_and_epsilon(tiny_variables):
    """Train mode: running mean = 0.9 * old + 0.1 * batch mean, running var = 0.9 * old + 0.1 *
    unbiased batch variance (PyTorch's; the biased one is 0.4% off here, 10x the tolerance).
    Eval mode: stats unchanged, normalisation by the running stats with epsilon 1e-5, and each
    example independent of the rest of the batch."""
    model, variables = TINY_MODELS["preact"], tiny_variables["preact"]
    images = tiny_images("preact")
    stem_params = variables["params"]["stem"]
    conv_out = jax.lax.conv_general_dilated(
        images, stem_params["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    old_mean = jnp.linspace(-1.0, 1.0, conv_out.shape[-1])
    old_var = jnp.full(conv_out.shape[-1], 1e-4)
    batch_stats = jax.tree.map(jnp.asarray, variables["batch_stats"])
    batch_stats["stem"]["bn"] = {"mean": old_mean, "var": old_var}
    variables = {"params": variables["params"], "batch_stats": batch_stats}

    _, train_state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    new_stem = train_state["batch_stats"]["stem"]["bn"]
    np.testing.assert_allclose(
        new_stem["mean"], 0.9 * old_mean + 0.1 * conv_out.mean((0, 1, 2)), atol=1e-5
    )
    np.testing.assert_allclose(
        new_stem["var"], 0.9 * old_var + 0.1 * conv_out.var((0, 1, 2), ddof=1), rtol=1e-4
    )
    biased_update = 0.9 * old_var + 0.1 * conv_out.var((0, 1, 2))
    assert not np.allclose(new_stem["var"], biased_update, rtol=1e-4, atol=0)

    (logits, intermediates), eval_state = model.apply(
        variables, images, train=False, mutable=["batch_stats"]
    )
    assert_trees_close(eval_state["batch_stats"], batch_stats, atol=0)
    bn = stem_params["bn"]
    expected_stem = jax.nn.relu(
        (conv_out - old_mean) / jnp.sqrt(old_var + 1e-5) * bn["scale"] + bn["bias"]
    )
    np.testing.assert_allclose(intermediates["stem"], expected_stem, rtol=1e-4, atol=1e-4)
    single_logits, _ = model.apply(variables, images[:1], train=False)
    np.testing.assert_allclose(single_logits[0], logits[0], atol=1e-5)
    train_single, _ = model.apply(variables, images[:2], train=True, mutable=["batch_stats"])
    train_full, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_single[0][0], train_full[0][0], atol=1e-3)


def test_batch_norm_sync_over_8_devices_equals_full_batch(tiny_variables):
    """shard_map over a "data" axis of 8 CPU devices with axis_name="data" gives the same logits
    and updated batch_stats as the single-device model on the whole batch."""
    devices = jax.devices()
    assert len(devices) == 8
    mesh = Mesh(np.array(devices), ("data",))
    single = TINY_MODELS["preact"]
    synced = models.PreActResNet(num_classes=5, stage_sizes=(1, 1), base_width=8, axis_name="data")
    variables, images = tiny_variables["preact"], tiny_images("preact", batch=16, seed=3)

    def train_forward(variables, images):
        (logits, _), state = synced.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, state

    sharded_forward = jax.jit(
        jax.shard_map(
            train_forward,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec("data")),
            out_specs=(PartitionSpec("data"), PartitionSpec()),
        )
    )
    sharded_logits, sharded_state = sharded_forward(variables, images)
    (logits, _), state = single.apply(variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(sharded_logits, logits, atol=1e-5, rtol=0)
    assert_trees_close(sharded_state, state, atol=1e-5)
    unsynced = jax.jit(
        jax.shard_map(
            lambda v, x: single.apply(v, x, train=True, mutable=["batch_stats"])[0][0],
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec("data")),
            out_specs=PartitionSpec("data"),
        )
    )
    assert not np.allclose(unsynced(variables, images), logits, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params(tiny_variables):
    """dtype=bfloat16: the float32 model's parameter tree, still float32, bfloat16 maps, float32
    logits close to the float32 model's."""
    reference = TINY_MODELS["wide"]
    model = models.WideResNet(num_classes=5, depth=10, widen_factor=1, dtype=jnp.bfloat16)
    images, variables = tiny_images("wide"), tiny_variables["wide"]
    variable_shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variable_shapes))
    assert jax.tree.structure(variable_shapes) == jax.tree.structure(variables)

    logits, intermediates = model.apply(variables, images)
    reference_logits, _ = reference.apply(variables, images)
    assert logits.dtype == jnp.float32
    assert intermediates["stage3"].dtype == jnp.bfloat16
    assert not np.array_equal(logits, reference_logits)
    np.testing.assert_allclose(logits, reference_logits, atol=0.1, rtol=0.05)


def test_grayscale_and_odd_sized_input():
    """One input channel and a 28x28 image (Fashion-MNIST) run through every stage."""
    model = TINY_MODELS["wide"]
    images = jnp.ones((2, 28, 28, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    logits, intermediates = jax.eval_shape(model.apply, variables, images)
    assert variables["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 1, 16)
    assert intermediates["stage3"].shape == (2, 7, 7, 64)
    assert logits.shape == (2, 5)


def flat_modules(tree, prefix=()):
    """{module path: {leaf name: array}} of a params or batch_stats tree."""
    leaves = {name: value for name, value in tree.items() if not isinstance(value, dict)}
    modules = {prefix: leaves} if leaves else {}
    for name, value in tree.items():
        if isinstance(value, dict):
            modules.update(flat_modules(value, (*prefix, name)))
    return modules


def assert_uniform(values, bound):
    """Every entry in [-bound, bound], sample variance bound**2 / 3 within 6 standard errors."""
    values = np.asarray(values).ravel()
    assert np.abs(values).max() <= bound
    np.testing.assert_allclose(values.var(), bound**2 / 3, rtol=6 * np.sqrt(0.8 / values.size))


@pytest.mark.parametrize(
    "model, conv_init",
    [
        (models.PreActResNet(num_classes=200, stage_sizes=(1, 1), base_width=64), "pytorch"),
        (models.WideResNet(num_classes=200, depth=10, widen_factor=2), "pytorch"),
        (models.ResNet(num_classes=200, stage_sizes=(1, 1), base_width=16), "he_fan_out"),
        (
            models.PreActResNet(
                num_classes=200, stage_sizes=(1, 1), base_width=64, conv_init="he_fan_out"
            ),
            "he_fan_out",
        ),
        (
            models.WideResNet(num_classes=200, depth=10, widen_factor=2, conv_init="he_fan_out"),
            "he_fan_out",
        ),
        (
            models.ResNet(num_classes=200, stage_sizes=(1, 1), base_width=16, conv_init="pytorch"),
            "pytorch",
        ),
    ],
    ids=["preact", "wide", "resnet", "preact-he_fan_out", "wide-he_fan_out", "resnet-pytorch"],
)
def test_initialisation(model, conv_init):
    """The defaults are the official ones: PyTorch's for the CIFAR models, torchvision's for
    ResNet-50. conv_init "pytorch": every conv kernel and bias ~ U(+-1/sqrt(fan_in)), fan_in =
    in_channels * kh * kw (variance 1 / (3 fan_in)). "he_fan_out": kernels ~ N(0, 2 / fan_out)
    (untruncated: entries beyond 3.5 standard deviations), biases 0. Always: head kernel and bias
    ~ U(+-1/sqrt(fan_in)), BatchNorm scale 1 and bias 0, running mean 0 and variance 1."""
    assert model.conv_init == conv_init
    variables = jax.jit(model.init)(jax.random.key(2, impl="rbg"), jnp.ones((1, 4, 4, 3)))
    normalised_kernels = []
    for path, leaves in flat_modules(variables["params"]).items():
        kernel = np.asarray(leaves.get("kernel", leaves.get("scale")))
        if path == ("head",):
            assert_uniform(leaves["kernel"], 1 / np.sqrt(kernel.shape[0]))
            assert_uniform(leaves["bias"], 1 / np.sqrt(kernel.shape[0]))
        elif "scale" in leaves:
            assert np.all(leaves["scale"] == 1) and np.all(leaves["bias"] == 0), path
        elif conv_init == "pytorch":
            fan_in = np.prod(kernel.shape[:3])
            assert_uniform(kernel, 1 / np.sqrt(fan_in))
            if "bias" in leaves:
                assert_uniform(leaves["bias"], 1 / np.sqrt(fan_in))
            normalised_kernels.append(kernel.ravel() * np.sqrt(fan_in))
        else:
            std = np.sqrt(2 / (np.prod(kernel.shape[:2]) * kernel.shape[3]))
            np.testing.assert_allclose(kernel.std(), std, rtol=6 / np.sqrt(2 * kernel.size))
            assert np.all(leaves.get("bias", 0) == 0), path
            normalised_kernels.append(kernel.ravel() / std)
    normalised_kernels = np.concatenate(normalised_kernels)
    if conv_init == "pytorch":
        assert 0.99 < np.abs(normalised_kernels).max() <= 1
    else:
        assert np.abs(normalised_kernels).max() > 3.5
    for leaves in flat_modules(variables["batch_stats"]).values():
        assert np.all(leaves["mean"] == 0) and np.all(leaves["var"] == 1)


def test_build_model_from_config():
    """build_model maps names and kwargs (ConfigDict or dict, lists to tuples) onto the classes."""
    config = ml_collections.ConfigDict({"name": "wide_resnet", "depth": 10, "widen_factor": 2})
    model = models.build_model(config, 7, axis_name="data", dtype=jnp.bfloat16)
    assert isinstance(model, models.WideResNet)
    assert (model.depth, model.widen_factor, model.num_classes) == (10, 2, 7)
    assert (model.axis_name, model.dtype) == ("data", jnp.bfloat16)

    model = models.build_model({"name": "preact_resnet18", "stage_sizes": [1, 1]}, 10)
    assert isinstance(model, models.PreActResNet) and model.stage_sizes == (1, 1)
    assert isinstance(models.build_model({"name": "resnet50"}, 1000), models.ResNet)
    config = {"name": "preact_resnet18", "shortcut": "he2016", "conv_init": "he_fan_out"}
    model = models.build_model(config, 10)
    assert (model.shortcut, model.conv_init) == ("he2016", "he_fan_out")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"name": "vgg16"}, "preact_resnet18"),
        ({"depth": 16}, "model_config.name"),
        ({"name": "wide_resnet", "stage_sizes": (1,)}, "depth"),
        ({"name": "resnet50", "num_classes": 3}, "unknown keys"),
        ({"name": "wide_resnet", "depth": 12}, r"6n \+ 4"),
        ({"name": "preact_resnet18", "stage_sizes": ()}, "stage_sizes"),
        ({"name": "resnet50", "base_width": 0}, "base_width"),
        ({"name": "preact_resnet18", "shortcut": "identity"}, "shortcut must be one of"),
        ({"name": "wide_resnet", "conv_init": "kaiming"}, "conv_init must be one of"),
        ({"name": "wide_resnet", "shortcut": "official"}, "unknown keys"),
    ],
)
def test_build_model_rejects_bad_configs(config, message):
    """Unknown names, kwargs and bad values raise ValueError naming the allowed values."""
    with pytest.raises(ValueError, match=message):
        models.build_model(config, 10)


@pytest.mark.parametrize(
    "call_kwargs, image_shape, message",
    [
        ({"start_at": "pre_logits"}, (2, 8, 8, 3), "start_at must be one of"),
        ({"stop_at": "stage9"}, (2, 8, 8, 3), "stop_at must be None or one of"),
        ({"start_at": "stage1", "stop_at": "stage1"}, (2, 8, 8, 8), "before stop_at"),
        ({"start_at": "stage2", "stop_at": "stem"}, (2, 4, 4, 16), "before stop_at"),
        ({"stop_at": "input"}, (2, 8, 8, 3), "before stop_at"),
        ({"start_at": "stage1"}, (2, 8, 8, 3), "8 channels"),
        ({}, (2, 8, 8), r"\(B, H, W, C\)"),
    ],
)
def test_bad_slices_and_inputs_raise(tiny_variables, call_kwargs, image_shape, message):
    """Unknown or out-of-order stage names, wrong channels at start_at and non-NHWC input raise
    ValueError."""
    with pytest.raises(ValueError, match=message):
        TINY_MODELS["preact"].apply(tiny_variables["preact"], jnp.ones(image_shape), **call_kwargs)
    with pytest.raises(ValueError, match="float"):
        TINY_MODELS["preact"].apply(tiny_variables["preact"], jnp.ones((2, 8, 8, 3), jnp.uint8))


def test_train_mode_needs_two_values_per_channel(tiny_variables):
    """As in PyTorch, train-mode BatchNorm over a single value per channel (its unbiased variance
    is undefined) raises ValueError; eval mode runs."""
    model, variables = TINY_MODELS["preact"], tiny_variables["preact"]
    with pytest.raises(ValueError, match="more than one value per channel"):
        model.apply(variables, jnp.ones((1, 1, 1, 3)), train=True, mutable=["batch_stats"])
    logits, _ = model.apply(variables, jnp.ones((1, 1, 1, 3)))
    assert np.all(np.isfinite(logits))
