"""CAM boxes recover a known object; IoU and the localisation counts; overlay PNG size."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alignmix_jax.analysis import wsol

IMAGE_SIZE = 32


class PooledHeadModel(nn.Module):
    """Conv features at stride 4, global average pooling, dense head: the CAM architecture."""

    @nn.compact
    def __call__(self, images):
        features = nn.relu(nn.Conv(4, (3, 3), name="features")(images))
        features = nn.avg_pool(features, (4, 4), strides=(4, 4))
        return nn.Dense(2, name="head")(features.mean(axis=(1, 2))), features


def synthetic_objects(key, count):
    """Dark images with one bright rectangle each; returns images and (ymin, xmin, ymax, xmax)."""
    corner_key, size_key, noise_key = jax.random.split(key, 3)
    corners = np.asarray(jax.random.randint(corner_key, (count, 2), 0, IMAGE_SIZE // 2))
    sizes = np.asarray(jax.random.randint(size_key, (count, 2), 8, IMAGE_SIZE // 2))
    images = 0.05 * np.asarray(jax.random.uniform(noise_key, (count, IMAGE_SIZE, IMAGE_SIZE, 1)))
    boxes = np.zeros((count, 4), np.float32)
    for index, ((top, left), (height, width)) in enumerate(zip(corners, sizes, strict=True)):
        images[index, top:top + height, left:left + width] = 1.0
        boxes[index] = np.array([top, left, top + height, left + width]) / IMAGE_SIZE
    return images.astype(np.float32), boxes


@pytest.fixture(scope="module")
def object_model():
    model = PooledHeadModel()
    params = model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))["params"]
    # Every feature channel detects brightness; class 1 ("object") weighs it positively.
    params["features"]["kernel"] = jnp.full((3, 3, 1, 4), 1.0 / 9)
    params["features"]["bias"] = jnp.zeros((4,))
    params["head"]["kernel"] = jnp.array([[-1.0, 1.0]] * 4)
    return model, params


def test_cams_average_to_logits_minus_bias(object_model):
    model, params = object_model
    head_kernel = jax.random.normal(jax.random.key(3), (4, 2))
    params = {**params, "head": {**params["head"], "kernel": head_kernel}}
    images, _ = synthetic_objects(jax.random.key(1), 3)
    logits, features = model.apply({"params": params}, images)
    for class_index in range(2):
        cams = wsol.class_activation_maps(features, head_kernel, jnp.full((3,), class_index))
        np.testing.assert_allclose(
            np.asarray(cams.mean(axis=(1, 2))),
            np.asarray(logits[:, class_index] - params["head"]["bias"][class_index]), atol=1e-5)


def test_cam_boxes_recover_known_objects(object_model):
    model, params = object_model
    images, gt_boxes = synthetic_objects(jax.random.key(2), 8)

    @jax.jit
    def cams_of(images, classes):
        _, features = model.apply({"params": params}, images)
        cams = wsol.class_activation_maps(features, params["head"]["kernel"], classes)
        return wsol.upsample_and_normalise(cams, (IMAGE_SIZE, IMAGE_SIZE))

    cams = np.asarray(cams_of(images, jnp.ones((8,), jnp.int32)))
    assert cams.shape == (8, IMAGE_SIZE, IMAGE_SIZE)
    assert cams.min() >= 0.0 and cams.max() == pytest.approx(1.0)
    predicted = np.stack([wsol.cam_to_box(cam, 0.5) for cam in cams])
    assert np.all(wsol.box_iou(predicted, gt_boxes) >= 0.5)
    correct = np.array([1, 1, 1, 0, 1, 0, 1, 1])
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0])
    counts = wsol.localization_counts(cams, gt_boxes, correct, mask, cam_threshold=0.5)
    assert counts == {"count": 7, "gt_known": 7, "top1_loc": 5}
    # A map of the wrong class peaks off the object: localisation fails there.
    wrong = np.asarray(cams_of(images, jnp.zeros((8,), jnp.int32)))
    assert wsol.localization_counts(wrong, gt_boxes, correct, mask, cam_threshold=0.5)[
        "gt_known"] < 7


def test_cam_to_box_keeps_largest_component_and_threshold():
    cam = np.zeros((10, 20), np.float32)
    cam[1:3, 1:3] = 1.0  # small, brightest blob
    cam[5:9, 10:18] = 0.6  # large blob
    np.testing.assert_allclose(wsol.cam_to_box(cam, 0.5), [0.5, 0.5, 0.9, 0.9])
    np.testing.assert_allclose(wsol.cam_to_box(cam, 0.8), [0.1, 0.05, 0.3, 0.15])
    np.testing.assert_allclose(wsol.cam_to_box(np.ones((4, 4))), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="threshold"):
        wsol.cam_to_box(cam, 1.5)


def test_box_iou_hand_values():
    boxes_a = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.2, 0.2]])
    boxes_b = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(wsol.box_iou(boxes_a, boxes_b), [1 / 7, 0.5, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="boxes"):
        wsol.box_iou(boxes_a, boxes_b[:2])


def test_cam_overlay_png_has_expected_size(tmp_path):
    images, boxes = synthetic_objects(jax.random.key(4), 3)
    cams = np.random.default_rng(0).uniform(size=(3, IMAGE_SIZE, IMAGE_SIZE))
    path = wsol.plot_cam_overlays(images, cams, str(tmp_path / "cams.png"), predicted_boxes=boxes,
                                  gt_boxes=boxes, titles=["a", "b", "c"], panel_inches=1.5,
                                  dpi=40)
    with Image.open(path) as image:
        assert image.size == (180, 60)
    with pytest.raises(ValueError, match="cams"):
        wsol.plot_cam_overlays(images, cams[:2], str(tmp_path / "bad.png"))
