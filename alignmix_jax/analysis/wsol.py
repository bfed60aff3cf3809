"""Weakly supervised object localisation with class activation maps (CAM, Zhou et al. 2016).

The classifier ends with global average pooling of the last feature map ``F (B, h, w, C)`` and a
dense head ``(W (C, K), b (K,))``, so class ``k``'s map is ``CAM_k = sum_c W[c, k] * F[..., c]``.
Maps are computed and upsampled under jit (`class_activation_maps`, `upsample_and_normalise`);
boxes come from the largest connected region above a fraction of the maximum, found on the host
with `scipy.ndimage.label` (`cam_to_box`). Boxes are ``(ymin, xmin, ymax, xmax)`` in [0, 1], pixel
``i`` of ``n`` covering ``[i / n, (i + 1) / n]``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

DEFAULT_CAM_THRESHOLD = 0.2
DEFAULT_IOU_THRESHOLD = 0.5


def class_activation_maps(features: jax.Array, kernel: jax.Array, classes: jax.Array) -> jax.Array:
    """CAM of one class per image.

    Args:
      features: last feature map ``(B, h, w, C)``.
      kernel: dense head weights ``(C, K)``.
      classes: int class per image ``(B,)``.

    Returns:
      ``(B, h, w)`` float32 maps ``sum_c kernel[c, classes[b]] * features[b, :, :, c]``.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape (B, h, w, C), got {features.shape}")
    if kernel.ndim != 2 or kernel.shape[0] != features.shape[-1]:
        raise ValueError(
            f"kernel must have shape ({features.shape[-1]}, num_classes) to match features "
            f"{features.shape}, got {kernel.shape}"
        )
    class_weights = jnp.take(kernel, classes, axis=1).T  # (B, C)
    return jnp.einsum("bhwc,bc->bhw", features.astype(jnp.float32),
                      class_weights.astype(jnp.float32))


def upsample_and_normalise(cams: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``(B, h, w)`` maps to ``(B, H, W)``, then per-map min-max to [0, 1]."""
    batch = cams.shape[0]
    upsampled = jax.image.resize(cams, (batch, *image_size), method="bilinear")
    low = upsampled.min(axis=(1, 2), keepdims=True)
    high = upsampled.max(axis=(1, 2), keepdims=True)
    return (upsampled - low) / jnp.maximum(high - low, 1e-12)


def cam_to_box(cam: np.ndarray, threshold: float = DEFAULT_CAM_THRESHOLD) -> np.ndarray:
    """Box around the largest connected region where ``cam >= threshold * cam.max()``.

    Args:
      cam: ``(H, W)`` map (e.g. normalised to [0, 1]).
      threshold: fraction of the maximum, in [0, 1].

    Returns:
      ``(4,)`` float32 box ``(ymin, xmin, ymax, xmax)`` in [0, 1]; the whole image when the map
      is constant.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a fraction of the maximum in [0, 1], got {threshold}")
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {cam.shape}")
    height, width = cam.shape
    low, high = cam.min(), cam.max()
    if high <= low:
        return np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    foreground = (cam - low) >= threshold * (high - low)
    components, count = ndimage.label(foreground)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    rows, cols = np.nonzero(components == np.argmax(sizes))
    return np.array(
        [rows.min() / height, cols.min() / width, (rows.max() + 1) / height,
         (cols.max() + 1) / width],
        np.float32,
    )


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of paired boxes ``(N, 4)`` x ``(N, 4)`` (ymin, xmin, ymax, xmax)."""
    boxes_a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    if boxes_a.shape != boxes_b.shape:
        raise ValueError(f"boxes must pair up, got shapes {boxes_a.shape} and {boxes_b.shape}")
    top_left = np.maximum(boxes_a[:, :2], boxes_b[:, :2])
    bottom_right = np.minimum(boxes_a[:, 2:], boxes_b[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=1)

    def area(boxes):
        return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None), axis=1)

    union = area(boxes_a) + area(boxes_b) - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


def localization_counts(
    cams: np.ndarray,
    gt_boxes: np.ndarray,
    correct: np.ndarray,
    mask: np.ndarray,
    *,
    cam_threshold: float = DEFAULT_CAM_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> dict[str, int]:
    """Counts for Top-1 Loc and GT-known Loc over one batch.

    Args:
      cams: ``(B, H, W)`` maps of the ground-truth class.
      gt_boxes: ``(B, 4)`` ground-truth boxes in [0, 1].
      correct: ``(B,)`` whether the top-1 prediction is the label.
      mask: ``(B,)`` 1 for real examples, 0 for padding.
      cam_threshold: fraction of the maximum that delimits the object.
      iou_threshold: IoU needed for a correct box.

    Returns:
      ``{"count", "gt_known", "top1_loc"}``: GT-known counts boxes with IoU >= threshold; Top-1
      Loc additionally needs the correct class.
    """
    real = np.asarray(mask).astype(bool)
    if not real.any():
        return {"count": 0, "gt_known": 0, "top1_loc": 0}
    predicted = np.stack([cam_to_box(cam, cam_threshold) for cam in np.asarray(cams)[real]])
    localized = box_iou(predicted, np.asarray(gt_boxes)[real]) >= iou_threshold
    classified = np.asarray(correct).astype(bool)[real]
    return {
        "count": int(real.sum()),
        "gt_known": int(localized.sum()),
        "top1_loc": int((localized & classified).sum()),
    }


def plot_cam_overlays(
    images: np.ndarray,
    cams: np.ndarray,
    path: str,
    *,
    predicted_boxes: np.ndarray | None = None,
    gt_boxes: np.ndarray | None = None,
    titles: list[str] | None = None,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> str:
    """Saves one row of CAM overlays as a PNG of ``(n * panel_inches * dpi, panel_inches * dpi)``.

    Args:
      images: ``(n, H, W, C)`` pixels in [0, 1] (C = 1 or 3).
      cams: ``(n, H, W)`` maps in [0, 1].
      path: output PNG path.
      predicted_boxes: optional ``(n, 4)`` boxes drawn in red; gt_boxes: optional, in green.
      titles: optional panel titles.
      panel_inches: size of one square panel in inches.
      dpi: dots per inch.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    count, height, width = images.shape[:3]
    if np.shape(cams) != (count, height, width):
        raise ValueError(f"cams must have shape {(count, height, width)}, got {np.shape(cams)}")
    figure, axes = plt.subplots(1, count, figsize=(count * panel_inches, panel_inches), dpi=dpi,
                                squeeze=False)
    for index, axis in enumerate(axes[0]):
        picture = images[index]
        axis.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture,
                    cmap="gray", vmin=0.0, vmax=1.0)
        axis.imshow(cams[index], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        for boxes, color in ((gt_boxes, "lime"), (predicted_boxes, "red")):
            if boxes is not None:
                ymin, xmin, ymax, xmax = np.asarray(boxes[index], np.float64)
                axis.add_patch(Rectangle(
                    (xmin * width - 0.5, ymin * height - 0.5), (xmax - xmin) * width,
                    (ymax - ymin) * height, fill=False, edgecolor=color, linewidth=1.5))
        if titles is not None:
            axis.set_title(titles[index], fontsize=7)
        axis.set_axis_off()
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.05)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
