r"""Ablation: every mixing method on the quickstart setting (digits, small PreActResNet).

    python -m alignmix_jax.sweep --config experiments/ablations/methods.py --workdir DIR
    python -m alignmix_jax.sweep --config experiments/ablations/methods.py:cifar10 --workdir DIR \
        --print_commands

The argument "cifar10" sweeps the paper's CIFAR-10 PreActResNet-18 recipe instead.
"""

from alignmix_jax.trainer.experiment_config import METHODS, ablation_base_config


def get_config(argument=None):
    """The base config: the quickstart, or the CIFAR-10 PreActResNet-18 row ("cifar10")."""
    return ablation_base_config(__file__, argument)


def get_sweep():
    """One point per method."""
    return [{"mix.method": method} for method in METHODS]
