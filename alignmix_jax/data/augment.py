"""Augmentations in NumPy/PIL, driven by parameters drawn up front so every batch is reproducible.

Random parameters for a whole global batch are drawn from one `np.random.Generator` (see
`draw_params`); each host applies the rows of its own examples. The images a host produces are
therefore the same whatever the number of hosts.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# AlexNet PCA lighting on the [0, 1] RGB scale (eigenvalues and eigenvectors of ImageNet pixels).
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    np.float32,
)
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10
JITTER = 0.4
LIGHTING_STD = 0.1


def crop_padding(augment: str, image_size: int) -> int:
    """Zero padding of the random crop: 4 ("cifar", "tinyimagenet"), image_size // 8 ("digits")."""
    if augment in ("cifar", "tinyimagenet"):
        return 4
    if augment == "digits":
        return image_size // 8
    return 0


def draw_params(rng: np.random.Generator, augment: str, batch: int, image_size: int) -> dict:
    """Random parameters for `batch` examples: a dict of arrays with leading axis `batch`."""
    if augment == "none":
        return {}
    if augment == "imagenet":
        return {
            "scale": rng.uniform(*RRC_SCALE, size=(batch, RRC_TRIES)),
            "log_ratio": rng.uniform(*np.log(RRC_RATIO), size=(batch, RRC_TRIES)),
            "position": rng.uniform(size=(batch, RRC_TRIES, 2)),
            "flip": rng.uniform(size=batch) < 0.5,
            "jitter": rng.uniform(1.0 - JITTER, 1.0 + JITTER, size=(batch, 3)),
            "jitter_order": np.argsort(rng.uniform(size=(batch, 3)), axis=1),
            "lighting": rng.normal(0.0, LIGHTING_STD, size=(batch, 3)).astype(np.float32),
        }
    pad = crop_padding(augment, image_size)
    return {
        "offset": rng.integers(0, 2 * pad + 1, size=(batch, 2)),
        "flip": (rng.uniform(size=batch) < 0.5) & (augment != "digits"),
    }


def slice_params(params: dict, rows: slice) -> dict:
    """The parameters of the examples in `rows`."""
    return {key: value[rows] for key, value in params.items()}


def random_crop_flip(images: np.ndarray, offset: np.ndarray, flip: np.ndarray, pad: int):
    """Zero-pads `images (n, H, W, C)` by `pad`, crops back to (H, W) at `offset (n, 2)`, then
    mirrors the rows where `flip (n,)`; dtype kept. (One slice copy per image beats a fancy-index
    gather over the batch about 3x.)"""
    _, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for k, ((top, left), mirror) in enumerate(zip(offset, flip, strict=True)):
        window = padded[k, top : top + height, left : left + width]
        out[k] = window[:, ::-1] if mirror else window
    return out


def param_row(params: dict, row: int) -> dict:
    """The parameters of example `row` of `params` (a dict of arrays with leading axis n)."""
    return {key: value[row] for key, value in params.items()}


def decode(encoded: bytes, channels: int) -> np.ndarray:
    """An encoded image (JPEG, PNG, ...) -> (H, W, channels) uint8, channels 1 or 3."""
    with Image.open(io.BytesIO(encoded)) as pil_image:
        return _from_pil(pil_image.convert("L" if channels == 1 else "RGB"), channels)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil_image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(pil_image)
    return array[..., None] if channels == 1 else array


