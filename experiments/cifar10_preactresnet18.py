"""CIFAR-10, PreActResNet-18, AlignMixup. Paper: 97.05% (best test top-1 over training).

    python -m alignmix_jax.main --config experiments/cifar10_preactresnet18.py --workdir DIR
    python -m alignmix_jax.main --config experiments/cifar10_preactresnet18.py:smoke --workdir DIR

2000 epochs, batch 128, SGD momentum 0.9, lr 0.1 x0.1 at epochs 500/1000/1500, weight decay 1e-4
(coupled L2), random crop 32 pad 4 + flip; alpha 2; per step a fair coin picks input mixup or
aligned mixup of the 512x4x4 last map (Sinkhorn eps 0.1, 100 iterations, random direction).
Normalised as the official code does: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
"""

from alignmix_jax import data
from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The paper's CIFAR-10 PreActResNet-18 AlignMixup row; "smoke" shrinks it to a CPU check."""
    config = default_config("cifar10", mean=data.OFFICIAL_CIFAR_MEAN, std=data.OFFICIAL_CIFAR_STD)
    config.paper_top1 = 97.05
    return apply_config_argument(config, argument)
