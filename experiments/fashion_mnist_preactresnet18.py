r"""Fashion-MNIST, small PreActResNet, AlignMixup: a short real-data run on 2 CPU cores.

    python -m alignmix_jax.main --config experiments/fashion_mnist_preactresnet18.py \
        --workdir DIR --config.data.manual_dir=../shared/data/fashion_mnist
    python -m alignmix_jax.main --config experiments/fashion_mnist_preactresnet18.py:smoke \
        --workdir DIR

Measured here (3 epochs, 1,404 steps, 2 shared CPU cores): 87.42% final and best test top-1,
9 min 15 s wall, 391 images/s (median). No paper figure (the paper has no Fashion-MNIST row).

tfds prepares `fashion_mnist` from the four official files in data.manual_dir (once, cached in
data.data_dir). 60,000 training and 10,000 test images at 28x28, random crop 28 pad 4 + flip.
PreActResNet with one block per stage, width 16: the aligned map is 128x4x4. Per step a fair coin
picks input mixup or aligned mixup (alpha 2, Sinkhorn eps 0.1, 100 iterations, random direction);
batch 128, SGD momentum 0.9, lr 0.1 with a cosine schedule to 0, weight decay 5e-4.
"""

import ml_collections

from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The short Fashion-MNIST AlignMixup run; "smoke" shrinks it to a few steps on digits."""
    config = default_config("fashion_mnist")
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (1, 1, 1, 1), "base_width": 16}
    )
    config.batch_size = 128
    config.eval_batch_size = 400
    config.num_epochs = 3
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    return apply_config_argument(config, argument)
