"""Ablation: the number of Sinkhorn iterations `mix.num_iters` of AlignMixup.

    python -m alignmix_jax.sweep --config experiments/ablations/num_iters.py --workdir DIR

Base: the quickstart (digits); the argument "cifar10" sweeps the CIFAR-10 PreActResNet-18 recipe.
"""

from alignmix_jax.trainer.experiment_config import ablation_base_config


def get_config(argument=None):
    """The base config: the quickstart, or the CIFAR-10 PreActResNet-18 row ("cifar10")."""
    return ablation_base_config(__file__, argument)


def get_sweep():
    """AlignMixup with 1 to 100 Sinkhorn updates."""
    return [{"mix.num_iters": num_iters} for num_iters in (1, 5, 20, 100)]
