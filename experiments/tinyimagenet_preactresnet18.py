r"""TinyImageNet, PreActResNet-18, AlignMixup. Paper: 66.87% (best test top-1 over training).

    python -m alignmix_jax.main --config experiments/tinyimagenet_preactresnet18.py --workdir DIR \
        --config.data.path=/path/to/tiny-imagenet-200
    python -m alignmix_jax.main --config experiments/tinyimagenet_preactresnet18.py:smoke \
        --workdir DIR

1200 epochs, batch 256, SGD momentum 0.9, lr 0.1 x0.1 at epochs 600/900, weight decay 1e-4
(coupled L2), 64x64 images with the TinyImageNet augmentation; alpha 2; per step a fair coin picks
input mixup or aligned mixup of the 512x8x8 last map (Sinkhorn eps 0.1, 100 iterations, random
direction). `data.path` is the tiny-imagenet-200 folder (or its archive).
Normalised as the official code does: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
"""

from alignmix_jax import data
from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The paper's TinyImageNet PreActResNet-18 row; "smoke" shrinks it to a CPU check."""
    config = default_config(
        "tiny_imagenet", mean=data.OFFICIAL_CIFAR_MEAN, std=data.OFFICIAL_CIFAR_STD
    )
    config.batch_size = 256
    config.num_epochs = 1200
    config.optimizer.boundaries_epochs = (600, 900)
    config.paper_top1 = 66.87
    return apply_config_argument(config, argument)