def _random_resized_box(height: int, width: int, params: dict) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of torchvision's RandomResizedCrop from pre-drawn uniforms."""
    area = height * width
    for scale, log_ratio, (u_top, u_left) in zip(
        params["scale"], params["log_ratio"], params["position"], strict=True
    ):
        ratio = math.exp(log_ratio)
        crop_w = round(math.sqrt(area * scale * ratio))
        crop_h = round(math.sqrt(area * scale / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(u_top * (height - crop_h + 1))
            left = int(u_left * (width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        crop_w, crop_h = width, round(width / RRC_RATIO[0])
    elif in_ratio > RRC_RATIO[1]:
        crop_h, crop_w = height, round(height * RRC_RATIO[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _gray(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:
        return image[..., 0]
    return image @ GRAY_WEIGHTS


def _color_jitter(image: np.ndarray, factors: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation (factors in [0.6, 1.4]) in `order`, clipped to [0, 1]."""
    for which in order:
        factor = factors[which]
        if which == 0:
            image = image * factor
        elif which == 1:
            mean = _gray(image).mean()
            image = (image - mean) * factor + mean
        else:
            gray = _gray(image)[..., None]
            image = (image - gray) * factor + gray
        image = np.clip(image, 0.0, 1.0)
    return image


def _crop_resize(pil_image: Image.Image, box: tuple[float, float, float, float], image_size: int):
    return pil_image.resize((image_size, image_size), Image.BILINEAR, box=box)


def imagenet_crop_resize(image: np.ndarray, params: dict, image_size: int) -> np.ndarray:
    """The RandomResizedCrop(image_size) of one `image (H, W, C) uint8` by `params` (one row of
    `draw_params(..., "imagenet", ...)`) -> (image_size, image_size, C) uint8. Flip, jitter and
    lighting are applied on the device (`device_transform`)."""
    height, width, channels = image.shape
    top, left, crop_h, crop_w = _random_resized_box(height, width, params)
    box = (left, top, left + crop_w, top + crop_h)
    return _from_pil(_crop_resize(_to_pil(image), box, image_size), channels)


def decode_crop_resize(encoded: bytes, params: dict, image_size: int, channels: int) -> np.ndarray:
    """`imagenet_crop_resize` of one JPEG (or any PIL-readable) image given as bytes, decoding at
    1/2, 1/4 or 1/8 size (JPEG DCT scaling, `Image.draft`) where the crop keeps at least
    `image_size` pixels per side at that size -> (image_size, image_size, channels) uint8."""
    with Image.open(io.BytesIO(encoded)) as pil_image:
        width, height = pil_image.size
        top, left, crop_h, crop_w = _random_resized_box(height, width, params)
        reduction = 1
        while reduction < 8 and min(crop_h, crop_w) >= 2 * reduction * image_size:
            reduction *= 2
        mode = "L" if channels == 1 else "RGB"
        if reduction > 1:
            pil_image.draft(mode, (-(-width // reduction), -(-height // reduction)))
        scale_x, scale_y = pil_image.size[0] / width, pil_image.size[1] / height
        box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
        converted = pil_image if pil_image.mode == mode else pil_image.convert(mode)
        return _from_pil(_crop_resize(converted, box, image_size), channels)


def imagenet_train_transform(image: np.ndarray, params: dict, image_size: int) -> np.ndarray:
    """RandomResizedCrop(image_size) + flip + colour jitter 0.4 + PCA lighting 0.1 of one
    `image (H, W, C) uint8` -> float32 (image_size, image_size, C) on the [0, 1] scale, all on
    the host: the reference that `device_transform.augment_unit` after `imagenet_crop_resize`
    reproduces to float32 rounding (tests/test_device_transform.py)."""
    channels = image.shape[-1]
    out = imagenet_crop_resize(image, params, image_size).astype(np.float32) * (1.0 / 255.0)
    if params["flip"]:
        out = out[:, ::-1]
    out = _color_jitter(out, params["jitter"], params["jitter_order"])
    if channels == 3:
        out = out + PCA_EIGVEC @ (params["lighting"] * PCA_EIGVAL)
    return out.astype(np.float32)


def resize_shorter_center_crop(
    image: np.ndarray, image_size: int, bbox: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Test-time preprocessing of one `image (H, W, C) uint8`: resize the shorter side to
    round(image_size * 256 / 224), centre-crop image_size. `bbox (4,)` (ymin, xmin, ymax, xmax)
    relative to the input is moved with the image and clipped to the crop. Returns
    ((image_size, image_size, C) uint8, bbox (4,) float32 relative to the output or None)."""
    height, width, channels = image.shape
    shorter = round(image_size * 256 / 224)
    scale = shorter / min(height, width)
    new_h, new_w = max(shorter, round(height * scale)), max(shorter, round(width * scale))
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    resized = _from_pil(_to_pil(image).resize((new_w, new_h), Image.BILINEAR), channels)
    cropped = resized[top : top + image_size, left : left + image_size]
    if bbox is None:
        return cropped, None
    ymin, xmin, ymax, xmax = np.asarray(bbox, np.float64)
    moved = np.array(
        [
            (ymin * new_h - top) / image_size,
            (xmin * new_w - left) / image_size,
            (ymax * new_h - top) / image_size,
            (xmax * new_w - left) / image_size,
        ]
    )
    return cropped, np.clip(moved, 0.0, 1.0).astype(np.float32)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """Antialiased bilinear resize of `images (n, H, W, C) uint8` -> (n, S, S, C), S=image_size."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    channels = images.shape[-1]
    return np.stack(
        [
            _from_pil(_to_pil(image).resize((image_size, image_size), Image.BILINEAR), channels)
            for image in images
        ]
    )


def bilinear_upsample(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, edge clamped) of float `images (n, h, w)` ->
    (n, image_size, image_size) float32, vectorised as two interpolation matrices."""

    def weights(source: int) -> np.ndarray:
        position = (np.arange(image_size) + 0.5) * (source / image_size) - 0.5
        position = np.clip(position, 0.0, source - 1)
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, source - 1)
        frac = position - lower
        matrix = np.zeros((image_size, source))
        matrix[np.arange(image_size), lower] += 1.0 - frac
        matrix[np.arange(image_size), upper] += frac
        return matrix

    rows, cols = weights(images.shape[1]), weights(images.shape[2])
    return np.einsum("ih,nhw,jw->nij", rows, images, cols).astype(np.float32)
