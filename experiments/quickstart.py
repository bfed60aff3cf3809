"""Quickstart: AlignMixup on scikit-learn's bundled digits, no download, about two minutes on 2 CPU
cores, >= 95% test top-1.

    python -m alignmix_jax.main --config experiments/quickstart.py --workdir /tmp/quickstart

The 8x8 digits are upsampled to 32x32 so that a small PreActResNet (one block per stage, width 16)
ends on a 128x4x4 map, the map AlignMixup aligns and mixes. 1,437 training and 360 test images;
random crop (pad 4), no flip; per step a fair coin picks input mixup or aligned mixup (alpha 2,
Sinkhorn eps 0.1, 100 iterations, random direction); SGD momentum 0.9, cosine schedule.
"""

import ml_collections

from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The quickstart config; "smoke" shrinks it to a few steps."""
    config = default_config("digits", image_size=32)
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (1, 1, 1, 1), "base_width": 16}
    )
    config.batch_size = 64
    config.eval_batch_size = 120
    config.num_epochs = 15
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.log_every_steps = 10
    config.checkpoint_every_steps = 100
    return apply_config_argument(config, argument)
