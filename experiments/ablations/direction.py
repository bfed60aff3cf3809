"""Ablation: the AlignMixup direction (0: partner aligned to the batch, 1: the reverse, random).

    python -m alignmix_jax.sweep --config experiments/ablations/direction.py --workdir DIR

Base: the quickstart (digits); the argument "cifar10" sweeps the CIFAR-10 PreActResNet-18 recipe.
"""

from alignmix_jax.trainer.experiment_config import ablation_base_config


def get_config(argument=None):
    """The base config: the quickstart, or the CIFAR-10 PreActResNet-18 row ("cifar10")."""
    return ablation_base_config(__file__, argument)


def get_sweep():
    """Random direction (the paper), then each fixed direction."""
    return [{"mix.direction": direction} for direction in ("random", "0", "1")]
