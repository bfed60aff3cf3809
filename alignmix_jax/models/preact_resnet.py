"""Pre-activation ResNet, CIFAR form, as in the AlignMixup reference (PreActResNet-18 by default).

3x3 stem conv (stride 1, no bias) -> BatchNorm -> ReLU; stages of pre-activation basic blocks with
widths base_width * 2**k and strides 1, 2, 2, ...; a 1x1 conv shortcut (no bias) where the shape
changes; no final BatchNorm-ReLU; global average pooling; linear head. At 32x32 input
PreActResNet-18's last map ("stage4") is (B, 4, 4, 512); at 64x64 it is (B, 8, 8, 512).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignmix_jax.models.common import (
    Stage,
    StagedClassifier,
    batch_norm,
    check_positive_int,
    check_stage_sizes,
    conv,
    stage_point_names,
)

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


class PreActResNet(StagedClassifier):
    """Pre-activation ResNet (CIFAR form); the defaults are PreActResNet-18.

    Attributes (besides num_classes, axis_name, dtype of `StagedClassifier`):
      stage_sizes: blocks per stage; (2, 2, 2, 2) is PreActResNet-18, (1, 1) a tiny test variant.
      base_width: channels of the stem and the first stage; stage k has base_width * 2**(k-1).

    Stage outputs at an H x W input: "stem" and "stage1" (B, H, W, base_width), "stage{k}"
    (B, H / 2**(k-1), W / 2**(k-1), base_width * 2**(k-1)); the last map is the last stage's output
    (no final BN-ReLU). 11,171,274 parameters for 10 classes, 11,217,444 for 100.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    base_width: int = 64

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        check_stage_sizes(self.stage_sizes)
        check_positive_int("base_width", self.base_width)
        super().__post_init__()

    @property
    def stage_names(self) -> tuple[str, ...]:
        """("input", "stem", "stage1", ..., "stage{len(stage_sizes)}")."""
        return stage_point_names(len(self.stage_sizes))

    @property
    def stage_channels(self) -> dict[str, int]:
        """{"stem": base_width, "stage{k}": base_width * 2**(k-1)}."""
        widths = {"stem": self.base_width}
        for k in range(1, len(self.stage_sizes) + 1):
            widths[f"stage{k}"] = self.base_width * 2 ** (k - 1)
        return widths

    def build_stages(self) -> list[nn.Module]:
        """The stem and the block stages, named as `stage_names[1:]`."""
        stages = [
            PreActStem(self.base_width, self.axis_name, self.dtype, name="stem"),
        ]
        for index, num_blocks in enumerate(self.stage_sizes):
            stages.append(
                Stage(
                    PreActBlock,
                    num_blocks,
                    self.base_width * 2**index,
                    strides=1 if index == 0 else 2,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{index + 1}",
                )
            )
        return stages


PreActResNet18 = PreActResNet
"""PreActResNet-18: `PreActResNet` with its default stage_sizes (2, 2, 2, 2) and base_width 64."""
