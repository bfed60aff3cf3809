"""Ablation: the stage whose output AlignMix aligns and mixes (`mix.method=alignmix`, every step).

    python -m alignmix_jax.sweep --config experiments/ablations/stage.py --workdir DIR

Base: the quickstart (digits); the argument "cifar10" sweeps the CIFAR-10 PreActResNet-18 recipe.
Both use a 4-stage PreActResNet: stage4 is the last map.
"""

from alignmix_jax.trainer.experiment_config import ablation_base_config


def get_config(argument=None):
    """The base config with aligned mixup at one stage every step."""
    config = ablation_base_config(__file__, argument)
    config.mix.method = "alignmix"
    return config


def get_sweep():
    """Aligned mixup at each stage from the stem to the last map."""
    return [{"mix.stage": stage} for stage in ("stem", "stage1", "stage2", "stage3", "stage4")]
