"""The mixup family: pure functions of arrays and explicit `jax.random` keys.

Every function takes the partner batch as an argument (`x_partner`, `y_partner`) rather than a
permutation, so they compose with any pairing; the trainer draws
`perm = jax.random.permutation(key, B)` and passes `x[perm]`, `y[perm]`. In every function
`lam` weighs the first argument's label (`y`) and `1 - lam` the partner's (`y_partner`).
"""

import functools

import jax
import jax.numpy as jnp

from alignmix_jax.core import _checks

# OpenCV's StaticSaliencySpectralResidual blurs the saliency map with a 5x5 Gaussian, sigma 8.
_BLUR_SIZE = 5
_BLUR_SIGMA = 8.0
# ITU-R BT.601 luma weights (OpenCV's RGB -> gray).
_LUMA_RGB = (0.299, 0.587, 0.114)


def _float_dtype(array: jax.Array):
    """The dtype mixed results come back in: the input's floating dtype, else float32."""
    return array.dtype if jnp.issubdtype(array.dtype, jnp.floating) else jnp.float32


def sample_lam(key, alpha, shape=()):
    """Mixing weights `lam ~ Beta(alpha, alpha)`, float32 of `shape` (e.g. `()` or `(B,)`)."""
    alpha = _checks.positive_scalar(alpha, "alpha")
    return _symmetric_beta(key, alpha, shape=tuple(shape))


@functools.partial(jax.jit, static_argnames="shape")
def _symmetric_beta(key, alpha, shape):
    return jax.random.beta(key, alpha, alpha, shape=shape, dtype=jnp.float32)


def _images_pair(x, x_partner):
    x = _checks.as_array(x, "x")
    x_partner = _checks.as_array(x_partner, "x_partner")
    _checks.same_shape(x, x_partner, "x", "x_partner")
    if x.ndim != 4:
        raise ValueError(f"x must be images of shape (B, H, W, C), got shape {x.shape}")
    return x, x_partner


def mixup(x, x_partner, lam):
    """Linear mixup `lam * x + (1 - lam) * x_partner`.

    Args:
      x: `(B, ...)` inputs or features of any shape.
      x_partner: partner batch, the same shape as `x`.
      lam: weight of `x` in [0, 1], a scalar or `(B,)`.

    Returns:
      `(B, ...)` mixed batch in `x`'s floating dtype (float32 for integer inputs), computed in
      float32.
    """
    x = _checks.as_array(x, "x")
    x_partner = _checks.as_array(x_partner, "x_partner")
    _checks.same_shape(x, x_partner, "x", "x_partner")
    _checks.min_rank(x, "x", 1, "(B, ...)")
    lam = _checks.per_example(_checks.lam_array(lam, x.shape[0]), x.ndim)
    mixed = lam * x.astype(jnp.float32) + (1.0 - lam) * x_partner.astype(jnp.float32)
    return mixed.astype(_float_dtype(x))


