"""Ablation: the Sinkhorn entropy `mix.epsilon` of AlignMixup (absolute, on raw squared costs).

    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR

Base: the quickstart (digits); the argument "cifar10" sweeps the CIFAR-10 PreActResNet-18 recipe.
"""

from alignmix_jax.trainer.experiment_config import ablation_base_config


def get_config(argument=None):
    """The base config: the quickstart, or the CIFAR-10 PreActResNet-18 row ("cifar10")."""
    return ablation_base_config(__file__, argument)


def get_sweep():
    """AlignMixup with epsilon from near-exact transport to nearly uniform plans."""
    return [{"mix.epsilon": epsilon} for epsilon in (0.01, 0.1, 1.0, 10.0, 100.0)]
