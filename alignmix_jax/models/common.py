"""Pieces shared by every model: PyTorch's initialisers and BatchNorm, the linear head, a stage of
residual blocks, and `StagedClassifier`, the base class that runs any slice of stages.

Every model is a sequence of named stages, `stage_names = ("input", "stem", "stage1", ...,
"stageK")`. Stage k maps the output of stage k-1 to its own output; "input" is the image. After
the last stage comes global average pooling ("pre_logits") and the linear head. A forward pass can
start at any named point (x is then that point's output) and stop at any later one, so a trainer can
mix images, any intermediate map or the last map without computing anything twice.

The official AlignMixup networks are PyTorch modules; the layers here reproduce PyTorch's semantics
exactly (tested against the official code with ported weights, `tests/test_models.py`): convs pad
symmetrically, `BatchNorm` keeps PyTorch's running averages (unbiased variance), and the
initialisers are PyTorch's (`conv_init="pytorch"`) or torchvision's ResNet ones
(`conv_init="he_fan_out"`).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

LAST_STAGE = "last"  # in a config: the last feature map, whatever the model
BN_MOMENTUM = 0.9
"""flax momentum (the weight of the old running average) of PyTorch's default
`BatchNorm2d(momentum=0.1)`; in general flax momentum = 1 - PyTorch momentum."""
BN_EPSILON = 1e-5

CONV_INITS = ("pytorch", "he_fan_out")
"""Values of the models' `conv_init`. "pytorch": PyTorch's default for `nn.Conv2d`, kernel and bias
~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels * kh * kw (what the official CIFAR
networks use). "he_fan_out": kernel ~ N(0, 2 / fan_out), fan_out = out_channels * kh * kw, bias 0
(torchvision's ResNet and the official ImageNet ResNet-50)."""


def symmetric_uniform(bound: float) -> Callable[..., Array]:
    """Initializer drawing every entry from uniform(-bound, bound), for any shape."""

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_conv_init(conv_init: Any) -> None:
    """Raise ValueError unless `conv_init` is one of `CONV_INITS`."""
    if conv_init not in CONV_INITS:
        raise ValueError(f"conv_init must be one of {CONV_INITS}, got {conv_init!r}")


def conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    in_features: int,
    conv_init: str,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A square conv as PyTorch's `nn.Conv2d(in_features, features, kernel_size, strides,
    padding=(kernel_size - 1) // 2)`, initialised as `conv_init` says (see `CONV_INITS`).
    Maps (B, H, W, in_features) to (B, ceil(H / strides), ceil(W / strides), features) for odd
    kernel sizes. Raises ValueError for a `conv_init` not in `CONV_INITS`."""
    check_conv_init(conv_init)
    pad = (kernel_size - 1) // 2
    if conv_init == "pytorch":
        kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        bias_init = symmetric_uniform(1 / math.sqrt(in_features * kernel_size**2))
    else:
        kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        bias_init = nn.initializers.zeros
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        name=name,
    )


class BatchNorm(nn.Module):
    """PyTorch's `BatchNorm2d` over the last axis: (..., C) -> (..., C).

    Train mode normalises with the batch mean and biased variance (synced over `axis_name` when
    given) and moves the running averages towards the batch mean and the *unbiased* batch
    variance (n / (n - 1) times the biased one, n the values per channel over all devices), as
    PyTorch does; flax's `nn.BatchNorm` would store the biased one. Eval mode normalises with the
    running averages. Variables: params "scale" (1) and "bias" (0), batch_stats "mean" (0) and
    "var" (1), all float32; statistics are computed in float32 whatever the compute dtype.

    Attributes:
      use_running_average: eval mode when True.
      momentum: flax momentum, the weight of the old running average (PyTorch momentum 0.1 is
        flax momentum 0.9).
      epsilon: added to the variance.
      axis_name: mapped axis to average the statistics over (e.g. "data" in `jax.shard_map`).
      dtype: dtype of the output.
    """

    use_running_average: bool
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(..., C) -> (..., C) in `dtype`."""
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean, var = self._batch_statistics(x, running_mean, running_var)
        return ((x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(self.dtype)

    def _batch_statistics(
        self, x: Array, running_mean: nn.Variable, running_var: nn.Variable
    ) -> tuple[Array, Array]:
        """Mean and biased variance (C,) of float32 `x` over all axes but the last (and over
        `axis_name`, except at init); updates the running averages unless initialising."""
        reduce_axes = tuple(range(x.ndim - 1))
        moments = jnp.stack([x.mean(reduce_axes), jnp.square(x).mean(reduce_axes)])
        count = math.prod(x.shape[:-1])
        if self.axis_name is not None and not self.is_initializing():
            moments = jax.lax.pmean(moments, self.axis_name)
            count *= jax.lax.axis_size(self.axis_name)
        mean = moments[0]
        var = jnp.maximum(moments[1] - jnp.square(mean), 0.0)
        if not self.is_initializing():
            if count < 2:
                raise ValueError(
                    "BatchNorm in train mode needs more than one value per channel (batch x "
                    f"height x width over all devices), got input shape {x.shape}"
                )
            unbiased_var = var * (count / (count - 1))
            weight = self.momentum
            running_mean.value = weight * running_mean.value + (1 - weight) * mean
            running_var.value = weight * running_var.value + (1 - weight) * unbiased_var
        return mean, var


def batch_norm(
    train: bool,
    axis_name: str | None,
    dtype: Any,
    name: str | None = None,
    momentum: float = BN_MOMENTUM,
) -> BatchNorm:
    """`BatchNorm` with PyTorch's defaults (running-average momentum 0.1, i.e. flax `momentum`
    0.9; epsilon 1e-5; scale 1, bias 0), batch statistics when `train`, running averages
    otherwise. Shape-preserving, (..., C)."""
    return BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        axis_name=axis_name,
        dtype=dtype,
        name=name,
    )


def torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    """Linear layer (B, fan_in) -> (B, features) initialised as PyTorch's `nn.Linear`: kernel and
    bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    init = symmetric_uniform(1.0 / fan_in**0.5)
    return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype, name=name)


class Stage(nn.Module):
    """`num_blocks` residual blocks of class `block`, the first one with stride `strides`, then
    optionally a final BatchNorm-ReLU (flax momentum `final_bn_momentum`). Blocks are modules
    built as `block(features=, strides=, axis_name=, dtype=)` (other options bound beforehand,
    e.g. with `functools.partial`) and called as `block(x, train)`.
    Maps (B, H, W, C_in) to (B, H / strides, W / strides, C_out), C_out set by the block."""

    block: Callable[..., nn.Module]
    num_blocks: int
    features: int
    strides: int
    final_bn_relu: bool = False
    final_bn_momentum: float = BN_MOMENTUM
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """(B, H, W, C_in) -> (B, H / strides, W / strides, C_out)."""
        for index in range(self.num_blocks):
            x = self.block(
                features=self.features,
                strides=self.strides if index == 0 else 1,
                axis_name=self.axis_name,
                dtype=self.dtype,
                name=f"block{index + 1}",
            )(x, train)
        if self.final_bn_relu:
            final_bn = batch_norm(
                train, self.axis_name, self.dtype, name="final_bn", momentum=self.final_bn_momentum
            )
            x = nn.relu(final_bn(x))
        return x


def stage_point_names(num_stages: int) -> tuple[str, ...]:
    """("input", "stem", "stage1", ..., "stage{num_stages}")."""
    return ("input", "stem") + tuple(f"stage{k}" for k in range(1, num_stages + 1))


def check_positive_int(name: str, value: Any) -> None:
    """Raise ValueError unless `value` is a positive Python int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_stage_sizes(stage_sizes: Any) -> None:
    """Raise ValueError unless `stage_sizes` is a non-empty sequence of positive ints."""
    if not isinstance(stage_sizes, Sequence) or isinstance(stage_sizes, str) or not stage_sizes:
        raise ValueError(
            f"stage_sizes must be a non-empty sequence of positive ints, got {stage_sizes!r}"
        )
    for size in stage_sizes:
        check_positive_int("each entry of stage_sizes", size)


class StagedClassifier(nn.Module):
    """Base class of the models: a stem, stages, global average pooling and a linear head, any
    slice of which can be run. Subclasses define `stage_names`, `stage_channels` and
    `build_stages()`.

    Attributes:
      num_classes: number of logits.
      axis_name: mapped axis over which BatchNorm statistics are averaged (e.g. "data" inside
        `jax.shard_map`), or None for per-device statistics.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters and BatchNorm statistics stay float32
        and logits are returned in float32.
      conv_init: initialisation of the conv kernels and biases, one of `CONV_INITS`. The linear
        head is always PyTorch's `nn.Linear` default and BatchNorm scale 1, bias 0.
    """

    num_classes: int = 10
    axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_init: str = "pytorch"

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        check_conv_init(self.conv_init)
        super().__post_init__()

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The points where features can be mixed: ("input", "stem", "stage1", ..., "stageK")."""
        raise NotImplementedError

    def resolve_stage(self, stage: str) -> str:
        """The stage a config names: `LAST_STAGE` ("last") is the last feature map."""
        return self.stage_names[-1] if stage == LAST_STAGE else stage

    @property
    def stage_channels(self) -> dict[str, int]:
        """Channels of the output of each stage, {"stem": C0, "stage1": C1, ...}."""
        raise NotImplementedError

    def build_stages(self) -> list[nn.Module]:
        """The stage modules in order (named as `stage_names[1:]`), each called as `m(h, train)`."""
        raise NotImplementedError

    def _slice_indices(self, start_at: str, stop_at: str | None) -> tuple[int, int]:
        """Positions of `start_at` and `stop_at` in `stage_names` (stop_at=None: one past the
        end, meaning "through the head")."""
        names = self.stage_names
        if start_at not in names:
            raise ValueError(f"start_at must be one of {names}, got {start_at!r}")
        if stop_at is not None and stop_at not in names:
            raise ValueError(f"stop_at must be None or one of {names}, got {stop_at!r}")
        start = names.index(start_at)
        stop = len(names) if stop_at is None else names.index(stop_at)
        if start >= stop:
            raise ValueError(
                f"start_at must come before stop_at in {names}, "
                f"got start_at={start_at!r}, stop_at={stop_at!r}"
            )
        return start, stop

    def _check_input(self, x: Array, start_at: str) -> None:
        """Raise ValueError unless `x` is a float NHWC array fit to enter at `start_at`."""
        if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"x must be a float array (B, H, W, C), got dtype {x.dtype} shape {x.shape}"
            )
        if start_at != "input":
            channels = self.stage_channels[start_at]
            if x.shape[-1] != channels:
                raise ValueError(
                    f"x for start_at={start_at!r} must have {channels} channels "
                    f"(B, H, W, {channels}), got shape {x.shape}"
                )

    @nn.compact
    def __call__(
        self,
        x: Array,
        train: bool = False,
        start_at: str = "input",
        stop_at: str | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Run the stages after `start_at` up to and including `stop_at` (the head when None).

        Args:
          x: (B, H, W, C) float. With start_at="input" the image (any number of channels C);
            otherwise the output of stage `start_at`, (B, h, w, stage_channels[start_at]).
          train: batch statistics in BatchNorm (and, with mutable=["batch_stats"], their update)
            when True; running averages when False.
          start_at: a name in `stage_names`: where x enters.
          stop_at: None (run through the head) or a name in `stage_names` after `start_at`.

        Returns:
          stop_at=None: (logits (B, num_classes) float32, intermediates) with intermediates the
            outputs of the stages after `start_at`, {"stage_k": (B, h_k, w_k, C_k), ...,
            "pre_logits": (B, C_K)} (full forward: "stem", "stage1", ..., "stageK", "pre_logits").
          stop_at=name: (output of stage `name` (B, h, w, C), intermediates of the stages after
            `start_at` up to and including `name`).
          The intermediates of `stop_at=k` and of `start_at=k` together are those of the full
          forward, and chaining the two equals it.

        Raises:
          ValueError: unknown `start_at`/`stop_at`, `start_at` not before `stop_at`, or `x` not a
            float (B, H, W, C) array with the channels expected at `start_at`.
        """
        start, stop = self._slice_indices(start_at, stop_at)
        self._check_input(x, start_at)
        names = self.stage_names
        stages = self.build_stages()
        h = jnp.asarray(x, self.dtype)
        intermediates = {}
        for index in range(start + 1, min(stop, len(names) - 1) + 1):
            h = stages[index - 1](h, train)
            intermediates[names[index]] = h
        if stop_at is not None:
            return h, intermediates
        pooled = jnp.mean(h, axis=(1, 2))
        intermediates["pre_logits"] = pooled
        head = torch_linear(self.num_classes, pooled.shape[-1], self.dtype, name="head")
        logits = head(pooled)
        return logits.astype(jnp.float32), intermediates


class StagedResNet(StagedClassifier):
    """A `StagedClassifier` made of a stem and stages of residual blocks of widths
    base_width * 2**(k-1) and strides 1, 2, 2, ...; subclasses set `stem_module`, `block_module`
    and `expansion` (a block's output channels per unit of width).

    Attributes (besides those of `StagedClassifier`):
      stage_sizes: blocks per stage.
      base_width: channels of the stem and the width of the first stage.
    """

    stem_module: ClassVar[Callable[..., nn.Module]]
    block_module: ClassVar[Callable[..., nn.Module]]
    expansion: ClassVar[int] = 1
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    base_width: int = 64

    def __post_init__(self) -> None:
        check_stage_sizes(self.stage_sizes)
        check_positive_int("base_width", self.base_width)
        super().__post_init__()

    @property
    def stage_names(self) -> tuple[str, ...]:
        """("input", "stem", "stage1", ..., "stage{len(stage_sizes)}")."""
        return stage_point_names(len(self.stage_sizes))

    @property
    def stage_channels(self) -> dict[str, int]:
        """{"stem": base_width, "stage{k}": expansion * base_width * 2**(k-1)}."""
        widths = {"stem": self.base_width}
        for k in range(1, len(self.stage_sizes) + 1):
            widths[f"stage{k}"] = self.expansion * self.base_width * 2 ** (k - 1)
        return widths

    def block_options(self) -> dict[str, Any]:
        """Keyword arguments every block gets besides features, strides, axis_name, dtype."""
        return {"conv_init": self.conv_init}

    def build_stages(self) -> list[nn.Module]:
        """The stem and the block stages, named as `stage_names[1:]`."""
        stages = [
            self.stem_module(
                features=self.base_width,
                conv_init=self.conv_init,
                axis_name=self.axis_name,
                dtype=self.dtype,
                name="stem",
            )
        ]
        block = functools.partial(self.block_module, **self.block_options())
        for index, num_blocks in enumerate(self.stage_sizes):
            stages.append(
                Stage(
                    block,
                    num_blocks,
                    self.base_width * 2**index,
                    strides=1 if index == 0 else 2,
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    name=f"stage{index + 1}",
                )
            )
        return stages
