"""The on-device half of the input pipeline: uint8 batches -> float32 model input, inside jit.

Hosts send images as uint8 (a quarter of float32's bytes). For ImageNet-style training they also
send, per image, the flip, colour-jitter and lighting parameters they drew with
`augment.draw_params` (numpy, so determinism and resumption are the host's as before), packed by
`pack_params` as float32 rows under the batch key "augment". `model_input` applies them and the
normalisation in the arithmetic of `augment.imagenet_train_transform` (same parameters, same image
to float32 rounding) with elementwise operations only (no matmul, whose precision is
backend-dependent). The uint8 -> float32 maps (the normalisation of unaugmented batches, the [0, 1]
scale of augmented ones) are 256-entry tables computed in NumPy and looked up on the device: the
values do not depend on how a compiler fuses or contracts the step (one host or many, CPU or GPU),
and they equal what the host pipelines computed before.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from alignmix_jax.data import augment

AUGMENT_KEY = "augment"
# Columns of the packed parameters: flip (1), jitter factors (3), jitter order (3), lighting (3).
AUGMENT_WIDTH = 10


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """Per-channel `mean` and `std` on the [0, 1] scale that model input is normalised with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def pack_params(params: dict) -> np.ndarray:
    """`augment.draw_params(..., "imagenet", n, ...)` (or its rows) -> float32 (n, 10): flip,
    jitter (3), jitter_order (3), lighting (3). The crop parameters stay on the host."""
    columns = [
        np.asarray(params["flip"], np.float32)[:, None],
        np.asarray(params["jitter"], np.float32),
        np.asarray(params["jitter_order"], np.float32),
        np.asarray(params["lighting"], np.float32),
    ]
    return np.concatenate(columns, axis=1)


def _gray(images: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, C) -> (B, H, W) luma, as `augment._gray`, elementwise."""
    if images.shape[-1] == 1:
        return images[..., 0]
    weights = augment.GRAY_WEIGHTS
    return images[..., 0] * weights[0] + images[..., 1] * weights[1] + images[..., 2] * weights[2]


def color_jitter(images: jnp.ndarray, factors: jnp.ndarray, order: jnp.ndarray) -> jnp.ndarray:
    """Brightness, contrast and saturation of `images (B, H, W, C)` on [0, 1] by `factors (B, 3)`
    in the per-image `order (B, 3)` (a permutation of 0, 1, 2), each clipped to [0, 1]."""
    batch = images.shape[0]
    for position in range(3):
        which = order[:, position].astype(jnp.int32)
        factor = factors[jnp.arange(batch), which][:, None, None, None]
        gray = _gray(images)[..., None]
        mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
        brightness = images * factor
        contrast = (images - mean) * factor + mean
        saturation = (images - gray) * factor + gray
        which = which[:, None, None, None]
        images = jnp.where(which == 0, brightness, jnp.where(which == 1, contrast, saturation))
        images = jnp.clip(images, 0.0, 1.0)
    return images


def lighting(images: jnp.ndarray, alphas: jnp.ndarray) -> jnp.ndarray:
    """AlexNet PCA lighting: adds `PCA_EIGVEC @ (alphas * PCA_EIGVAL)` to each RGB image of
    `images (B, H, W, 3)`; `alphas (B, 3)`."""
    scaled = alphas * augment.PCA_EIGVAL  # (B, 3)
    offset = jnp.sum(augment.PCA_EIGVEC[None] * scaled[:, None, :], axis=-1)  # (B, 3)
    return images + offset[:, None, None, :]


def augment_unit(images: jnp.ndarray, packed: jnp.ndarray) -> jnp.ndarray:
    """Flip, colour jitter and (RGB only) lighting of `images (B, H, W, C)` float32 on [0, 1]
    by `packed (B, 10)` parameters (`pack_params`); returns (B, H, W, C) float32."""
    flip = packed[:, 0][:, None, None, None] > 0.5
    images = jnp.where(flip, images[:, :, ::-1], images)
    images = color_jitter(images, packed[:, 1:4], packed[:, 4:7])
    if images.shape[-1] == 3:
        images = lighting(images, packed[:, 7:10])
    return images


def _lookup(images: jnp.ndarray, table: np.ndarray) -> jnp.ndarray:
    """`table (C, 256)` float32 at each uint8 value of `images (B, H, W, C)`, per channel."""
    channels = np.arange(images.shape[-1])
    return jnp.asarray(table)[channels, images.astype(jnp.int32)]


def normalisation_table(normalisation: Normalisation) -> np.ndarray:
    """(C, 256) float32: `(v / 255 - mean) / std` of each uint8 value v per channel, rounded as
    the host pipelines did (v * (1/255 / std), then + (-mean / std), each in float32)."""
    std = np.asarray(normalisation.std, np.float32)[:, None]
    shift = (-np.asarray(normalisation.mean, np.float32) / std[:, 0])[:, None]
    values = np.broadcast_to(np.arange(256, dtype=np.float32), (len(std), 256)).copy()
    values *= np.float32(1.0 / 255.0) / std
    values += shift
    return values


def _check_batch(batch: dict, normalisation: Normalisation | None) -> None:
    images = batch["image"]
    if normalisation is None:
        if not jnp.issubdtype(images.dtype, jnp.floating) or AUGMENT_KEY in batch:
            raise ValueError(
                "batch['image']: without a normalisation the step expects float model input "
                f"(B, H, W, C) and no {AUGMENT_KEY!r} parameters, got dtype {images.dtype}"
            )
        return
    if images.dtype != jnp.uint8 or images.ndim != 4:
        raise ValueError(
            "batch['image']: expected uint8 images (B, H, W, C) on [0, 255] (the pipelines' "
            f"output), got {images.dtype} of shape {images.shape}"
        )
    if images.shape[-1] != len(normalisation.mean):
        raise ValueError(
            f"batch['image']: {images.shape[-1]} channels, but the normalisation has "
            f"{len(normalisation.mean)} (mean {normalisation.mean})"
        )
    packed = batch.get(AUGMENT_KEY)
    if packed is not None and packed.shape != (images.shape[0], AUGMENT_WIDTH):
        raise ValueError(
            f"batch[{AUGMENT_KEY!r}]: expected float32 ({images.shape[0]}, {AUGMENT_WIDTH}) "
            f"packed parameters (device_transform.pack_params), got shape {packed.shape}"
        )


def model_input(batch: dict, normalisation: Normalisation | None) -> jnp.ndarray:
    """The model's float32 input (B, H, W, C) from `batch` {"image": uint8 (B, H, W, C),
    optional "augment": float32 (B, 10)}: augmented (where "augment" is present) on the [0, 1]
    scale, then `(x - mean) / std`. With `normalisation` None, `batch["image"]` must already be
    float model input and is returned as it is (synthetic batches of tests and benchmarks)."""
    _check_batch(batch, normalisation)
    images = batch["image"]
    if normalisation is None:
        return images
    packed = batch.get(AUGMENT_KEY)
    if packed is None:
        return _lookup(images, normalisation_table(normalisation))
    unit_table = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    unit = _lookup(images, np.broadcast_to(unit_table, (images.shape[-1], 256)))
    unit = augment_unit(unit, packed.astype(jnp.float32))
    std = np.asarray(normalisation.std, np.float32)
    return unit * (np.float32(1.0) / std) + (-np.asarray(normalisation.mean, np.float32) / std)
