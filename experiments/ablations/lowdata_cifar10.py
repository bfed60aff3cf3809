"""Ablation: every mixing method on low-data CIFAR-10 (500 training images per class), 3 seeds.

    python -m alignmix_jax.sweep --config experiments/ablations/lowdata_cifar10.py \
        --workdir DIR
    python -m alignmix_jax.sweep --config experiments/ablations/lowdata_cifar10.py --workdir DIR \
        --print_commands

CIFAR-10 from its JPEG copy (`../shared/data/cifar10_jpg/CIFAR-10-images.tar.gz` beside the
repository; elsewhere set `--config.data.path`), a seeded stratified subset of 500 training images
per class (5,000; the same images for every seed: `data.split_seed` 0), the full 10,000 test
images, official CIFAR normalisation, crop 32 pad 4 + flip. PreActResNet-18 (the official network)
at width 16; 50 epochs of batch 128 (1,950 steps), SGD momentum 0.9, lr 0.1 with a cosine schedule,
weight decay 5e-4; test top-1 every 5 epochs, the summary's median over the last 3 evals (the last
15 epochs). About 15 minutes a run on 2 CPU cores; 7 methods x 3 seeds. The mixing methods use
their defaults: alpha 2 (the paper's; CutMix and SaliencyMix likewise), AlignMix on the last map
(128x4x4), Sinkhorn eps 0.1, 100 iterations.
"""

import os

import ml_collections

from alignmix_jax import data
from alignmix_jax.trainer.experiment_config import METHODS, apply_config_argument, default_config

CIFAR10_JPEG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    *("..", "..", "..", "shared", "data", "cifar10_jpg", "CIFAR-10-images.tar.gz"),
)
EXAMPLES_PER_CLASS = 500
EPOCHS = 50
STEPS_PER_EPOCH = 10 * EXAMPLES_PER_CLASS // 128


def get_config(argument=None):
    """The low-data CIFAR-10 base config; "smoke" shrinks it to a few steps on digits."""
    config = default_config(
        "image_folder",
        path=CIFAR10_JPEG,
        train_examples_per_class=EXAMPLES_PER_CLASS,
        mean=data.OFFICIAL_CIFAR_MEAN,
        std=data.OFFICIAL_CIFAR_STD,
    )
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (2, 2, 2, 2), "base_width": 16}
    )
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = EPOCHS
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.eval_every_steps = 5 * STEPS_PER_EPOCH
    config.summary_last_evals = 3
    config.log_every_steps = STEPS_PER_EPOCH
    config.checkpoint_every_steps = 5 * STEPS_PER_EPOCH
    config.progress_bar = False
    return apply_config_argument(config, argument)


def get_sweep():
    """One point per method."""
    return [{"mix.method": method} for method in METHODS]


def get_seeds():
    """Three seeds: each changes the initialisation, the data order, augmentation and mixing
    draws (not the 5,000 training images)."""
    return [0, 1, 2]
