"""Pictures of feature mixing: decoded mixup / AlignMix interpolations and transport plans.

    python -m alignmix_jax.visualize --workdir DIR [--checkpoint best|last] [--pairs 4]
        [--decoder_epochs 5] [--retrain_decoder] [--config.x=y ...]
    (the command: alignmix_jax/visualize.py; this module: `visualize_workdir` and the plots)

Trains (or reloads) a `decoder.FeatureDecoder` that inverts the frozen classifier's last feature
map, saved as its own checkpoint in `DIR/visualize/decoder/` (the classifier is only read). For
pairs of test images it writes `DIR/visualize/pair{k}_mixing.png`, a grid with rows input mixup,
feature mixup, AlignMix direction 0 and AlignMix direction 1 and columns lam in
{0, 0.25, 0.5, 0.75, 1}, and `DIR/visualize/pair{k}_plan.png`, the transport plan between the
two images' positions.
"""

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignmix_jax.analysis import decoder as decoder_lib
from alignmix_jax.core.method import SinkhornOptions
from alignmix_jax.core.mixing import mixup
from alignmix_jax.core.ot import align_mix, sinkhorn_plan
from alignmix_jax.trainer import experiment_config, parallel

VISUALIZE_DIR = "visualize"
LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROW_NAMES = ("input mixup", "feature mixup", "AlignMix dir. 0", "AlignMix dir. 1")


def mixing_rows(decode_fn, encode_fn, image_a, image_b, *, lams=LAMS, mix_options=None):
    """The four rows of the mixing grid for one pair, in normalised pixel space.

    Args:
      decode_fn: features ``(n, h, w, c)`` -> images ``(n, H, W, C)``.
      encode_fn: images ``(n, H, W, C)`` -> features ``(n, h, w, c)``.
      image_a, image_b: ``(H, W, C)`` normalised images; ``lam`` weighs ``image_a``.
      lams: the column weights.
      mix_options: Sinkhorn options for `align_mix` (epsilon, num_iters, threshold, scale_cost).

    Returns:
      ``(4, len(lams), H, W, C)``: input mixup, feature mixup, AlignMix direction 0 and 1.
    """
    count = len(lams)
    lam = jnp.asarray(lams, jnp.float32)
    batch_a = jnp.broadcast_to(image_a, (count, *image_a.shape))
    batch_b = jnp.broadcast_to(image_b, (count, *image_b.shape))
    features_a, features_b = encode_fn(batch_a), encode_fn(batch_b)
    options = mix_options or {}
    rows = [
        mixup(batch_a, batch_b, lam),
        decode_fn(mixup(features_a, features_b, lam)),
        decode_fn(align_mix(features_a, features_b, lam, direction=0, **options)),
        decode_fn(align_mix(features_a, features_b, lam, direction=1, **options)),
    ]
    return jnp.stack(rows)


