r"""Ablation: every mixing method on low-data CIFAR-10 (500 training images per class), 3 seeds.

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
from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config

CIFAR10_JPEG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    *("..", "..", "..", "shared", "data", "cifar10_jpg", "CIFAR-10-images.tar.gz"),
)
BATCH_SIZE = 128
# The seven methods of the recorded results (docs/results/); methods registered since (resizemix)
# would add runs to a resumed sweep, so this experiment names its own.
METHODS = (
    "none", "input_mixup", "manifold_mixup", "cutmix", "saliencymix", "alignmix", "alignmixup"
)


def lowdata_config(examples_per_class: int, epochs: int, eval_every_epochs: int, argument=None):
    """Width-16 PreActResNet-18 on `examples_per_class` seeded training images of each CIFAR-10
    class (`data.split_seed` 0: the same images for every seed), the full test set, cosine lr 0.1,
    weight decay 5e-4, `epochs` epochs of batch 128, test top-1 every `eval_every_epochs` epochs;
    "smoke" shrinks it to a few steps on a generated JPEG archive."""
    config = default_config(
        "image_folder",
        path=CIFAR10_JPEG,
        train_examples_per_class=examples_per_class,
        mean=data.OFFICIAL_CIFAR_MEAN,
        std=data.OFFICIAL_CIFAR_STD,
    )
    steps_per_epoch = 10 * examples_per_class // BATCH_SIZE
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (2, 2, 2, 2), "base_width": 16}
    )
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = 500
    config.num_epochs = epochs
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.eval_every_steps = eval_every_epochs * steps_per_epoch
    config.summary_last_evals = 3
    config.log_every_steps = steps_per_epoch
    config.checkpoint_every_steps = eval_every_epochs * steps_per_epoch
    config.progress_bar = False
    return apply_config_argument(config, argument)


def get_config(argument=None):
    """500 images per class, 50 epochs (1,950 steps), eval every 5 epochs."""
    return lowdata_config(500, epochs=50, eval_every_epochs=5, argument=argument)


def get_sweep():
    """One point per method."""
    return [{"mix.method": method} for method in METHODS]


def get_seeds():
    """Three seeds: each changes the initialisation, the data order, augmentation and mixing
    draws (not which training images: `data.split_seed` draws those)."""
    return [0, 1, 2]
