"""Pre-activation ResNet, CIFAR form, as the official AlignMixup code defines it
(`cifar10_100/models/resnet.py` of github.com/shashankvkt/AlignMixup_CVPR22; PreActResNet-18 by
default).

3x3 stem conv (stride 1, no bias) -> BatchNorm -> ReLU; stages of pre-activation basic blocks with
widths base_width * 2**k and strides 1, 2, 2, ...; no final BatchNorm-ReLU; global average pooling;
linear head. At 32x32 input PreActResNet-18's last map ("stage4") is (B, 4, 4, 512); at 64x64 it
is (B, 8, 8, 512).

The shortcut of a block adds, by default as in the official code (`shortcut="official"`), the
pre-activated input relu(bn1(x)) (through a 1x1 conv, no bias, where the shape changes). The form
of He et al. 2016 (*Identity Mappings in Deep Residual Networks*), which adds the raw input x when
the shape is unchanged, is the option `shortcut="he2016"`. Conv kernels are initialised as in
PyTorch (`conv_init="pytorch"`) by default, as the official code leaves them.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignmix_jax.models.common import StagedResNet, batch_norm, conv

Array = jax.Array

SHORTCUTS = ("official", "he2016")
"""Values of `PreActResNet.shortcut`: what a block whose shape is unchanged adds to its residual
branch. "official": relu(bn1(x)), as the official AlignMixup code (its `shortcut` is the identity
applied to the pre-activated input). "he2016": x, as He et al. 2016. Blocks that change the shape
add a 1x1 conv of relu(bn1(x)) in both."""


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU, 3x3 conv (stride), BN-ReLU, 3x3 conv, plus the
    shortcut (see `SHORTCUTS`). Maps (B, H, W, C_in) to (B, H / strides, W / strides, features)."""

    features: int
    strides: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    shortcut: str = "official"
    conv_init: str = "pytorch"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C_in) -> (B, H / strides, W / strides, features)."""
        in_features = x.shape[-1]
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        if self.strides != 1 or in_features != self.features:
            shortcut = conv(
                self.features, 1, self.strides, in_features=in_features,
                conv_init=self.conv_init, dtype=self.dtype, name="shortcut",
            )(out)
        else:
            shortcut = out if self.shortcut == "official" else x
        out = conv(
            self.features, 3, self.strides, in_features=in_features, conv_init=self.conv_init,
            dtype=self.dtype, name="conv1",
        )(out)
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(out))
        out = conv(
            self.features, 3, in_features=self.features, conv_init=self.conv_init,
            dtype=self.dtype, name="conv2",
        )(out)
        return out + shortcut


class PreActStem(nn.Module):
    """3x3 conv (stride 1, no bias) -> BatchNorm -> ReLU: (B, H, W, C) -> (B, H, W, features)."""

    features: int
    conv_init: str = "pytorch"
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C) -> (B, H, W, features)."""
        x = conv(
            self.features, 3, in_features=x.shape[-1], conv_init=self.conv_init,
            dtype=self.dtype, name="conv",
        )(x)
        return nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn")(x))


class PreActResNet(StagedResNet):
    """Pre-activation ResNet (CIFAR form); the defaults are the official PreActResNet-18.

    Attributes (besides num_classes, axis_name, dtype, conv_init of `StagedClassifier`):
      stage_sizes: blocks per stage; (2, 2, 2, 2) is PreActResNet-18, (1, 1) a tiny test variant.
      base_width: channels of the stem and the first stage; stage k has base_width * 2**(k-1).
      shortcut: "official" (default) or "he2016", see `SHORTCUTS`.

    Stage outputs at an H x W input: "stem" and "stage1" (B, H, W, base_width), "stage{k}"
    (B, H / 2**(k-1), W / 2**(k-1), base_width * 2**(k-1)); the last map is the last stage's output
    (no final BN-ReLU). 11,171,274 parameters for 10 classes, 11,217,444 for 100.
    """

    stem_module: ClassVar[Callable[..., nn.Module]] = PreActStem
    block_module: ClassVar[Callable[..., nn.Module]] = PreActBlock
    shortcut: str = "official"

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        super().__post_init__()

    def block_options(self) -> dict[str, Any]:
        """conv_init and shortcut, for every block."""
        return {**super().block_options(), "shortcut": self.shortcut}
