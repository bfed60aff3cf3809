r"""ImageNet, ResNet-50, AlignMixup. Paper: 79.32% (best validation top-1 over training).

    python -m alignmix_jax.main --config experiments/imagenet_resnet50.py --workdir DIR \
        --config.data.manual_dir=/path/to/imagenet/tars
    python -m alignmix_jax.main --config experiments/imagenet_resnet50.py:smoke --workdir DIR

300 epochs, batch 1024, SGD with Nesterov momentum 0.9, lr 0.1 x0.1 every 75 epochs, weight decay
1e-4 (coupled L2), 224x224 random-resized crops + flip; alpha 2; per step a fair coin picks input
mixup or aligned mixup of the 2048x7x7 last map (Sinkhorn eps 0.1, 100 iterations, random
direction). Computes in bfloat16 with float32 parameters (`--config.compute_dtype=float32` for full
precision, as the official code). The alignment then sees bf16-rounded last maps (it computes in
float32 itself): measured by `benchmarks/bench_alignment_precision.py` on ResNet-50-shaped
post-ReLU maps (128, 7, 7, 2048), 99.3% of the plan's rows keep their argmax and the aligned mix
moves by 1.4% of its norm (median; max 5.2%), against 0.15% for the linear mix, where rounding
alone acts: the near-hard plan amplifies the rounding about 9x, a perturbation far below the
mixing's own randomness (lam, partners, direction). Multi-host: add `--config.distributed=True`
on every host.

The official code trains on 8 GPUs (`imagenet/gen.slurm`) with the model in `nn.DataParallel`
(`imagenet/main.py`): lam is drawn once per step for all, but each replica runs `forward` on its
own 128 images, so it draws its own input/aligned coin, its own direction coin and its own
permutation, and BatchNorm normalises with that replica's statistics (the running statistics kept
are replica 0's). These are the defaults here: `mix.partner = "device"` (pairs within each
device's shard), `mix.coins = "device"` (each device's own coins), `model.batch_norm_group = 1`
(each device's own BatchNorm statistics; the state keeps device 0's running ones). On 8 devices of
128 images this is the official step; `--config.mix.partner=global --config.mix.coins=shared
--config.model.batch_norm_group=0` gives the single-GPU semantics instead, independent of the
device count.
"""

import ml_collections

from alignmix_jax import models
from alignmix_jax.trainer.experiment_config import apply_config_argument, default_config


def get_config(argument=None):
    """The paper's ImageNet ResNet-50 AlignMixup row; "smoke" shrinks it to a CPU check."""
    config = default_config("imagenet2012")
    config.model = ml_collections.ConfigDict(
        {"name": "resnet50", "stage_sizes": (3, 4, 6, 3), "base_width": 64,
         "batch_norm_group": models.BATCH_NORM_EACH_DEVICE}
    )
    config.batch_size = 1024
    config.eval_batch_size = 1024
    config.num_epochs = 300
    config.optimizer.nesterov = True
    config.optimizer.boundaries_epochs = (75, 150, 225)
    config.compute_dtype = "bfloat16"
    config.mix.partner = "device"  # the reference's DataParallel: pairs within each GPU's shard,
    config.mix.coins = "device"  # each replica's own coins
    config.checkpoint_every_steps = 2500
    config.paper_top1 = 79.32
    return apply_config_argument(config, argument)
