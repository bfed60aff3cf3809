"""The on-device half of the input pipeline against the host transform it replaced."""

import io

import jax
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from alignmix_jax.data import augment, device_transform
from alignmix_jax.data.config import IMAGENET_MEAN, IMAGENET_STD

SIZE = 24
NORMALISATION = device_transform.Normalisation(IMAGENET_MEAN, IMAGENET_STD)


def _photo(rng, height, width, channels=3) -> np.ndarray:
    """A smooth random image with texture, (height, width, channels) uint8."""
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, channels), dtype=np.uint8)
    pil = Image.fromarray(coarse[..., 0] if channels == 1 else coarse)
    smooth = np.asarray(pil.resize((width, height), Image.BICUBIC), np.float64)
    smooth = smooth.reshape(height, width, channels)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_device_augmentation_matches_host_transform(channels):
    """Same drawn parameters -> the same image as `augment.imagenet_train_transform` (host,
    float32/float64 NumPy) to float32 rounding, for every jitter order and both flips."""
    rng = np.random.default_rng(0)
    batch = 48
    images = [_photo(rng, int(rng.integers(20, 60)), int(rng.integers(20, 60)), channels)
              for _ in range(batch)]
    params = augment.draw_params(rng, "imagenet", batch, SIZE)
    rows = [{key: value[k] for key, value in params.items()} for k in range(batch)]
    assert len({tuple(order) for order in params["jitter_order"]}) == 6
    assert 0 < params["flip"].sum() < batch
    expected = np.stack([augment.imagenet_train_transform(im, row, SIZE)
                         for im, row in zip(images, rows, strict=True)])
    cropped = np.stack([augment.imagenet_crop_resize(im, row, SIZE)
                        for im, row in zip(images, rows, strict=True)])
    assert cropped.dtype == np.uint8 and cropped.shape == (batch, SIZE, SIZE, channels)
    packed = device_transform.pack_params(params)
    unit = jax.jit(device_transform.augment_unit)(cropped.astype(np.float32) / 255, packed)
    np.testing.assert_allclose(np.asarray(unit), expected, rtol=0, atol=3e-6)
    # Normalised: (unit - mean) / std.
    mean, std = np.asarray(IMAGENET_MEAN[:channels]), np.asarray(IMAGENET_STD[:channels])
    normalisation = device_transform.Normalisation(tuple(mean), tuple(std))
    model_input = jax.jit(device_transform.model_input, static_argnums=1)(
        {"image": cropped, "augment": packed}, normalisation)
    np.testing.assert_allclose(np.asarray(model_input), (expected - mean) / std, atol=2e-5)


def test_model_input_is_deterministic_and_normalises_plain_batches():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    params = device_transform.pack_params(augment.draw_params(rng, "imagenet", 4, 8))
    step = jax.jit(device_transform.model_input, static_argnums=1)
    first = np.asarray(step({"image": images, "augment": params}, NORMALISATION))
    again = np.asarray(step({"image": images, "augment": params}, NORMALISATION))
    np.testing.assert_array_equal(first, again)
    plain = np.asarray(step({"image": images}, NORMALISATION))
    expected = (images / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(plain, expected, atol=1e-5)
    # bitwise what the host pipelines computed before, whatever the compiler fuses
    std = np.asarray(IMAGENET_STD, np.float32)
    host = images.astype(np.float32)
    host *= np.float32(1.0 / 255.0) / std
    host += -np.asarray(IMAGENET_MEAN, np.float32) / std
    np.testing.assert_array_equal(plain, host)


def test_model_input_rejects_float_images_and_bad_parameters():
    floats = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=r"batch\['image'\]: expected uint8"):
        device_transform.model_input({"image": floats}, NORMALISATION)
    uint8 = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"batch\['image'\]: without a normalisation"):
        device_transform.model_input({"image": uint8}, None)
    with pytest.raises(ValueError, match=r"batch\['image'\]: 3 channels"):
        grey = device_transform.Normalisation((0.5,), (0.2,))
        device_transform.model_input({"image": uint8}, grey)
    with pytest.raises(ValueError, match=r"batch\['augment'\]: expected float32 \(2, 10\)"):
        device_transform.model_input({"image": uint8, "augment": np.zeros((2, 7))}, NORMALISATION)
    assert device_transform.model_input({"image": floats}, None) is floats


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_reduced_size_decoding_keeps_the_crop(monkeypatch):
    """`decode_crop_resize` decodes at reduced size only where the crop keeps >= image_size
    pixels a side, and gives the full-size crop's picture to within JPEG/filter differences."""
    rng = np.random.default_rng(2)
    photo = _photo(rng, 480, 640)
    encoded = _jpeg(photo)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *a: drafts.append(a) or draft(self, *a))
    big = {"scale": np.full(10, 0.9), "log_ratio": np.zeros(10), "position": np.full((10, 2), 0.5)}
    small = {**big, "scale": np.full(10, 0.05)}
    for params in (big, small):
        reduced = augment.decode_crop_resize(encoded, params, 64, 3)
        full = augment.imagenet_crop_resize(decoded, params, 64)
        assert reduced.shape == full.shape == (64, 64, 3) and reduced.dtype == np.uint8
        difference = np.abs(reduced.astype(float) - full).mean()
        assert difference < 6.0, difference
    assert drafts == [("RGB", (160, 120))]  # the 0.9 crop (499 x 499) at 1/4 size
    # keeps >= 64 a side; the 0.05 crop (118 x 118) is decoded at full size
    small_exact = augment.decode_crop_resize(encoded, small, 64, 3)
    np.testing.assert_array_equal(small_exact, augment.imagenet_crop_resize(decoded, small, 64))
