"""Wide ResNet (pre-activation), as the official AlignMixup code defines it
(`cifar10_100/models/WideResnet.py` of github.com/shashankvkt/AlignMixup_CVPR22; WRN-16-8 by
default).

3x3 stem conv 16 with bias; three stages of pre-activation wide blocks (conv biases, stride on the
second conv of a stage's first block, 1x1 conv shortcut with bias of the raw input where the shape
changes, the raw input itself otherwise) of widths 16k, 32k, 64k (k = widen_factor) and strides 1,
2, 2; a final BatchNorm-ReLU, which belongs to the last stage; global average pooling; linear head.
At 32x32 input WRN-16-8's last map ("stage3") is (B, 8, 8, 512).

As in the official code, the final BatchNorm is `nn.BatchNorm2d(momentum=0.9)`: its running
averages move 90% of the way to the batch statistics each step (flax momentum 0.1), unlike the
other BatchNorms (PyTorch momentum 0.1, flax 0.9). The official `conv_init` helper is never
applied, so convs keep PyTorch's default initialisation (`conv_init="pytorch"`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignmix_jax.models.common import (
    Stage,
    StagedClassifier,
    batch_norm,
    check_positive_int,
    conv,
    stage_point_names,
)

Array = jax.Array

STEM_WIDTH = 16
FINAL_BN_MOMENTUM = 0.1
"""flax momentum of the final BatchNorm: the official `nn.BatchNorm2d(momentum=0.9)` (PyTorch
momentum is the weight of the new batch statistics, flax momentum that of the old average)."""


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU, 3x3 conv, BN-ReLU, 3x3 conv (stride), all convs with
    bias, plus the shortcut of the raw input (identity, or a 1x1 conv with bias when the shape
    changes). Maps (B, H, W, C_in) to (B, H / strides, W / strides, features)."""

    features: int
    strides: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_init: str = "pytorch"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C_in) -> (B, H / strides, W / strides, features)."""
        in_features = x.shape[-1]
        wide_conv = functools.partial(
            conv, use_bias=True, conv_init=self.conv_init, dtype=self.dtype
        )
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
        out = wide_conv(self.features, 3, in_features=in_features, name="conv1")(out)
        out = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(out))
        out = wide_conv(self.features, 3, self.strides, in_features=self.features, name="conv2")(
            out
        )
        if self.strides != 1 or in_features != self.features:
            x = wide_conv(self.features, 1, self.strides, in_features=in_features, name="shortcut")(
                x
            )
        return out + x


class WideStem(nn.Module):
    """3x3 conv with bias, no normalisation: (B, H, W, C) -> (B, H, W, features)."""

    features: int
    conv_init: str = "pytorch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C) -> (B, H, W, features); `train` is unused (no BatchNorm here)."""
        del train
        return conv(
            self.features, 3, in_features=x.shape[-1], conv_init=self.conv_init,
            use_bias=True, dtype=self.dtype, name="conv",
        )(x)


class WideResNet(StagedClassifier):
    """Wide ResNet WRN-depth-widen_factor; the defaults are the official WRN-16-8.

    Attributes (besides num_classes, axis_name, dtype, conv_init of `StagedClassifier`):
      depth: 6n + 4 for n blocks per stage (16: n = 2; 10: n = 1, a tiny test variant).
      widen_factor: k; the stages have 16k, 32k, 64k channels.

    Stage outputs at an H x W input: "stem" (B, H, W, 16), "stage1" (B, H, W, 16k), "stage2"
    (B, H/2, W/2, 32k), "stage3" (B, H/4, W/4, 64k) after the final BN-ReLU (the last map).
    10,965,866 parameters for WRN-16-8 with 10 classes.
    """

    depth: int = 16
    widen_factor: int = 8

    def __post_init__(self) -> None:
        check_positive_int("depth", self.depth)
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(
                f"depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {self.depth}"
            )
        check_positive_int("widen_factor", self.widen_factor)
        super().__post_init__()

    @property
    def stage_names(self) -> tuple[str, ...]:
        """("input", "stem", "stage1", "stage2", "stage3")."""
        return stage_point_names(3)

    @property
    def stage_channels(self) -> dict[str, int]:
        """{"stem": 16, "stage1": 16k, "stage2": 32k, "stage3": 64k}."""
        widths = {"stem": STEM_WIDTH}
        for k in range(1, 4):
            widths[f"stage{k}"] = STEM_WIDTH * 2 ** (k - 1) * self.widen_factor
        return widths

    def build_stages(self) -> list[nn.Module]:
        """The stem and the three block stages, named as `stage_names[1:]`."""
        blocks_per_stage = (self.depth - 4) // 6
        stages = [WideStem(STEM_WIDTH, self.conv_init, self.dtype, name="stem")]
        for index in range(3):
            stages.append(
                Stage(
                    functools.partial(WideBlock, conv_init=self.conv_init),
                    blocks_per_stage,
                    STEM_WIDTH * 2**index * self.widen_factor,
                    strides=1 if index == 0 else 2,
                    final_bn_relu=index == 2,
                    final_bn_momentum=FINAL_BN_MOMENTUM,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{index + 1}",
                )
            )
        return stages
