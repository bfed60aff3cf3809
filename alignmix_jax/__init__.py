"""alignmix_jax: AlignMixup (CVPR 2022) and the mixup family in JAX, ott-jax Sinkhorn alignment.

The core functions are exported here; the subpackages are imported as modules
(`from alignmix_jax import models`).
"""

from alignmix_jax.core.mixing import (
    cutmix,
    mix_labels,
    mixed_cross_entropy,
    mixup,
    saliencymix,
    sample_lam,
    spectral_residual_saliency,
)
from alignmix_jax.core.ot import align, align_mix, sinkhorn_plan

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "align",
    "align_mix",
    "cutmix",
    "mix_labels",
    "mixed_cross_entropy",
    "mixup",
    "saliencymix",
    "sample_lam",
    "sinkhorn_plan",
    "spectral_residual_saliency",
]
