"""FGSM against its closed form on a linear model; PGD stays in the epsilon ball and [0, 1]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignmix_jax.analysis import attacks

MEAN = np.array([0.4, 0.5, 0.6], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def linear_problem():
    keys = jax.random.split(jax.random.key(0), 3)
    pixels = jax.random.uniform(keys[0], (6, 4, 4, 3))
    # Push some pixels onto the borders so clipping matters.
    pixels = pixels.at[:, 0].set(0.0).at[:, -1].set(1.0)
    images = (pixels - MEAN) / STD
    weights = jax.random.normal(keys[1], (4 * 4 * 3, NUM_CLASSES))
    bias = jax.random.normal(keys[2], (NUM_CLASSES,))
    labels = jnp.arange(6) % NUM_CLASSES

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ weights + bias

    return np.asarray(pixels), images, labels, np.asarray(weights), np.asarray(bias), logits_fn


def test_fgsm_equals_closed_form_on_linear_model(linear_problem):
    pixels, images, labels, weights, bias, logits_fn = linear_problem
    epsilon = 8 / 255
    adversarial = jax.jit(lambda x, y: attacks.fgsm(
        logits_fn, x, y, epsilon=epsilon, mean=MEAN, std=STD))(images, labels)
    # d CE / d x01 = (W (softmax - onehot)) / std, whose sign is that of W (softmax - onehot).
    logits = np.asarray(images).reshape(6, -1) @ weights + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    residual = probabilities - np.eye(NUM_CLASSES)[np.asarray(labels)]
    direction = np.sign(residual @ weights.T).reshape(pixels.shape)
    expected = (np.clip(pixels + epsilon * direction, 0.0, 1.0) - MEAN) / STD
    np.testing.assert_allclose(np.asarray(adversarial), expected, atol=1e-5)
    assert not np.allclose(np.asarray(adversarial), np.asarray(images))


def test_pgd_stays_in_ball_and_pixel_range_and_raises_loss(linear_problem):
    pixels, images, labels, _, _, logits_fn = linear_problem
    epsilon = 8 / 255
    run = jax.jit(lambda key, x, y: attacks.pgd(
        logits_fn, key, x, y, epsilon=epsilon, step_size=2 / 255, num_steps=7, mean=MEAN,
        std=STD))
    adversarial = run(jax.random.key(1), images, labels)
    adversarial_pixels = np.asarray(adversarial) * STD + MEAN
    assert np.all(np.abs(adversarial_pixels - pixels) <= epsilon + 1e-5)
    assert adversarial_pixels.min() >= -1e-6 and adversarial_pixels.max() <= 1 + 1e-6

    def loss(x):
        logits = logits_fn(x)
        return float(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).sum())

    assert loss(adversarial) > loss(images) + 1.0
    other_start = run(jax.random.key(2), images, labels)
    assert not np.allclose(np.asarray(other_start), np.asarray(adversarial))


def test_one_pgd_step_from_clean_start_is_fgsm(linear_problem):
    _, images, labels, _, _, logits_fn = linear_problem
    epsilon = 4 / 255
    single_step = attacks.pgd(logits_fn, jax.random.key(0), images, labels, epsilon=epsilon,
                              step_size=epsilon, num_steps=1, mean=MEAN, std=STD,
                              random_start=False)
    fgsm = attacks.fgsm(logits_fn, images, labels, epsilon=epsilon, mean=MEAN, std=STD)
    np.testing.assert_allclose(np.asarray(single_step), np.asarray(fgsm), atol=1e-6)


def test_bad_arguments_are_rejected(linear_problem):
    _, images, labels, _, _, logits_fn = linear_problem
    with pytest.raises(ValueError, match="epsilon"):
        attacks.fgsm(logits_fn, images, labels, epsilon=8.0, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="num_steps"):
        attacks.pgd(logits_fn, jax.random.key(0), images, labels, epsilon=0.1, step_size=0.01,
                    num_steps=0, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="mean and std"):
        attacks.fgsm(logits_fn, images, labels, epsilon=0.1, mean=MEAN[:2], std=STD[:2])


def test_attacks_of_radius_zero_leave_the_images_as_they_are(linear_problem):
    """Epsilon 0: FGSM and PGD (random start included) return the clean images, so the accuracy
    under attack is the clean accuracy."""
    _, images, labels, _, _, logits_fn = linear_problem
    fgsm = attacks.fgsm(logits_fn, images, labels, epsilon=0.0, mean=MEAN, std=STD)
    pgd = attacks.pgd(logits_fn, jax.random.key(3), images, labels, epsilon=0.0, step_size=2 / 255,
                      num_steps=3, mean=MEAN, std=STD)
    np.testing.assert_allclose(np.asarray(fgsm), np.asarray(images), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pgd), np.asarray(images), atol=1e-6)
