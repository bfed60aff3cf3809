"""The train step, optimizer and schedules (8 simulated CPU devices, tiny PreActResNet)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignmix_jax import experiment_config, models, parallel, train
from alignmix_jax.mixing import sample_lam

NUM_CLASSES = 10
IMAGE_SHAPE = (16, 16, 3)
GLOBAL_BATCH = 16
TINY_MODEL = {"name": "preact_resnet18", "stage_sizes": (1, 1), "base_width": 8}


def make_config(method: str):
    config = experiment_config.default_config("digits", image_size=16)
    config.model.update(TINY_MODEL)
    config.mix.method = method
    config.mix.num_iters = 5
    config.optimizer.schedule = "constant"
    return config


def make_batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(GLOBAL_BATCH, *IMAGE_SHAPE)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32),
    }


def build(config, dtype=jnp.float32):
    """(model, learning-rate schedule, optimizer) of `config` for NUM_CLASSES classes."""
    model = models.build_model(config.model, NUM_CLASSES, axis_name="data", dtype=dtype)
    learning_rate_fn = train.create_learning_rate_fn(config.optimizer, 10, 100)
    return model, learning_rate_fn, train.create_optimizer(config.optimizer, learning_rate_fn)


@pytest.fixture(scope="module")
def initial_state():
    """The initial TrainState on the host (one init compile for the whole module)."""
    model, _, optimizer = build(make_config("none"))
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    return jax.device_get(train.create_train_state(model, optimizer, IMAGE_SHAPE, 0, mesh))


def one_step(config, mesh, state, batch, dtype=jnp.float32):
    """(state after, metrics) of one train step from host `state` on `mesh`, on the host."""
    model, learning_rate_fn, optimizer = build(config, dtype)
    step = train.make_train_step(model, config.mix, optimizer, learning_rate_fn, mesh)
    sharded = parallel.shard_host_batch(batch, mesh)
    key = parallel.replicate(jax.random.key(0), mesh)
    after, metrics = step(parallel.replicate(state, mesh), sharded, key)
    return jax.device_get(after), jax.device_get(metrics)


def test_eight_device_step_equals_one_device_step_without_mixing(initial_state):
    config = make_config("none")
    batch = make_batch()
    one_device = parallel.make_data_mesh(jax.devices()[:1])
    one, metrics_one = one_step(config, one_device, initial_state, batch)
    eight, metrics_eight = one_step(config, parallel.make_data_mesh(), initial_state, batch)
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(metrics_one["loss"], metrics_eight["loss"], rtol=1e-5)
    for tree_one, tree_eight in ((one.params, eight.params), (one.batch_stats, eight.batch_stats)):
        for a, b in zip(jax.tree.leaves(tree_one), jax.tree.leaves(tree_eight), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert int(eight.step) == 1


@pytest.mark.parametrize(
    ("method", "dtype"),
    [
        ("input_mixup", jnp.float32),
        ("manifold_mixup", jnp.float32),
        ("cutmix", jnp.float32),
        ("saliencymix", jnp.float32),
        ("alignmix", jnp.float32),
        ("alignmixup", jnp.bfloat16),
    ],
)
def test_every_method_steps_on_eight_devices(initial_state, method, dtype):
    config = make_config(method)
    before = initial_state
    after, metrics = one_step(config, parallel.make_data_mesh(), before, make_batch(), dtype)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert 0.0 <= metrics["lam"] <= 1.0
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True)
    ]
    assert all(moved)
    for leaf in jax.tree.leaves(after.params) + jax.tree.leaves(after.batch_stats):
        assert np.all(np.isfinite(leaf))
    # bfloat16 compute keeps float32 parameters.
    assert {leaf.dtype for leaf in jax.tree.leaves(after.params)} == {np.dtype(np.float32)}
    if method in ("input_mixup", "manifold_mixup", "alignmix", "alignmixup"):
        # lam comes from the step key shared by all devices: the device mean is the one draw.
        step_key = jax.random.fold_in(jax.random.key(0), 0)
        lam_key = jax.random.split(jax.random.split(step_key)[0], 4)[0]
        expected = sample_lam(lam_key, config.mix.alpha)
        np.testing.assert_allclose(metrics["lam"], expected, rtol=1e-6)


def test_sgd_matches_torch_coupled_weight_decay_and_nesterov():
    config = make_config("none").optimizer
    config.nesterov = True
    lr, momentum, decay = config.learning_rate, config.momentum, config.weight_decay
    optimizer = train.create_optimizer(config, optax.constant_schedule(lr))
    params = {"w": jnp.array([1.0, -2.0]), "bn_scale": jnp.array([0.5])}
    grads = [{"w": jnp.array([0.3, 0.1]), "bn_scale": jnp.array([-0.2])}] * 2
    state = optimizer.init(params)
    expected = jax.tree.map(np.asarray, params)
    buffer = None
    for grad in grads:
        updates, state = optimizer.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        # torch.optim.SGD(weight_decay, momentum, nesterov=True), by hand:
        g = jax.tree.map(lambda g, p: np.asarray(g) + decay * p, grad, expected)
        buffer = g if buffer is None else jax.tree.map(lambda b, g: momentum * b + g, buffer, g)
        direction = jax.tree.map(lambda g, b: g + momentum * b, g, buffer)
        expected = jax.tree.map(lambda p, d: p - lr * d, expected, direction)
    for name in params:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-6)


def test_learning_rate_schedules():
    config = make_config("none").optimizer
    config.schedule = "piecewise"
    config.boundaries_epochs = (2, 4)
    piecewise = train.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=60)
    assert [float(piecewise(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )
    config.schedule = "cosine"
    config.warmup_epochs = 1.0
    cosine = train.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=60)
    assert float(cosine(0)) == pytest.approx(0.0)
    assert float(cosine(5)) == pytest.approx(0.05)
    assert float(cosine(10)) == pytest.approx(0.1)
    assert float(cosine(35)) == pytest.approx(0.05, abs=1e-6)
    assert float(cosine(60)) == pytest.approx(0.0, abs=1e-7)


def test_eval_step_counts_top1_and_top5_without_padding(initial_state):
    config = make_config("none")
    mesh = parallel.make_data_mesh()
    model = models.build_model(config.model, NUM_CLASSES, axis_name="data")
    state = initial_state
    batch = make_batch(3)
    batch["mask"] = (np.arange(GLOBAL_BATCH) < 11).astype(np.float32)
    counts = jax.device_get(
        train.make_eval_step(model, mesh)(
            state.params, state.batch_stats, parallel.shard_host_batch(batch, mesh)
        )
    )
    plain_model = models.build_model(config.model, NUM_CLASSES)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = np.asarray(plain_model.apply(jax.device_get(variables), batch["image"])[0])[:11]
    labels = batch["label"][:11]
    ranks = np.argsort(-logits, axis=1)
    assert counts["count"] == 11
    assert counts["correct1"] == np.sum(ranks[:, 0] == labels)
    assert counts["correct5"] == np.sum(np.any(ranks[:, :5] == labels[:, None], axis=1))
