"""What several test files build the same way: the tiny training config of a few steps."""

import pathlib

import ml_collections

from alignmix_jax.trainer import experiment_config

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