def _show(axis, picture: np.ndarray) -> None:
    picture = np.clip(picture, 0.0, 1.0)
    axis.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray",
                vmin=0.0, vmax=1.0)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_mixing_grid(
    rows: np.ndarray, path: str, *, lams=LAMS, row_names=ROW_NAMES, panel_inches: float = 1.2,
    dpi: int = 100,
) -> str:
    """Saves a grid of ``rows (R, L, H, W, C)`` pixels in [0, 1] as a PNG.

    The PNG is ``((L + 1) * panel_inches * dpi, (R + 0.5) * panel_inches * dpi)`` pixels: one
    panel per image, a label column and a header band. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.asarray(rows, np.float32)
    num_rows, num_cols = rows.shape[:2]
    if len(row_names) != num_rows or len(lams) != num_cols:
        raise ValueError(f"rows must have shape ({len(row_names)}, {len(lams)}, H, W, C) to match "
                         f"row_names and lams, got {rows.shape}")
    width, height = (num_cols + 1) * panel_inches, (num_rows + 0.5) * panel_inches
    figure = plt.figure(figsize=(width, height), dpi=dpi)
    grid = figure.add_gridspec(num_rows, num_cols + 1, left=0.0, right=0.99, bottom=0.01,
                               top=1 - 0.5 / (num_rows + 0.5), wspace=0.05, hspace=0.05)
    for row in range(num_rows):
        label_axis = figure.add_subplot(grid[row, 0])
        label_axis.set_axis_off()
        label_axis.text(0.95, 0.5, row_names[row], ha="right", va="center", fontsize=8)
        for col in range(num_cols):
            axis = figure.add_subplot(grid[row, col + 1])
            _show(axis, rows[row, col])
            if row == 0:
                axis.set_title(f"lam = {lams[col]:g}", fontsize=8)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def plot_transport_plan(
    image_a: np.ndarray, image_b: np.ndarray, plan: np.ndarray, path: str, *,
    feature_size: tuple[int, int], figsize: tuple[float, float] = (9.0, 3.6), dpi: int = 100,
) -> str:
    """Saves the plan between two images' positions as a PNG of ``figsize * dpi`` pixels.

    Left: the two images side by side, a line from each position ``i`` of ``image_a`` to the
    position of ``image_b`` that receives most of its mass, opacity ``r * max_j P_ij``. Right:
    ``R = r * P`` as a matrix.

    Args:
      image_a, image_b: ``(H, W, C)`` pixels in [0, 1].
      plan: ``(r, r)`` plan with ``r = h * w`` positions in row-major order.
      path: output PNG path.
      feature_size: ``(h, w)`` of the feature map.
      figsize, dpi: figure size in inches and resolution.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feature_h, feature_w = feature_size
    positions = feature_h * feature_w
    plan = np.asarray(plan, np.float64)
    if plan.shape != (positions, positions):
        raise ValueError(f"plan must have shape ({positions}, {positions}) for feature_size "
                         f"{feature_size}, got {plan.shape}")
    height, width = image_a.shape[:2]
    gap = width // 4
    canvas = np.ones((height, 2 * width + gap, image_a.shape[-1]), np.float32)
    canvas[:, :width] = np.clip(image_a, 0, 1)
    canvas[:, width + gap:] = np.clip(image_b, 0, 1)
    rows_weight = positions * plan
    figure, (pair_axis, matrix_axis) = plt.subplots(
        1, 2, figsize=figsize, dpi=dpi, gridspec_kw={"width_ratios": [2.2, 1]})
    _show(pair_axis, canvas)
    cell_h, cell_w = height / feature_h, width / feature_w
    for source in range(positions):
        target = int(np.argmax(plan[source]))
        y0, x0 = (source // feature_w + 0.5) * cell_h - 0.5, (source % feature_w + 0.5) * cell_w
        y1 = (target // feature_w + 0.5) * cell_h - 0.5
        x1 = width + gap + (target % feature_w + 0.5) * cell_w
        strength = float(np.clip(rows_weight[source, target], 0.05, 1.0))
        pair_axis.plot([x0 - 0.5, x1 - 0.5], [y0, y1], color="red", alpha=strength, linewidth=1.0)
        pair_axis.plot([x0 - 0.5], [y0], "o", color="yellow", markersize=2)
    pair_axis.set_title("each position of A -> its main match in B", fontsize=9)
    image = matrix_axis.imshow(rows_weight, cmap="viridis", vmin=0.0)
    matrix_axis.set_title("R = r P (rows: A, columns: B)", fontsize=9)
    matrix_axis.set_xlabel("position in B")
    matrix_axis.set_ylabel("position in A")
    figure.colorbar(image, ax=matrix_axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _decoder_key(config, checkpoint: str, step: int, image_shape) -> dict:
    """What a saved decoder was trained for: the classifier checkpoint ("best"/"last"), its
    training step, a hash of the run's model and data config, and the image shape. A decoder is
    reused only when all match (more training, or another config, means other features)."""
    described = json.dumps({"model": config.model.to_dict(), "data": config.data.to_dict()},
                           sort_keys=True, default=str)
    return {"classifier_checkpoint": checkpoint, "classifier_step": int(step),
            "classifier_config": hashlib.sha256(described.encode()).hexdigest()[:16],
            "image_shape": list(image_shape)}


def _decoder_matches(directory: str, key: dict) -> bool:
    settings_path = os.path.join(directory, "decoder.json")
    if not os.path.exists(settings_path):
        return False
    with open(settings_path) as handle:
        settings = json.load(handle)
    return all(settings.get(name) == value for name, value in key.items())


def visualize_workdir(
    workdir: str,
    *,
    checkpoint: str = "best",
    pairs: int = 4,
    decoder_epochs: int = 5,
    decoder_batch_size: int = 128,
    retrain_decoder: bool = False,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains or reloads the decoder of a run and renders the mixing grids and transport plans.

    Args:
      workdir: run directory of `train.train_and_evaluate`.
      checkpoint: "best" or "last" classifier weights.
      pairs: number of test-image pairs to draw (>= 1).
      decoder_epochs: passes over the training split for the decoder.
      decoder_batch_size: global decoder batch (rounded up to a multiple of the device count).
      retrain_decoder: train anew even when a matching decoder checkpoint exists.
      seed: decoder initialisation seed.
      overrides: ``{"data.data_dir": ..., ...}`` applied to the run's config.

    Returns:
      ``{"decoder": dir, "decoder_losses": [...] (empty when reloaded), "mixing": [png, ...],
      "plans": [png, ...]}``.
    """
    from alignmix_jax import data
    from alignmix_jax.trainer import trained_run

    if not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be a positive int, got {pairs!r}")
    config, model, variables, step = trained_run.load_for_eval(workdir, checkpoint=checkpoint)
    run_config = config
    config = experiment_config.apply_overrides(config, overrides)
    info = data.get_dataset_info(config.data)
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    last_stage = model.stage_names[-1]
    mesh = parallel.make_data_mesh()
    replicated = parallel.replicate(variables, mesh)

    @jax.jit
    def encode(frozen, images):
        return model.apply(frozen, images, train=False, stop_at=last_stage)[0]

    out_dir = os.path.abspath(os.path.join(workdir, VISUALIZE_DIR))
    decoder_dir = os.path.join(out_dir, "decoder")
    image_shape = tuple(info.image_shape)
    losses: list[float] = []
    decoder_key = _decoder_key(run_config, checkpoint, step, image_shape)
    if not retrain_decoder and _decoder_matches(decoder_dir, decoder_key):
        decoder, decoder_params, _ = decoder_lib.load_decoder(decoder_dir)
    else:
        batch_size = parallel.round_up_to_devices(decoder_batch_size, mesh)
        train_split = config.data.get("train_split", "train")
        feature_shape = jax.eval_shape(
            lambda: encode(variables, jnp.zeros((1, *image_shape), jnp.float32))).shape[1:]

        def epoch_batches(epoch):
            for host_batch in data.make_eval_iterator(config.data, batch_size, split=train_split):
                images = np.asarray(data.model_input(host_batch, info.normalisation))
                batch = parallel.shard_host_batch(
                    {"image": images, "mask": host_batch["mask"]}, mesh)
                yield {**batch, "features": encode(replicated, batch["image"])}

        decoder = decoder_lib.FeatureDecoder(image_shape=image_shape)
        decoder_params, losses = decoder_lib.train_decoder(
            decoder, epoch_batches,
            feature_shape=tuple(feature_shape), epochs=decoder_epochs,
            key=jax.random.key(seed))
        decoder_params = jax.device_get(decoder_params)
        decoder_lib.save_decoder(decoder_dir, decoder, decoder_params, epochs=decoder_epochs,
                                 losses=losses, **decoder_key)

    test_images = []
    for host_batch in data.make_eval_iterator(config.data, max(2 * pairs, 2)):
        images = np.asarray(data.model_input(host_batch, info.normalisation))
        test_images.extend(images[np.asarray(host_batch["mask"]) > 0])
        if len(test_images) >= 2 * pairs:
            break
    if len(test_images) < 2 * pairs:
        raise ValueError(f"pairs={pairs} needs {2 * pairs} test images, the split has "
                         f"{len(test_images)}")

    options = SinkhornOptions.from_config(config.get("mix")).as_kwargs()  # the run's
    feature_size = tuple(jax.eval_shape(encode, variables, test_images[0][None]).shape[1:3])

    @jax.jit
    def render(frozen, params, image_a, image_b):
        rows = mixing_rows(lambda f: decoder.apply({"params": params}, f),
                           lambda x: encode(frozen, x), image_a, image_b, mix_options=options)
        features = encode(frozen, jnp.stack([image_a, image_b]))
        flat = features.reshape(2, -1, features.shape[-1])
        return rows * std + mean, sinkhorn_plan(flat[:1], flat[1:], **options)[0]

    paths = {"decoder": decoder_dir, "decoder_losses": losses, "mixing": [], "plans": []}
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
    for pair in range(pairs):
        image_a, image_b = test_images[2 * pair], test_images[2 * pair + 1]
        rows, plan = render(variables, decoder_params, jnp.asarray(image_a), jnp.asarray(image_b))
        mixing_path = os.path.join(out_dir, f"pair{pair}_mixing.png")
        plan_path = os.path.join(out_dir, f"pair{pair}_plan.png")
        if jax.process_index() == 0:
            plot_mixing_grid(np.asarray(rows), mixing_path)
            plot_transport_plan(image_a * std + mean, image_b * std + mean, np.asarray(plan),
                                plan_path, feature_size=feature_size)
        paths["mixing"].append(mixing_path)
        paths["plans"].append(plan_path)
    return paths