@jax.jit
def _box_paste(x, x_partner, lam, center_y, center_x):
    """Paste each partner's box (side `sqrt(1 - lam)` of the image, centred, clipped) into x.

    `x`, `x_partner`: `(B, H, W, C)`; `lam`: `(B,)`; centres: int32 `(B,)`. Returns the mixed
    batch and `(B,)` lam corrected to the fraction of x's pixels kept. The box follows the CutMix
    reference: half-sides `floor(side * sqrt(1 - lam)) // 2` on each side of the centre.
    """
    _, height, width, _ = x.shape
    cut_ratio = jnp.sqrt(1.0 - lam)
    half_h = jnp.floor(height * cut_ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(width * cut_ratio).astype(jnp.int32) // 2
    top = jnp.clip(center_y - half_h, 0, height)
    bottom = jnp.clip(center_y + half_h, 0, height)
    left = jnp.clip(center_x - half_w, 0, width)
    right = jnp.clip(center_x + half_w, 0, width)
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    mixed = jnp.where(inside, x_partner.astype(x.dtype), x)
    box_area = (bottom - top) * (right - left)
    lam_corrected = 1.0 - box_area.astype(jnp.float32) / (height * width)
    return mixed, lam_corrected


def _example_keys(key, batch: int, name: str = "key") -> jax.Array:
    """`(batch,)` keys, one per example: `key` itself when it already holds one key per example,
    else `batch` keys split from the single `key`. Per-example keys make an example's draw depend
    on its own key alone, so a batch split over devices draws what the whole batch would."""
    key = _checks.as_array(key, name)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise ValueError(f"{name} must be a jax.random.key, got dtype {key.dtype}")
    if key.shape == (batch,):
        return key
    if key.shape != ():
        raise ValueError(f"{name} must be one key or ({batch},) keys, got shape {key.shape}")
    return jax.random.split(key, batch)


def _pasting_inputs(key, x, x_partner, lam):
    """CutMix's and SaliencyMix's arguments validated: `((B,) keys, x, x_partner, lam (B,))`."""
    x, x_partner = _images_pair(x, x_partner)
    batch = x.shape[0]
    lam = jnp.broadcast_to(_checks.lam_array(lam, batch), (batch,))
    return _example_keys(key, batch), x, x_partner, lam


def cutmix(key, x, x_partner, lam):
    """CutMix: paste a box of each partner image into the image, one box per example.

    The box covers about `1 - lam` of the image: sides `sqrt(1 - lam)` of the image's, centre
    uniform over the pixels (from the example's key), clipped at the borders, as in the CutMix
    reference.

    Args:
      key: a `jax.random` key, or `(B,)` keys (one per example) for the box centres.
      x: `(B, H, W, C)` images that keep their pixels outside the box.
      x_partner: `(B, H, W, C)` partner images whose box is pasted into `x`.
      lam: target weight of `x` in [0, 1], a scalar or `(B,)`.

    Returns:
      `(mixed, lam_corrected)`: `(B, H, W, C)` in `x`'s dtype, and float32 `(B,)`, the fraction
      of each image's pixels that came from `x` (the label weight of `y`).
    """
    keys, x, x_partner, lam = _pasting_inputs(key, x, x_partner, lam)
    _, height, width, _ = x.shape

    def centre(example_key):
        key_y, key_x = jax.random.split(example_key)
        return jax.random.randint(key_y, (), 0, height), jax.random.randint(key_x, (), 0, width)

    center_y, center_x = jax.vmap(centre)(keys)
    return _box_paste(x, x_partner, lam, center_y, center_x)


def _filter_2d(maps, kernel):
    """Correlate `(B, H, W)` maps with a small odd `(k, k)` kernel, replicating the borders."""
    size = kernel.shape[0]
    pad = size // 2
    padded = jnp.pad(maps, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    height, width = maps.shape[1:]
    return sum(
        kernel[i, j] * padded[:, i : i + height, j : j + width]
        for i in range(size)
        for j in range(size)
    )


def spectral_residual_saliency(images):
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007), the detector SaliencyMix uses.

    On the grayscale image: log amplitude spectrum minus its 3x3 mean filter, back through the
    inverse FFT with the original phase, squared magnitude, a 5x5 Gaussian blur (sigma 8, as in
    OpenCV's `StaticSaliencySpectralResidual`), at the image's own resolution.

    Args:
      images: `(B, H, W, C)`; RGB (C = 3) uses BT.601 luma, other C the channel mean.

    Returns:
      `(B, H, W)` float32 saliency, each map scaled to a maximum of 1.
    """
    images = _checks.as_array(images, "images")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got shape {images.shape}")
    if min(images.shape[1:3]) < _BLUR_SIZE:
        raise ValueError(
            f"images must be at least {_BLUR_SIZE}x{_BLUR_SIZE} pixels, got {images.shape[1:3]}"
        )
    return _saliency_maps(images)


@jax.jit
def _saliency_maps(images):
    """`spectral_residual_saliency` on validated `(B, H, W, C)` images -> `(B, H, W)`."""
    pixels = images.astype(jnp.float32)
    if pixels.shape[-1] == 3:
        gray = pixels @ jnp.asarray(_LUMA_RGB, jnp.float32)
    else:
        gray = pixels.mean(axis=-1)
    spectrum = jnp.fft.fft2(gray)
    log_amplitude = jnp.log(jnp.abs(spectrum) + jnp.finfo(jnp.float32).tiny)
    residual = log_amplitude - _filter_2d(log_amplitude, jnp.full((3, 3), 1.0 / 9.0))
    # The maps are normalised at the end, so shifting the residual by its maximum (a constant
    # factor on the spectrum) changes nothing but keeps exp and the square from overflowing.
    residual = residual - residual.max(axis=(1, 2), keepdims=True)
    reconstructed = jnp.fft.ifft2(jnp.exp(residual + 1j * jnp.angle(spectrum)))
    saliency = jnp.abs(reconstructed) ** 2
    offsets = jnp.arange(_BLUR_SIZE, dtype=jnp.float32) - _BLUR_SIZE // 2
    gauss = jnp.exp(-(offsets**2) / (2.0 * _BLUR_SIGMA**2))
    gauss = gauss / gauss.sum()
    saliency = _filter_2d(saliency, jnp.outer(gauss, gauss))
    peak = saliency.max(axis=(1, 2), keepdims=True)
    return saliency / jnp.maximum(peak, jnp.finfo(jnp.float32).tiny)


def saliencymix(key, x, x_partner, lam):
    """SaliencyMix: paste a box around each partner's most salient point into the image.

    The box has CutMix's size for `lam`; its centre is the argmax of the partner's
    `spectral_residual_saliency`, ties broken uniformly at random with the example's key; clipped
    at the borders. As in the SaliencyMix reference, the partner's pixels are pasted into `x`.

    Args:
      key: a `jax.random` key, or `(B,)` keys (one per example) for breaking ties between equally
        salient points.
      x: `(B, H, W, C)` images that keep their pixels outside the box.
      x_partner: `(B, H, W, C)` partner images whose salient box is pasted into `x`.
      lam: target weight of `x` in [0, 1], a scalar or `(B,)`.

    Returns:
      `(mixed, lam_corrected)`: `(B, H, W, C)` in `x`'s dtype, and float32 `(B,)`, the fraction
      of each image's pixels that came from `x` (the label weight of `y`).
    """
    keys, x, x_partner, lam = _pasting_inputs(key, x, x_partner, lam)
    batch, _, width, _ = x.shape
    saliency = spectral_residual_saliency(x_partner).reshape(batch, -1)
    is_peak = saliency >= saliency.max(axis=1, keepdims=True)
    peak = jax.vmap(jax.random.categorical)(keys, jnp.where(is_peak, 0.0, -jnp.inf))
    return _box_paste(x, x_partner, lam, peak // width, peak % width)


def mix_labels(y, y_partner, lam, num_classes):
    """Soft targets `lam * onehot(y) + (1 - lam) * onehot(y_partner)`.

    Args:
      y: int `(B,)` class indices; y_partner: int `(B,)` partner class indices.
      lam: weight of `y` in [0, 1], a scalar or `(B,)`.
      num_classes: number of classes K (a Python int >= 1).

    Returns:
      float32 `(B, K)` whose rows sum to 1.
    """
    num_classes = _checks.static_int(num_classes, "num_classes", minimum=1)
    y = _checks.labels(y, "y")
    y_partner = _checks.labels(y_partner, "y_partner", batch_size=y.shape[0])
    lam = _checks.per_example(_checks.lam_array(lam, y.shape[0]), 2)
    one_hot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    one_hot_partner = jax.nn.one_hot(y_partner, num_classes, dtype=jnp.float32)
    return lam * one_hot + (1.0 - lam) * one_hot_partner


def mixed_cross_entropy(logits, y, y_partner, lam, label_smoothing=0.0):
    """Batch mean of `lam * CE(logits, y) + (1 - lam) * CE(logits, y_partner)`.

    Equal to the cross-entropy against `mix_labels(y, y_partner, lam, K)`. With label smoothing
    `s`, against `(1 - s) * mix_labels(...) + s / K` (the mixed target smoothed as timm does).

    Args:
      logits: `(B, K)` (any float dtype; computed in float32).
      y: int `(B,)` class indices; y_partner: int `(B,)` partner class indices.
      lam: weight of `y` in [0, 1], a scalar or `(B,)`.
      label_smoothing: `s` in [0, 1): the share of the target spread uniformly over the K classes.

    Returns:
      float32 scalar.
    """
    logits = _checks.as_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, K), got shape {logits.shape}")
    batch = logits.shape[0]
    y = _checks.labels(y, "y", batch_size=batch)
    y_partner = _checks.labels(y_partner, "y_partner", batch_size=batch)
    lam = _checks.lam_array(lam, batch)
    if not isinstance(label_smoothing, int | float) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
    nll_partner = -jnp.take_along_axis(log_probs, y_partner[:, None], axis=1)[:, 0]
    mixed = lam * nll + (1.0 - lam) * nll_partner
    if label_smoothing:
        mixed = (1.0 - label_smoothing) * mixed - label_smoothing * log_probs.mean(axis=-1)
    return jnp.mean(mixed)
