"""The train step, optimizer and schedules (8 simulated CPU devices, tiny PreActResNet)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import step_agreement
from helpers import (
    GLOBAL_BATCH,
    IMAGE_SHAPE,
    NUM_CLASSES,
    build,
    make_batch,
    make_config,
    make_step,
    train_steps,
)

from alignmix_jax import models
from alignmix_jax.trainer import eval_loop, experiment_config, optimization, parallel, train


@pytest.fixture(scope="module")
def initial_state():
    """The initial TrainState on the host (one init compile for the whole module)."""
    model, _, optimizer = build(make_config("none"))
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    return jax.device_get(train.create_train_state(model, optimizer, IMAGE_SHAPE, 0, mesh))


NUM_STEPS = 3


@pytest.mark.parametrize("method", experiment_config.METHODS)
def test_eight_devices_step_like_one_device(initial_state, method):
    """With global partners, each of 3 steps on 8 devices, from the state 1 device reached, lands
    where the 1-device step does, within one step's float32 rounding (`step_agreement`), with the
    same lam and loss; per-device partners land far outside."""
    config = make_config(method)
    one_device = make_step(config, parallel.make_data_mesh(jax.devices()[:1]))
    eight_devices = make_step(config, parallel.make_data_mesh())
    before = initial_state
    for index in range(NUM_STEPS):
        expected, metrics = one_device(before, index)
        after, metrics_eight = eight_devices(before, index)
        assert int(after.step) == index + 1
        step_agreement.assert_same_step(before, after, expected, f"{method}, step {index + 1}")
        assert metrics_eight["lam"] == pytest.approx(float(metrics["lam"]), rel=1e-6)
        assert metrics_eight["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)
        assert bool(metrics_eight["finite"])
        before = expected
    if method == "alignmixup":  # per-device partners: other pairs
        config.mix.partner = "device"
        per_device, _ = make_step(config, parallel.make_data_mesh())(initial_state, 0)
        expected, _ = one_device(initial_state, 0)
        step_agreement.assert_defect_rejected(initial_state, per_device, expected, "partners")


def test_bfloat16_compute_trains_float32_parameters(initial_state):
    after, metrics = train_steps(
        make_config("alignmixup"), parallel.make_data_mesh(), initial_state, 1, jnp.bfloat16
    )
    assert np.isfinite(metrics["loss"]) and bool(metrics["finite"])
    assert {leaf.dtype for leaf in jax.tree.leaves(after.params)} == {np.dtype(np.float32)}
    before, moved = jax.tree.leaves(initial_state.params), jax.tree.leaves(after.params)
    assert all(not np.array_equal(a, b) for a, b in zip(before, moved, strict=True))


def test_step_reports_a_non_finite_loss_or_parameter(initial_state):
    config = make_config("alignmixup")
    config.optimizer.learning_rate = 1e8
    _, metrics = train_steps(config, parallel.make_data_mesh(), initial_state, 3)
    assert not bool(metrics["finite"])


def test_sgd_matches_torch_coupled_weight_decay_and_nesterov():
    config = make_config("none").optimizer
    config.nesterov = True
    lr, momentum, decay = config.learning_rate, config.momentum, config.weight_decay
    optimizer = optimization.create_optimizer(config, optax.constant_schedule(lr))
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
    piecewise = optimization.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=60)
    assert [float(piecewise(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )
    config.schedule = "cosine"
    config.warmup_epochs = 1.0
    cosine = optimization.create_learning_rate_fn(config, steps_per_epoch=10, total_steps=60)
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
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    counts, per_example = eval_loop.make_eval_step(model)(
        parallel.replicate(variables, mesh), parallel.shard_host_batch(batch, mesh), None
    )
    counts = jax.device_get(counts)
    assert per_example == {}
    plain_model = models.build_model(config.model, NUM_CLASSES)
    logits = np.asarray(plain_model.apply(jax.device_get(variables), batch["image"])[0])[:11]
    labels = batch["label"][:11]
    ranks = np.argsort(-logits, axis=1)
    assert counts["count"] == 11
    assert counts["correct1"] == np.sum(ranks[:, 0] == labels)
    assert counts["correct5"] == np.sum(np.any(ranks[:, :5] == labels[:, None], axis=1))
