"""The mixing grid's rows on an identity encoder/decoder, and the sizes of both PNGs."""

import jax
import numpy as np
import pytest
from PIL import Image

from alignmix_jax import sinkhorn_plan
from alignmix_jax.analysis import pictures

HEIGHT, WIDTH, CHANNELS = 4, 4, 3
# Sinkhorn sharp enough to recover a permutation of well-separated positions.
OPTIONS = {"epsilon": 0.01, "num_iters": 200, "threshold": None, "scale_cost": 1.0}


def identity(x):
    return x


@pytest.fixture(scope="module")
def pair():
    """An image and the same image with its positions permuted."""
    image_a = jax.random.uniform(jax.random.key(0), (HEIGHT, WIDTH, CHANNELS)) * 3.0
    permutation = np.asarray(jax.random.permutation(jax.random.key(1), HEIGHT * WIDTH))
    flat = image_a.reshape(-1, CHANNELS)
    image_b = flat[permutation].reshape(HEIGHT, WIDTH, CHANNELS)
    return image_a, image_b


@pytest.fixture(scope="module")
def rows(pair):
    image_a, image_b = pair
    return np.asarray(jax.jit(lambda a, b: pictures.mixing_rows(
        identity, identity, a, b, mix_options=OPTIONS))(image_a, image_b))


def test_rows_mix_as_the_method_says(pair, rows):
    image_a, image_b = (np.asarray(image) for image in pair)
    assert rows.shape == (4, 5, HEIGHT, WIDTH, CHANNELS)
    for column, lam in enumerate(pictures.LAMS):
        np.testing.assert_allclose(rows[0, column], lam * image_a + (1 - lam) * image_b,
                                   atol=1e-5)
    # With an identity encoder and decoder, feature mixup is input mixup.
    np.testing.assert_allclose(rows[1], rows[0], atol=1e-5)
    # lam = 1 keeps A in direction 0, lam = 0 keeps B in direction 1.
    np.testing.assert_allclose(rows[2, -1], image_a, atol=1e-5)
    np.testing.assert_allclose(rows[3, 0], image_b, atol=1e-5)
    # B is A with its positions permuted: aligning B onto A's positions gives back A, and every
    # column of direction 0 is A (up to the plan's entropic blur).
    for column in range(5):
        np.testing.assert_allclose(rows[2, column], image_a, atol=5e-2)
        np.testing.assert_allclose(rows[3, column], image_b, atol=5e-2)


def test_mixing_grid_png_size_and_shape_check(rows, tmp_path):
    path = pictures.plot_mixing_grid(np.clip(rows / 3, 0, 1), str(tmp_path / "grid.png"),
                                      panel_inches=1.0, dpi=40)
    with Image.open(path) as image:
        assert image.size == (6 * 40, int(4.5 * 40))
    with pytest.raises(ValueError, match="rows"):
        pictures.plot_mixing_grid(rows[:3], str(tmp_path / "bad.png"))


def test_transport_plan_png_size_and_shape_check(pair, tmp_path):
    image_a, image_b = pair
    plan = sinkhorn_plan(image_a.reshape(1, -1, CHANNELS), image_b.reshape(1, -1, CHANNELS),
                         epsilon=0.01)[0]
    path = pictures.plot_transport_plan(np.asarray(image_a) / 3, np.asarray(image_b) / 3,
                                         np.asarray(plan), str(tmp_path / "plan.png"),
                                         feature_size=(HEIGHT, WIDTH), figsize=(6.0, 2.5), dpi=50)
    with Image.open(path) as image:
        assert image.size == (300, 125)
    with pytest.raises(ValueError, match="plan"):
        pictures.plot_transport_plan(np.asarray(image_a), np.asarray(image_b),
                                      np.asarray(plan)[:3], str(tmp_path / "bad.png"),
                                      feature_size=(HEIGHT, WIDTH))
