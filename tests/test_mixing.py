"""Input mixing and label mixing (alignmix_jax.mixing)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from alignmix_jax import (
    cutmix,
    mix_labels,
    mixed_cross_entropy,
    mixup,
    saliencymix,
    sample_lam,
    spectral_residual_saliency,
)


@pytest.fixture(scope="module")
def images():
    """Images `(B=4, 16, 16, 3)` and partners."""
    key_x, key_p = jax.random.split(jax.random.key(0))
    return jax.random.uniform(key_x, (4, 16, 16, 3)), jax.random.uniform(key_p, (4, 16, 16, 3))


def test_sample_lam_is_beta_distributed():
    lam = sample_lam(jax.random.key(1), 2.0, shape=(20000,))
    assert lam.dtype == jnp.float32 and lam.shape == (20000,)
    assert float(lam.min()) > 0 and float(lam.max()) < 1
    # Beta(2, 2): mean 1/2, variance 1/20
    assert abs(float(lam.mean()) - 0.5) < 0.01
    assert abs(float(lam.var()) - 0.05) < 0.005
    np.testing.assert_array_equal(sample_lam(jax.random.key(1), 2.0, shape=(20000,)), lam)
    assert sample_lam(jax.random.key(2), 1.0).shape == ()


def test_mixup_weights_any_shape_and_per_example_lam(images):
    x, partner = images
    np.testing.assert_allclose(mixup(x, partner, 0.25), 0.25 * x + 0.75 * partner, atol=1e-6)
    lam = jnp.array([0.0, 0.5, 1.0, 0.2])
    mixed = mixup(x, partner, lam)
    np.testing.assert_allclose(mixed[0], partner[0], atol=1e-6)
    np.testing.assert_allclose(mixed[2], x[2], atol=1e-6)
    np.testing.assert_allclose(mixed[3], 0.2 * x[3] + 0.8 * partner[3], atol=1e-6)
    vectors = mixup(x.reshape(4, -1), partner.reshape(4, -1), lam)
    np.testing.assert_allclose(vectors.reshape(x.shape), mixed, atol=1e-6)
    half = mixup(x.astype(jnp.bfloat16), partner.astype(jnp.bfloat16), 0.5)
    assert half.dtype == jnp.bfloat16


def test_cutmix_pastes_a_partner_box_and_corrects_lam():
    x, partner = jnp.zeros((6, 12, 10, 2)), jnp.ones((6, 12, 10, 2))
    lam = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    mixed, lam_corrected = cutmix(jax.random.key(3), x, partner, lam)
    assert mixed.shape == x.shape and lam_corrected.shape == (6,)
    from_partner = np.asarray(mixed[..., 0])
    np.testing.assert_allclose(lam_corrected, 1 - from_partner.mean(axis=(1, 2)), atol=1e-6)
    for box in from_partner:
        rows, cols = np.nonzero(box)
        if rows.size:  # the pasted pixels form one full rectangle
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert from_partner[-1].sum() == 0 and float(lam_corrected[-1]) == 1.0
    # box sides are at most 2 * (floor(side * sqrt(1 - lam)) // 2)
    heights = (from_partner.sum(axis=2) > 0).sum(axis=1)
    widths = (from_partner.sum(axis=1) > 0).sum(axis=1)
    cut = np.sqrt(1 - np.asarray(lam))
    assert np.all(heights <= 2 * (np.floor(12 * cut) // 2))
    assert np.all(widths <= 2 * (np.floor(10 * cut) // 2))
    assert not np.array_equal(cutmix(jax.random.key(4), x, partner, lam)[0], mixed)
    jitted, jitted_lam = jax.jit(cutmix)(jax.random.key(3), x, partner, lam)
    np.testing.assert_array_equal(jitted, mixed)
    np.testing.assert_allclose(jitted_lam, lam_corrected)


def test_spectral_residual_matches_a_numpy_reference(images):
    x = np.asarray(images[0], np.float64)
    gray = x @ np.array([0.299, 0.587, 0.114])
    spectrum = np.fft.fft2(gray)
    log_amplitude = np.log(np.abs(spectrum))
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, size=(1, 3, 3), mode="nearest")
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    gauss = np.exp(-(np.arange(-2, 3) ** 2) / (2 * 8.0**2))
    kernel = np.outer(gauss, gauss) / gauss.sum() ** 2
    saliency = ndimage.correlate(saliency, kernel[None], mode="nearest")
    saliency /= saliency.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(spectral_residual_saliency(images[0]), saliency, atol=1e-4)


def test_saliencymix_centres_the_box_on_the_partners_salient_point():
    x = -jnp.ones((2, 16, 16, 3))
    partner = np.zeros((2, 16, 16, 3), np.float32)
    partner[0, 3, 12] = 1.0  # a single bright pixel: the most salient point
    partner[1, 9, 6] = 1.0
    lam = jnp.array([0.75, 0.5])
    mixed, lam_corrected = saliencymix(jax.random.key(5), x, jnp.asarray(partner), lam)
    pasted = np.asarray(mixed[..., 0] != -1)
    # lam 0.75: half-side floor(16 * 0.5) // 2 = 4 around (3, 12), clipped at the top
    expected_0 = np.zeros((16, 16), bool)
    expected_0[0:7, 8:16] = True
    # lam 0.5: half-side floor(16 * 0.707) // 2 = 5 around (9, 6)
    expected_1 = np.zeros((16, 16), bool)
    expected_1[4:14, 1:11] = True
    np.testing.assert_array_equal(pasted[0], expected_0)
    np.testing.assert_array_equal(pasted[1], expected_1)
    np.testing.assert_allclose(lam_corrected, [1 - 56 / 256, 1 - 100 / 256], atol=1e-6)
    np.testing.assert_array_equal(mixed[0, 3, 12], partner[0, 3, 12])


def test_saliencymix_breaks_ties_with_the_key():
    x, flat = jnp.zeros((1, 16, 16, 1)), jnp.ones((1, 16, 16, 1))
    boxes = {
        np.asarray(saliencymix(jax.random.key(seed), x, flat, 0.9)[0]).tobytes()
        for seed in range(4)
    }
    assert len(boxes) > 1


def test_mix_labels_and_mixed_cross_entropy_agree():
    y, y_partner = jnp.array([0, 2, 1]), jnp.array([1, 2, 3])
    lam = jnp.array([0.3, 0.5, 1.0])
    targets = mix_labels(y, y_partner, lam, 4)
    expected = np.array([[0.3, 0.7, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(targets, expected, atol=1e-7)
    logits = jax.random.normal(jax.random.key(6), (3, 4))
    loss = mixed_cross_entropy(logits, y, y_partner, lam)
    reference = optax.softmax_cross_entropy(logits, targets).mean()
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    half = mixed_cross_entropy(logits.astype(jnp.bfloat16), y, y_partner, 0.5)
    assert half.dtype == jnp.float32 and np.isfinite(half)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, p: mixup(x, p[:2], 0.5), r"x and x_partner must have the same shape"),
        (lambda x, p: mixup(x, p, 1.2), r"lam must lie in \[0, 1\], got \[1.2"),
        (lambda x, p: mixup(x, p, jnp.full((3,), 0.5)), r"lam must be a scalar or .*\(4,\)"),
        (lambda x, p: cutmix(jax.random.key(0), x[0], p[0], 0.5), r"x must be images of shape"),
        (lambda x, p: saliencymix(jax.random.key(0), x, p, -0.5), r"lam must lie in \[0, 1\]"),
        (lambda x, p: sample_lam(jax.random.key(0), 0.0), r"alpha must be a finite number > 0"),
        (lambda x, p: mix_labels(jnp.array([0]), jnp.array([1]), 0.5, 0), r"num_classes must"),
        (lambda x, p: mix_labels(jnp.array([0.5]), jnp.array([1]), 0.5, 3), r"y must hold integer"),
        (lambda x, p: mix_labels(jnp.array([0]), jnp.array([1, 2]), 0.5, 3), r"y_partner must"),
        (lambda x, p: mixed_cross_entropy(jnp.ones(3), jnp.array([0]), 0, 0.5), r"logits must"),
    ],
)
def test_bad_input_raises_a_clear_value_error(images, call, message):
    with pytest.raises(ValueError, match=message):
        call(*images)


def test_label_smoothing_spreads_part_of_the_mixed_target_over_all_classes():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    y, y_partner = jnp.array([0, 1, 2, 3, 4, 0]), jnp.array([1, 1, 0, 4, 2, 3])
    lam = jnp.asarray(rng.uniform(size=6), jnp.float32)
    smoothing = 0.2
    # By hand: the target is (1 - s) (lam onehot(y) + (1 - lam) onehot(y')) + s / K.
    target = (1 - smoothing) * np.asarray(mix_labels(y, y_partner, lam, 5)) + smoothing / 5
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = -(target * log_probs).sum(axis=1).mean()
    loss = mixed_cross_entropy(logits, y, y_partner, lam, label_smoothing=smoothing)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(loss) != pytest.approx(float(mixed_cross_entropy(logits, y, y_partner, lam)))
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        mixed_cross_entropy(logits, y, y_partner, lam, label_smoothing=1.0)
