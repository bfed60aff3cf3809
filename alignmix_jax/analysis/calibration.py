"""Calibration metrics: expected calibration error, overconfidence error, reliability diagram.

Predictions are binned by confidence (the top softmax probability) into equal-width bins on (0, 1]:
bin ``b`` holds confidences in ``(b / num_bins, (b + 1) / num_bins]``. The per-bin sums
(`bin_statistics`) add up across batches and devices, so a whole test set is summarised by three
``(num_bins,)`` vectors, from which the errors follow (Guo et al. 2017; Thulasidasan et al. 2019):

    ECE = sum_b |B_b| / n * |acc_b - conf_b|
    OE  = sum_b |B_b| / n * conf_b * max(conf_b - acc_b, 0)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_NUM_BINS = 15


class BinStatistics(NamedTuple):
    """Per-bin sums over a set of predictions; each field has shape ``(num_bins,)``."""

    counts: jax.Array
    confidence_sums: jax.Array
    correct_sums: jax.Array


def _check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")


def bin_statistics(
    confidences: jax.Array,
    correct: jax.Array,
    mask: jax.Array | None = None,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
) -> BinStatistics:
    """Sums per confidence bin of (count, confidence, correctness); jit-friendly.

    Args:
      confidences: ``(n,)`` top-class probabilities in [0, 1].
      correct: ``(n,)`` bool or 0/1, whether the top class is the label.
      mask: optional ``(n,)`` weights (1 real example, 0 padding).
      num_bins: number of equal-width bins on (0, 1].

    Returns:
      `BinStatistics` of three float32 ``(num_bins,)`` vectors.
    """
    _check_num_bins(num_bins)
    confidences = jnp.asarray(confidences, jnp.float32)
    if confidences.ndim != 1:
        raise ValueError(f"confidences must have shape (n,), got {confidences.shape}")
    correct = jnp.asarray(correct, jnp.float32)
    if correct.shape != confidences.shape:
        raise ValueError(
            f"correct must have the shape of confidences {confidences.shape}, got {correct.shape}"
        )
    weights = jnp.ones_like(confidences) if mask is None else jnp.asarray(mask, jnp.float32)
    # Bin b covers (b/num_bins, (b+1)/num_bins]; a confidence of exactly 0 joins the first bin.
    bin_index = jnp.clip(jnp.ceil(confidences * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    one_hot = jax.nn.one_hot(bin_index, num_bins, dtype=jnp.float32) * weights[:, None]
    return BinStatistics(
        counts=one_hot.sum(axis=0),
        confidence_sums=one_hot.T @ confidences,
        correct_sums=one_hot.T @ correct,
    )


def bin_statistics_from_logits(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
) -> BinStatistics:
    """`bin_statistics` of a classifier's softmax: ``logits (n, K)``, ``labels (n,)`` int."""
    probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    correct = jnp.argmax(logits, axis=-1) == labels
    return bin_statistics(probabilities.max(axis=-1), correct, mask, num_bins=num_bins)


def _bin_means(stats: BinStatistics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.asarray(stats.counts, np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("stats must cover at least one example, got an empty set of predictions")
    safe = np.maximum(counts, 1.0)
    confidence = np.asarray(stats.confidence_sums, np.float64) / safe
    accuracy = np.asarray(stats.correct_sums, np.float64) / safe
    return counts / total, confidence, accuracy


def expected_calibration_error(stats: BinStatistics) -> float:
    """ECE = sum_b |B_b|/n * |acc_b - conf_b| from per-bin sums (each ``(num_bins,)``)."""
    weight, confidence, accuracy = _bin_means(stats)
    return float(np.sum(weight * np.abs(accuracy - confidence)))


def overconfidence_error(stats: BinStatistics) -> float:
    """OE = sum_b |B_b|/n * conf_b * max(conf_b - acc_b, 0) from per-bin sums."""
    weight, confidence, accuracy = _bin_means(stats)
    return float(np.sum(weight * confidence * np.maximum(confidence - accuracy, 0.0)))


RELIABILITY_COLOURS = ("tab:blue", "lightcoral", "tab:red")  # accuracy, gap, confidence


def plot_reliability_diagram(
    stats: BinStatistics,
    path: str,
    *,
    title: str = "Reliability diagram",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
) -> str:
    """Saves a reliability diagram (accuracy and confidence per bin) as a PNG of figsize*dpi pixels.

    Args:
      stats: `BinStatistics` with ``(num_bins,)`` fields.
      path: output PNG path.
      title: figure title; the ECE and OE are appended.
      figsize: figure size in inches; the PNG is ``(figsize[0]*dpi, figsize[1]*dpi)`` pixels.
      dpi: dots per inch.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_bins = len(np.asarray(stats.counts))
    _, confidence, accuracy = _bin_means(stats)
    occupied = np.asarray(stats.counts) > 0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    figure, axes = plt.subplots(figsize=figsize, dpi=dpi)
    accuracy_colour, gap_colour, confidence_colour = RELIABILITY_COLOURS
    axes.bar(
        edges[:-1],
        np.where(occupied, accuracy, 0.0),
        width=width,
        align="edge",
        edgecolor="black",
        color=accuracy_colour,
        label="accuracy",
    )
    # Opaque and never over the accuracy bar, so that the colours are the legend's.
    over = occupied & (confidence > accuracy)
    axes.bar(
        edges[:-1],
        np.where(over, confidence - accuracy, 0.0),
        width=width,
        bottom=np.where(over, accuracy, 0.0),
        align="edge",
        color=gap_colour,
        edgecolor="black",
        label="confidence above accuracy",
    )
    axes.hlines(
        confidence[occupied],
        edges[:-1][occupied],
        edges[1:][occupied],
        colors=confidence_colour,
        linewidth=2,
        label="mean confidence",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(
        f"{title}\nECE {100 * expected_calibration_error(stats):.2f}%  "
        f"OE {100 * overconfidence_error(stats):.2f}%",
        fontsize=9,
    )
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
