r"""Ablation: the mixing methods on scarcer CIFAR-10 (100 training images per class), 3 seeds.

    python -m alignmix_jax.sweep --config experiments/ablations/lowdata100_cifar10.py \
        --workdir DIR

The setting of `lowdata_cifar10.py` with 1,000 training images: 100 of each class, a seeded
stratified subset of the JPEG copy's training rows (`data.split_seed` 0, the same images for every
seed and every method; a different draw from the 500-per-class subset), the full 10,000 test images,
width-16 PreActResNet-18, cosine lr 0.1, weight decay 5e-4, 200 epochs of batch 128 (7 steps each:
1,400 steps), test top-1 every 50 epochs (350 steps), the summary's median over the last 3 evals.
About 11 minutes a run on 2 CPU cores; 6 methods x 3 seeds. `alignmix` (aligned mixing on every
step) beside `input_mixup` (input mixing on every step) shows which half of AlignMixup's policy
carries its effect here.
"""

from lowdata_cifar10 import get_seeds, lowdata_config  # noqa: F401  (get_seeds: 0, 1, 2)

METHODS = ("none", "input_mixup", "cutmix", "saliencymix", "alignmix", "alignmixup")


def get_config(argument=None):
    """100 images per class, 200 epochs (1,400 steps), eval every 50 epochs."""
    return lowdata_config(100, epochs=200, eval_every_epochs=50, argument=argument)


def get_sweep():
    """One point per method."""
    return [{"mix.method": method} for method in METHODS]

