"""TinyImageNet, PreActResNet-18, AlignMixup. Paper: 66.87% (best test top-1 over training).

    python -m alignmix_jax.main --config experiments/tinyimagenet_preactresnet18.py --workdir DIR \
        --config.data.path=/path/to/tiny-imagenet-200
    python -m alignmix_jax.main --config experiments/tinyimagenet_preactresnet18.py:smoke \
        --workdir DIR

1200 epochs, batch 256, SGD momentum 0.9, lr 0.1 x0.1 at epochs 600/900, weight decay 1e-4
(coupled L2), 64x64 images with the TinyImageNet augmentation; alpha 2; per step a fair coin picks
input mixup or aligned mixup of the 512x8x8 last map (Sinkhorn eps 0.1, 100 iterations, random
direction). `data.path` is the tiny-imagenet-200 folder (or its archive).
"""

from alignmix_jax.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The paper's TinyImageNet PreActResNet-18 row; "smoke" shrinks it to a CPU check."""
    config = default_config("tiny_imagenet")
    config.batch_size = 256
    config.num_epochs = 1200
    config.optimizer.boundaries_epochs = (600, 900)
    return apply_config_argument(config, argument)
