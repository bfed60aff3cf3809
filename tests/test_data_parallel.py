"""The official multi-GPU semantics as options (8 simulated CPU devices): BatchNorm statistics per
device (`model.batch_norm_group = 1`) and mixing coins per device (`mix.coins = "device"`), as
each `nn.DataParallel` replica of the reference computes them; on 1 device both change nothing."""

import functools

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
)
from jax.sharding import PartitionSpec

from alignmix_jax import models
from alignmix_jax.core import method
from alignmix_jax.trainer import parallel, train

DEVICES = 8


def per_device_config(method_name="none", batch_norm_group=1, coins="device"):
    config = make_config(method_name)
    config.model.batch_norm_group = batch_norm_group
    config.mix.partner = "device"
    config.mix.coins = coins
    return config


def one_step(config, mesh):
    """(initial host state, host state after one step on batch 0, metrics) on `mesh`."""
    model, _, optimizer = build(config)
    initial = jax.device_get(train.create_train_state(model, optimizer, IMAGE_SHAPE, 0, mesh))
    after, metrics = make_step(config, mesh)(initial, 0)
    return initial, after, metrics


def test_per_device_batch_norm_normalises_each_shard_with_its_own_statistics():
    """Against each device's shard run alone: the step's loss is the mean of the shards' losses
    under their own statistics, and the running statistics kept are device 0's."""
    assert jax.device_count() == DEVICES
    config = per_device_config()
    initial, after, metrics = one_step(config, parallel.make_data_mesh())
    alone = models.build_model(config.model, NUM_CLASSES)  # no axis: one shard's statistics
    assert alone.axis_name is None
    batch, local = make_batch(0), GLOBAL_BATCH // DEVICES
    losses, device_zero_stats = [], None
    for device in range(DEVICES):
        rows = slice(device * local, (device + 1) * local)
        (logits, _), mutated = alone.apply(
            {"params": initial.params, "batch_stats": initial.batch_stats},
            batch["image"][rows], train=True, mutable=["batch_stats"],
        )
        labels = batch["label"][rows]
        losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
        device_zero_stats = device_zero_stats or mutated["batch_stats"]
    assert metrics["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    for kept, expected in zip(jax.tree.leaves(after.batch_stats),
                              jax.tree.leaves(device_zero_stats), strict=True):
        np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-6)
    # Synced statistics (the default) are those of the whole batch: other numbers.
    synced_config = per_device_config(batch_norm_group=0)
    _, synced, synced_metrics = one_step(synced_config, parallel.make_data_mesh())
    assert synced_metrics["loss"] != pytest.approx(float(metrics["loss"]), rel=1e-4)
    differs = [not np.allclose(a, b, rtol=1e-4) for a, b in zip(
        jax.tree.leaves(synced.batch_stats), jax.tree.leaves(after.batch_stats), strict=True)]
    assert any(differs)


def test_on_one_device_the_per_device_options_change_nothing():
    one_device = parallel.make_data_mesh(jax.devices()[:1])
    initial, official, official_metrics = one_step(per_device_config("alignmixup"), one_device)
    default = make_config("alignmixup")
    default.mix.partner = "device"
    _, plain, plain_metrics = one_step(default, one_device)
    # The same draws and statistics; the programs differ (a mean over one device or none), so the
    # step may round differently.
    step_agreement.assert_same_step(initial, official, plain, "per-device options, 1 device")
    assert official_metrics["loss"] == pytest.approx(float(plain_metrics["loss"]), rel=1e-6)
    assert official_metrics["aligned"] == plain_metrics["aligned"]


@functools.cache
def draws_program(coins: str):
    """(jitted `(images, labels, key) -> (point, direction)` of AlignMixup's forward on each of
    the 8 devices, the batch sharded, the mesh): one compile for every key."""
    config = per_device_config("alignmixup", batch_norm_group=0, coins=coins)
    model = models.build_model(config.model, NUM_CLASSES, axis_name="data")
    variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
    forward = method.make_mixed_forward(model, config.mix, "data")
    mesh = parallel.make_data_mesh()

    def draws(images, labels, key):
        out = forward(variables["params"], variables["batch_stats"], images, labels, key)
        return out.point[None], out.direction[None]

    sharded = jax.jit(jax.shard_map(
        draws, mesh=mesh, in_specs=(PartitionSpec("data"), PartitionSpec("data"), PartitionSpec()),
        out_specs=PartitionSpec("data"), check_vma=False,
    ))
    return sharded, parallel.shard_host_batch(make_batch(0), mesh), mesh


def device_draws(coins: str, key_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point, direction) drawn on each of the 8 devices by AlignMixup's forward for one key."""
    sharded, batch, mesh = draws_program(coins)
    key = parallel.replicate(jax.random.key(key_seed), mesh)
    return tuple(np.asarray(draw) for draw in sharded(batch["image"], batch["label"], key))


def test_per_device_coins_differ_across_devices_and_shared_ones_do_not():
    per_device = [device_draws("device", seed) for seed in range(3)]
    shared = [device_draws("shared", seed) for seed in range(3)]
    for point, direction in shared:
        assert len(set(point)) == 1 and len(set(direction)) == 1
    # 8 fair coins all alike has probability 2 / 256 per key; three keys all alike ~ 5e-7.
    assert any(len(set(point)) > 1 for point, _ in per_device)
    assert any(len(set(direction)) > 1 for _, direction in per_device)
    for point, direction in per_device:
        assert set(point) <= {0, 1} and set(direction) <= {0, 1}
