"""Tests of alignmix_jax.models: sizes, the stage-slice API, BatchNorm behaviour and sync, init."""

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


@pytest.mark.parametrize(
    "model, image_size, num_params, shapes",
    [
        (
            models.PreActResNet18(num_classes=10),
            32,
            11_171_274,
            {"stem": (32, 32, 64), "stage1": (32, 32, 64), "stage2": (16, 16, 128),
             "stage3": (8, 8, 256), "stage4": (4, 4, 512), "pre_logits": (512,)},
        ),
        (
            models.PreActResNet18(num_classes=100),
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
            models.ResNet50(num_classes=1000),
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
    assert models.ResNet50().stage_names == (*three_stages, "stage4")
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
    """Train mode: running mean = 0.9 * old + 0.1 * batch mean. Eval mode: stats unchanged,
    normalisation by the running stats with epsilon 1e-5, and each example independent of the
    rest of the batch."""
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
        new_stem["var"], 0.9 * old_var + 0.1 * conv_out.var((0, 1, 2)), rtol=1e-4
    )

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


def test_initialisation_follows_pytorch_defaults(tiny_variables):
    """Head ~ U(+-1/sqrt(fan_in)) (kernel and bias), convs He-normal fan-out, WRN conv biases 0,
    BatchNorm scale 1 bias 0."""
    big_head = models.PreActResNet(num_classes=200, stage_sizes=(1,), base_width=64)
    params = big_head.init(jax.random.key(2), jnp.ones((1, 4, 4, 3)))["params"]
    bound = 1 / np.sqrt(64)
    for leaf in (params["head"]["kernel"], params["head"]["bias"]):
        assert np.abs(leaf).max() <= bound
        assert np.abs(leaf).max() > 0.9 * bound
        np.testing.assert_allclose(np.std(leaf), bound / np.sqrt(3), rtol=0.15)
    conv_kernel = params["stage1"]["block1"]["conv2"]["kernel"]
    np.testing.assert_allclose(np.std(conv_kernel), np.sqrt(2 / (3 * 3 * 64)), rtol=0.05)
    assert np.abs(conv_kernel).max() > 3 * np.sqrt(2 / (3 * 3 * 64))

    wide_params = tiny_variables["wide"]["params"]
    assert np.all(wide_params["stage2"]["block1"]["shortcut"]["bias"] == 0)
    assert np.all(wide_params["stem"]["conv"]["bias"] == 0)
    final_bn = wide_params["stage3"]["final_bn"]
    assert np.all(final_bn["scale"] == 1) and np.all(final_bn["bias"] == 0)
    assert "bias" not in tiny_variables["resnet"]["params"]["stage1"]["block1"]["conv2"]


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
