"""Pre-activation ResNet, CIFAR form, as in the AlignMixup reference (PreActResNet-18 by default).

3x3 stem conv (stride 1, no bias) -> BatchNorm -> ReLU; stages of pre-activation basic blocks with
widths base_width * 2**k and strides 1, 2, 2, ...; a 1x1 conv shortcut (no bias) where the shape
changes; no final BatchNorm-ReLU; global average pooling; linear head. At 32x32 input
PreActResNet-18's last map ("stage4") is (B, 4, 4, 512); at 64x64 it is (B, 8, 8, 512).
"""

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignmix_jax.models.common import StagedResNet, batch_norm, conv

Array = jax.Array


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU, 3x3 conv (stride), BN-ReLU, 3x3 conv, plus the
    shortcut (identity, or a 1x1 conv of the pre-activated input when the shape changes).
    Maps (B, H, W, C_in) to (B, H / strides, W / strides, features)."""

    features: int
    strides: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C_in) -> (B, H / strides, W / strides, features)."""
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.strides, dtype=self.dtype, name="shortcut")(out)
        else:
            shortcut = x
        out = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(out)
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(out))
        out = conv(self.features, 3, dtype=self.dtype, name="conv2")(out)
        return out + shortcut


class PreActStem(nn.Module):
    """3x3 conv (stride 1, no bias) -> BatchNorm -> ReLU: (B, H, W, C) -> (B, H, W, features)."""

    features: int
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C) -> (B, H, W, features)."""
        x = conv(self.features, 3, dtype=self.dtype, name="conv")(x)
        return nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn")(x))


class PreActResNet(StagedResNet):
    """Pre-activation ResNet (CIFAR form); the defaults are PreActResNet-18.

    Attributes (besides num_classes, axis_name, dtype of `StagedClassifier`):
      stage_sizes: blocks per stage; (2, 2, 2, 2) is PreActResNet-18, (1, 1) a tiny test variant.
      base_width: channels of the stem and the first stage; stage k has base_width * 2**(k-1).

    Stage outputs at an H x W input: "stem" and "stage1" (B, H, W, base_width), "stage{k}"
    (B, H / 2**(k-1), W / 2**(k-1), base_width * 2**(k-1)); the last map is the last stage's output
    (no final BN-ReLU). 11,171,274 parameters for 10 classes, 11,217,444 for 100.
    """

    stem_module: ClassVar[Callable[..., nn.Module]] = PreActStem
    block_module: ClassVar[Callable[..., nn.Module]] = PreActBlock


PreActResNet18 = PreActResNet
"""PreActResNet-18: `PreActResNet` with its default stage_sizes (2, 2, 2, 2) and base_width 64."""
