r"""CIFAR-10 from its JPEG copy, reduced-width PreActResNet-18, AlignMixup: a short CPU run.
The paper's row is experiments/cifar10_preactresnet18.py (full width, 2000 epochs); this short
run does not reproduce it.

    python -m alignmix_jax.main --config experiments/cifar10_jpg_short.py --workdir DIR \
        --config.data.path=../shared/data/cifar10_jpg/CIFAR-10-images.tar.gz
    python -m alignmix_jax.main --config experiments/cifar10_jpg_short.py:smoke --workdir DIR

Measured here (5 epochs, 1,950 steps, 2 shared CPU cores): 70.81% final and best test top-1,
13 min 50 s wall, 328 images/s (median).

data.path is the archive (or folder) holding CIFAR-10-images/{train,test}/<class>/*.jpg; it is
decoded once into data.cache_dir. 50,000 training and 10,000 test images, random crop 32 pad 4 +
flip, normalised as the official code does: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994,
0.2010) (the figures above were measured with the training split's own mean and std).
PreActResNet-18 (two blocks per stage) at width 16: the aligned map is 128x4x4. Per step a fair
coin picks input mixup or aligned mixup (alpha 2, Sinkhorn eps 0.1, 100 iterations, random
direction); batch 128, SGD momentum 0.9, lr 0.1 with a cosine schedule to 0 (instead of the
paper's steps at 500/1000/1500 of 2000 epochs), weight decay 5e-4.
"""

import ml_collections

from alignmix_jax import data
from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The short CIFAR-10 JPEG AlignMixup run; "smoke": a few steps on a generated JPEG archive."""
    config = default_config(
        "image_folder", mean=data.OFFICIAL_CIFAR_MEAN, std=data.OFFICIAL_CIFAR_STD
    )
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (2, 2, 2, 2), "base_width": 16}
    )
    config.batch_size = 128
    config.eval_batch_size = 400
    config.num_epochs = 5
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    return apply_config_argument(config, argument)
