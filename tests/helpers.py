"""What several test files build the same way: the tiny training config of a few steps, and one
compiled train step of a tiny model on synthetic batches."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alignmix_jax import models
from alignmix_jax.trainer import experiment_config, optimization, parallel, train

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE_CONFIG = "experiments/quickstart.py:smoke"


def smoke_config(num_steps: int | None = None, **changes) -> ml_collections.ConfigDict:
    """The quickstart's `:smoke` config (digits, tiny PreActResNet, batch 16, AlignMixup) at 16x16,
    without TensorBoard or a progress bar. With `num_steps`: that many steps, one eval at the end,
    a checkpoint and a log line after every step. `changes`: dotted fields and their values."""
    config = experiment_config.load_config(str(REPO / SMOKE_CONFIG))
    config.data.image_size = 16
    config.tensorboard = False
    config.progress_bar = False
    if num_steps is not None:
        config.num_train_steps = num_steps
        config.eval_every_steps = num_steps
        config.checkpoint_every_steps = 1
        config.log_every_steps = 1
    config.update_from_flattened_dict(changes)
    return config


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
    learning_rate_fn = optimization.create_learning_rate_fn(config.optimizer, 10, 100)
    optimizer = optimization.create_optimizer(config.optimizer, learning_rate_fn)
    return model, learning_rate_fn, optimizer


def make_step(config, mesh, dtype=jnp.float32):
    """`step(host_state, index) -> (host state, host metrics)`: one compiled train step of `config`
    on `mesh`, on the batch `make_batch(index)`, with key 0."""
    model, learning_rate_fn, optimizer = build(config, dtype)
    step = train.make_train_step(model, config.mix, optimizer, learning_rate_fn, mesh)
    key = parallel.replicate(jax.random.key(0), mesh)

    def run(state, index):
        batch = parallel.shard_host_batch(make_batch(index), mesh)
        return jax.device_get(step(parallel.replicate(state, mesh), batch, key))

    return run


def train_steps(config, mesh, state, num_steps, dtype=jnp.float32):
    """`state` after `num_steps` steps on `mesh` (batches 0..num_steps-1), the last metrics."""
    step = make_step(config, mesh, dtype)
    for index in range(num_steps):
        state, metrics = step(state, index)
    return state, metrics
