"""The classifiers AlignMix trains, all with one interface (see `StagedClassifier.__call__`).

    model = build_model({"name": "preact_resnet18"}, num_classes=10)
    variables = model.init(key, images)                      # always the full model, an image
    logits, feats = model.apply(variables, images)           # feats["stem"], ..., ["pre_logits"]
    last, _ = model.apply(variables, images, stop_at=model.stage_names[-1])
    logits, _ = model.apply(variables, mixed_last, start_at=model.stage_names[-1])

`build_model` kwargs per name (besides num_classes, axis_name, dtype, which are its arguments).
The defaults are the official AlignMixup networks (github.com/shashankvkt/AlignMixup_CVPR22);
every deviation is a named option:
  "preact_resnet18": stage_sizes (default (2, 2, 2, 2)), base_width (64), shortcut ("official":
    identity blocks add relu(bn1(x)); "he2016": they add x), conv_init ("pytorch"; "he_fan_out").
  "wide_resnet": depth (16; 6n + 4), widen_factor (8), conv_init ("pytorch"; "he_fan_out").
  "resnet50": stage_sizes (default (3, 4, 6, 3)), base_width (64), conv_init ("he_fan_out";
    "pytorch").
conv_init "pytorch" is PyTorch's default for `nn.Conv2d` (kernel and bias U(+-1/sqrt(fan_in))),
"he_fan_out" torchvision's ResNet initialisation (kernel N(0, 2 / fan_out), bias 0); see
`CONV_INITS` and `SHORTCUTS`. BatchNorm is PyTorch's (running variance from the unbiased batch
variance, momentum 0.1, and 0.9 for WRN's final BatchNorm as in the official code).
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from alignmix_jax.models.common import CONV_INITS, StagedClassifier
from alignmix_jax.models.preact_resnet import SHORTCUTS, PreActResNet
from alignmix_jax.models.resnet import ResNet
from alignmix_jax.models.wide_resnet import WideResNet

__all__ = [
    "CONV_INITS",
    "MODEL_KWARGS",
    "SHORTCUTS",
    "PreActResNet",
    "ResNet",
    "StagedClassifier",
    "WideResNet",
    "build_model",
]

MODEL_CLASSES = {
    "preact_resnet18": PreActResNet,
    "wide_resnet": WideResNet,
    "resnet50": ResNet,
}

MODEL_KWARGS = {
    "preact_resnet18": ("stage_sizes", "base_width", "shortcut", "conv_init"),
    "wide_resnet": ("depth", "widen_factor", "conv_init"),
    "resnet50": ("stage_sizes", "base_width", "conv_init"),
}
"""The config keys (besides "name") each model accepts."""


BATCH_NORM_ALL_DEVICES = 0
BATCH_NORM_EACH_DEVICE = 1
BATCH_NORM_GROUPS = (BATCH_NORM_ALL_DEVICES, BATCH_NORM_EACH_DEVICE)


def build_model(
    model_config: Mapping[str, Any],
    num_classes: int,
    *,
    axis_name: str | None = None,
    dtype: Any = jnp.float32,
) -> StagedClassifier:
    """The model named by `model_config["name"]`, built with the config's other keys as kwargs.

    Args:
      model_config: ml_collections ConfigDict or dict, {"name": one of MODEL_KWARGS, **kwargs}
        with kwargs from MODEL_KWARGS[name] (lists are turned into tuples), and optionally
        "batch_norm_group", the devices per group BatchNorm statistics are computed over:
        `BATCH_NORM_ALL_DEVICES` (0, the default: synced over `axis_name`) or
        `BATCH_NORM_EACH_DEVICE` (1: each device alone, as PyTorch's `DataParallel`; the model
        then has no `axis_name`).
      num_classes: number of logits.
      axis_name: BatchNorm sync axis (e.g. "data" inside `jax.shard_map`), or None.
      dtype: compute dtype; parameters stay float32.

    Raises:
      ValueError: missing or unknown name, an unknown kwarg, or a bad value.
    """
    config = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    name = config.pop("name", None)
    batch_norm_group = config.pop("batch_norm_group", BATCH_NORM_ALL_DEVICES)
    if isinstance(batch_norm_group, bool) or batch_norm_group not in BATCH_NORM_GROUPS:
        raise ValueError(
            f"model_config.batch_norm_group must be {BATCH_NORM_ALL_DEVICES} (statistics synced "
            f"over all devices) or {BATCH_NORM_EACH_DEVICE} (each device alone, as DataParallel), "
            f"got {batch_norm_group!r}"
        )
    if batch_norm_group == BATCH_NORM_EACH_DEVICE:
        axis_name = None
    if name not in MODEL_CLASSES:
        raise ValueError(f"model_config.name must be one of {tuple(MODEL_CLASSES)}, got {name!r}")
    unknown = sorted(set(config) - set(MODEL_KWARGS[name]))
    if unknown:
        raise ValueError(
            f"model_config for {name!r} got unknown keys {unknown}; "
            f"allowed: {MODEL_KWARGS[name]} (num_classes, axis_name, dtype are arguments)"
        )
    kwargs = {key: tuple(val) if isinstance(val, list) else val for key, val in config.items()}
    return MODEL_CLASSES[name](num_classes=num_classes, axis_name=axis_name, dtype=dtype, **kwargs)
