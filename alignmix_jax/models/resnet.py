"""ResNet with bottleneck blocks for ImageNet, as the official AlignMixup code defines it
(`imagenet/models/resnet.py` of github.com/shashankvkt/AlignMixup_CVPR22, taken from CutMix-PyTorch,
itself torchvision's ResNet v1.5; ResNet-50 by default).

7x7/2 stem conv (no bias) -> BatchNorm -> ReLU -> 3x3/2 max-pool (padding 1), all part of "stem";
stages of bottleneck blocks (1x1, 3x3 with the stride, 1x1 to 4x the width; no conv biases) of
widths base_width * 2**k and strides 1, 2, 2, ...; a 1x1 conv + BatchNorm downsample shortcut where
the shape changes; global average pooling; linear head. At 224x224 input ResNet-50's last map
("stage4") is (B, 7, 7, 2048).

Conv kernels are He-normal fan-out, N(0, 2 / (out_channels * kh * kw)) (`conv_init="he_fan_out"`,
the default here, as in the official code and torchvision), BatchNorm scale 1 and bias 0 (no
zero-initialised last BatchNorm), the head PyTorch's `nn.Linear` default.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignmix_jax.models.common import StagedResNet, batch_norm, conv

Array = jax.Array

EXPANSION = 4


class Bottleneck(nn.Module):
    """torchvision bottleneck: 1x1 conv-BN-ReLU, 3x3 conv (stride)-BN-ReLU, 1x1 conv to
    4 * features-BN, plus the shortcut (identity, or 1x1 conv (stride)-BN), then ReLU.
    Maps (B, H, W, C_in) to (B, H / strides, W / strides, 4 * features)."""

    features: int
    strides: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_init: str = "he_fan_out"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C_in) -> (B, H / strides, W / strides, 4 * features)."""
        in_features, out_features = x.shape[-1], self.features * EXPANSION
        bottleneck_conv = functools.partial(conv, conv_init=self.conv_init, dtype=self.dtype)
        out = bottleneck_conv(self.features, 1, in_features=in_features, name="conv1")(x)
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(out))
        out = bottleneck_conv(
            self.features, 3, self.strides, in_features=self.features, name="conv2"
        )(out)
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(out))
        out = bottleneck_conv(out_features, 1, in_features=self.features, name="conv3")(out)
        out = batch_norm(train, self.axis_name, self.dtype, name="bn3")(out)
        if self.strides != 1 or in_features != out_features:
            x = bottleneck_conv(
                out_features, 1, self.strides, in_features=in_features, name="downsample_conv"
            )(x)
            x = batch_norm(train, self.axis_name, self.dtype, name="downsample_bn")(x)
        return nn.relu(out + x)


class ResNetStem(nn.Module):
    """7x7/2 conv (no bias) -> BatchNorm -> ReLU -> 3x3/2 max-pool with padding 1:
    (B, H, W, C) -> (B, H / 4, W / 4, features) (rounded up, as in torchvision)."""

    features: int
    conv_init: str = "he_fan_out"
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C) -> (B, H / 4, W / 4, features)."""
        x = conv(
            self.features, 7, 2, in_features=x.shape[-1], conv_init=self.conv_init,
            dtype=self.dtype, name="conv",
        )(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn")(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(StagedResNet):
    """Bottleneck ResNet (torchvision layout); the defaults are the official ResNet-50 for 1000
    classes, with conv_init "he_fan_out".

    Attributes (besides num_classes, axis_name, dtype, conv_init of `StagedClassifier`):
      stage_sizes: bottleneck blocks per stage; (3, 4, 6, 3) is ResNet-50, (1, 1) a tiny variant.
      base_width: channels of the stem and the bottleneck width of the first stage; stage k has
        bottleneck width base_width * 2**(k-1) and output 4 * base_width * 2**(k-1) channels.

    Stage outputs at an H x W input: "stem" (B, H/4, W/4, base_width), "stage{k}"
    (B, H / 2**(k+1), W / 2**(k+1), 4 * base_width * 2**(k-1)); the last map is the last stage's
    output. 25,557,032 parameters for ResNet-50 with 1000 classes.
    """

    stem_module: ClassVar[Callable[..., nn.Module]] = ResNetStem
    block_module: ClassVar[Callable[..., nn.Module]] = Bottleneck
    expansion: ClassVar[int] = EXPANSION
    num_classes: int = 1000
    conv_init: str = "he_fan_out"
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
