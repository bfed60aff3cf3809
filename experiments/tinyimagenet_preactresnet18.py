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

The official job (`tiny_imgnet/submit_job.sh`) asked for 2 GPUs and wraps the model in
`nn.DataParallel` (`tiny_imgnet/main.py`): with lam drawn once per step, each GPU runs `forward`
on its 128 of the 256 images with its own coins, permutation and BatchNorm statistics. This config
keeps the single-GPU semantics (partners, coins and statistics over the whole batch of 256, the
same on any device count); on 2 devices, `--config.mix.partner=device --config.mix.coins=device
--config.model.batch_norm_group=1` reproduces the official step.
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
