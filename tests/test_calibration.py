"""Calibration metrics against hand-computed values, and the reliability diagram's PNG size."""

import jax
import matplotlib.colors
import numpy as np
import pytest
from PIL import Image

from alignmix_jax.analysis import calibration

# Five predictions: two in bin 14 (0.9333, 1], two in bin 9 (0.6, 0.6667], one in bin 4.
CONFIDENCES = np.array([0.95, 0.97, 0.62, 0.65, 0.30], np.float32)
CORRECT = np.array([1, 0, 1, 1, 0], np.float32)
# Bin 14: conf 0.96, acc 0.5; bin 9: conf 0.635, acc 1.0; bin 4: conf 0.3, acc 0.0.
HAND_ECE = 0.4 * 0.46 + 0.4 * 0.365 + 0.2 * 0.3
HAND_OE = 0.4 * 0.96 * 0.46 + 0.2 * 0.3 * 0.3


def test_ece_and_oe_equal_hand_computed_values():
    stats = calibration.bin_statistics(CONFIDENCES, CORRECT)
    np.testing.assert_array_equal(np.nonzero(np.asarray(stats.counts))[0], [4, 9, 14])
    assert calibration.expected_calibration_error(stats) == pytest.approx(HAND_ECE, abs=1e-6)
    assert calibration.overconfidence_error(stats) == pytest.approx(HAND_OE, abs=1e-6)


def test_bin_edges_are_right_closed():
    stats = calibration.bin_statistics(np.array([0.0, 0.5, 1.0], np.float32), np.ones(3))
    np.testing.assert_array_equal(np.nonzero(np.asarray(stats.counts))[0], [0, 7, 14])


def test_mask_drops_padding_and_batches_add_up():
    padded_confidences = np.concatenate([CONFIDENCES, [0.99, 0.99]])
    padded_correct = np.concatenate([CORRECT, [0.0, 0.0]])
    mask = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)
    first = calibration.bin_statistics(padded_confidences[:3], padded_correct[:3], mask[:3])
    second = calibration.bin_statistics(padded_confidences[3:], padded_correct[3:], mask[3:])
    stats = jax.tree.map(np.add, first, second)
    assert calibration.expected_calibration_error(stats) == pytest.approx(HAND_ECE, abs=1e-6)
    assert float(np.asarray(stats.counts).sum()) == 5.0


def test_from_logits_uses_softmax_confidence_and_argmax():
    logits = np.log(np.array([[0.95, 0.05], [0.2, 0.8]], np.float32))
    stats = calibration.bin_statistics_from_logits(logits, np.array([0, 0]))
    # Bin 14 holds the right 0.95 prediction, bin 11 (0.7333, 0.8] the wrong 0.8 one.
    np.testing.assert_allclose(np.asarray(stats.confidence_sums)[[11, 14]], [0.8, 0.95], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(stats.correct_sums)[[11, 14]], [0.0, 1.0])
    assert calibration.overconfidence_error(stats) == pytest.approx(
        0.5 * 0.8 * 0.8 + 0.5 * 0.95 * 0.0, abs=1e-6)


def test_bad_input_is_rejected_with_named_argument():
    with pytest.raises(ValueError, match="num_bins"):
        calibration.bin_statistics(CONFIDENCES, CORRECT, num_bins=0)
    with pytest.raises(ValueError, match="correct"):
        calibration.bin_statistics(CONFIDENCES, CORRECT[:3])
    empty = calibration.bin_statistics(CONFIDENCES, CORRECT, np.zeros(5))
    with pytest.raises(ValueError, match="stats"):
        calibration.expected_calibration_error(empty)


def test_reliability_diagram_png_has_expected_size(tmp_path):
    stats = calibration.bin_statistics(CONFIDENCES, CORRECT)
    path = calibration.plot_reliability_diagram(stats, str(tmp_path / "rel.png"),
                                                figsize=(4.0, 3.0), dpi=50)
    with Image.open(path) as image:
        assert image.size == (200, 150)


def test_reliability_diagram_draws_only_the_colours_of_its_legend(tmp_path):
    """No translucent bar over another: every coloured pixel is one of the legend's colours (bin
    9 is underconfident, so a gap drawn between confidence and accuracy would cover its bar)."""
    stats = calibration.bin_statistics(CONFIDENCES, CORRECT)
    path = calibration.plot_reliability_diagram(stats, str(tmp_path / "rel.png"),
                                                figsize=(8.0, 6.0), dpi=50)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.int32).reshape(-1, 3)
    legend = np.array([matplotlib.colors.to_rgb(c) for c in calibration.RELIABILITY_COLOURS])
    distance_to_legend = np.abs(pixels[:, None, :] - 255 * legend[None]).max(-1).min(-1)
    grey = pixels.max(-1) - pixels.min(-1) < 12  # white, black, grey lines and text
    stray = (~grey & (distance_to_legend > 12)).reshape(image.size[1], image.size[0])
    # Antialiased edges only: no stray pixel amid stray neighbours (a blended area).
    inner = stray[1:-1, 1:-1] & stray[:-2, 1:-1] & stray[2:, 1:-1] & stray[1:-1, :-2]
    assert not (inner & stray[1:-1, 2:]).any()
