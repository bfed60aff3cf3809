"""A decoder that inverts a frozen encoder's last feature map back to images (visualisation only).

`FeatureDecoder` upsamples ``(B, h, w, C)`` features with stride-2 transposed convolutions to the
image size ``(B, H, W, C_img)`` in the normalised pixel space of the data pipeline. It is trained
with a masked mean-squared reconstruction loss on precomputed features of a frozen classifier
(`train_decoder` sees only the features, so no gradient reaches the classifier) and is saved as
its own orbax checkpoint (`save_decoder`, `load_decoder`); it never enters classifier training.
"""

import json
import math
import os
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

_METADATA_FILE = "decoder.json"


class FeatureDecoder(nn.Module):
    """Transposed-convolution decoder ``(B, h, w, C) -> (B, H, W, image_channels)``.

    Attributes:
      image_shape: ``(H, W, image_channels)`` of the reconstructed images.
      base_width: channels of the last upsampling stage (doubled per stage above it, max 512);
        a multiple of 8 (GroupNorm groups of 8 channels).
      kernel_size: transposed-convolution kernel; 2 (the default) maps each position to its own
        2x2 block, the cheapest choice on a CPU; 4 overlaps neighbouring blocks.
    """

    image_shape: tuple[int, int, int]
    base_width: int = 16
    kernel_size: int = 2

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        height, width, channels = self.image_shape
        scale = max(height / features.shape[1], width / features.shape[2])
        num_upsamplings = max(0, math.ceil(math.log2(scale) - 1e-9))
        hidden = nn.LayerNorm()(features.astype(jnp.float32))
        hidden = nn.relu(nn.Conv(self.base_width * 2 ** num_upsamplings, (1, 1))(hidden))
        for stage in reversed(range(num_upsamplings)):
            stage_channels = min(512, self.base_width * 2 ** stage)
            hidden = nn.ConvTranspose(stage_channels, (self.kernel_size,) * 2, strides=(2, 2),
                                      padding="SAME")(hidden)
            hidden = nn.relu(nn.GroupNorm(num_groups=None, group_size=8)(hidden))
        if hidden.shape[1:3] != (height, width):
            hidden = jax.image.resize(
                hidden, (hidden.shape[0], height, width, hidden.shape[-1]), "bilinear")
        return nn.Conv(channels, (3, 3))(hidden)


def reconstruction_loss(
    reconstruction: jax.Array, images: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Masked mean squared error over ``(B, H, W, C)`` images; ``mask (B,)`` weighs examples."""
    per_example = jnp.mean(jnp.square(reconstruction - images), axis=(1, 2, 3))
    if mask is None:
        return per_example.mean()
    mask = mask.astype(per_example.dtype)
    return jnp.sum(per_example * mask) / jnp.maximum(mask.sum(), 1.0)


def init_decoder(
    key: jax.Array, decoder: FeatureDecoder, feature_shape: tuple[int, int, int]
) -> dict:
    """Decoder parameters for features of shape ``feature_shape = (h, w, C)``."""
    return jax.jit(decoder.init)(key, jnp.zeros((1, *feature_shape), jnp.float32))["params"]


def make_train_step(decoder: FeatureDecoder, optimizer: optax.GradientTransformation):
    """Jitted step ``(params, opt_state, features, images, mask) -> (params, opt_state, loss)``.

    ``features (B, h, w, c)`` come from the frozen encoder, ``images (B, H, W, C)`` are the
    targets and ``mask (B,)`` weighs the examples.
    """

    def loss_fn(params, features, images, mask):
        return reconstruction_loss(decoder.apply({"params": params}, features), images, mask)

    @jax.jit
    def train_step(params, opt_state, features, images, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, features, images, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def train_decoder(
    decoder: FeatureDecoder,
    epoch_batches: Callable[[int], Iterable[dict]],
    *,
    feature_shape: tuple[int, int, int],
    epochs: int,
    learning_rate: float = 2e-3,
    key: jax.Array,
) -> tuple[dict, list[float]]:
    """Trains ``decoder`` to map features back to their images (Adam, cosine-decayed rate).

    Args:
      decoder: the `FeatureDecoder` to train.
      epoch_batches: ``epoch -> iterable`` of dicts with ``"features" (B, h, w, c)`` from the
        frozen encoder, ``"image" (B, H, W, C)`` and optional ``"mask" (B,)``; arrays may be
        sharded global arrays.
      feature_shape: ``(h, w, c)`` of the encoder's output.
      epochs: number of passes (>= 1).
      learning_rate: peak Adam learning rate.
      key: PRNG key for the initialisation.

    Returns:
      ``(params, mean loss per epoch)``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    params = init_decoder(key, decoder, feature_shape)
    first_epoch = list(epoch_batches(0))
    if not first_epoch:
        raise ValueError("epoch_batches must yield at least one batch, got an empty epoch")
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * len(first_epoch))
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)
    train_step = make_train_step(decoder, optimizer)
    epoch_losses = []
    for epoch in range(epochs):
        batches = first_epoch if epoch == 0 else epoch_batches(epoch)
        losses = []
        for batch in batches:
            mask = batch.get("mask")
            if mask is None:
                mask = jnp.ones(batch["image"].shape[:1], jnp.float32)
            params, opt_state, loss = train_step(
                params, opt_state, batch["features"], batch["image"], mask)
            losses.append(loss)
        epoch_losses.append(float(np.mean(jax.device_get(losses))))
    return params, epoch_losses


def save_decoder(directory: str, decoder: FeatureDecoder, params: dict, **metadata) -> str:
    """Writes ``params`` as an orbax checkpoint under ``directory`` plus a JSON of the settings.

    Returns the checkpoint directory ``directory/params``; an existing one is replaced.
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    checkpoint_path = os.path.join(directory, "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(checkpoint_path, params, force=True)
    checkpointer.wait_until_finished()
    settings = {"image_shape": list(decoder.image_shape), "base_width": decoder.base_width,
                "kernel_size": decoder.kernel_size, **metadata}
    if jax.process_index() == 0:
        with open(os.path.join(directory, _METADATA_FILE), "w") as handle:
            json.dump(settings, handle, indent=2)
    return checkpoint_path


def load_decoder(directory: str) -> tuple[FeatureDecoder, dict, dict]:
    """Reads a decoder written by `save_decoder`: ``(decoder, params, settings)``."""
    directory = os.path.abspath(directory)
    metadata_path = os.path.join(directory, _METADATA_FILE)
    if not os.path.exists(metadata_path):
        raise ValueError(f"directory must hold a saved decoder ({metadata_path} is missing), "
                         f"got {directory}")
    with open(metadata_path) as handle:
        settings = json.load(handle)
    decoder = FeatureDecoder(image_shape=tuple(settings["image_shape"]),
                             base_width=settings["base_width"], kernel_size=settings["kernel_size"])
    params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"))
    return decoder, params, settings
