"""The feature decoder learns to invert a frozen encoder, and its checkpoint round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignmix_jax.analysis import decoder as decoder_lib

IMAGE_SHAPE = (8, 8, 1)


def frozen_encoder(images):
    """Fixed stride-4 encoder ``(B, 8, 8, 1) -> (B, 2, 2, 16)``: pixels of each 4x4 block."""
    batch = images.shape[0]
    blocks = images.reshape(batch, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(batch, 2, 2, 16) * 2.0 - 1.0


@pytest.fixture(scope="module")
def trained():
    images = jax.random.uniform(jax.random.key(0), (64, *IMAGE_SHAPE))
    images = jnp.round(images)  # binary images: learnable but not trivial
    batches = [{"features": frozen_encoder(images[i:i + 16]), "image": images[i:i + 16],
                "mask": jnp.ones((16,))} for i in range(0, 64, 16)]
    decoder = decoder_lib.FeatureDecoder(image_shape=IMAGE_SHAPE, base_width=8)
    params, losses = decoder_lib.train_decoder(
        decoder, lambda epoch: batches, feature_shape=(2, 2, 16), epochs=25,
        learning_rate=1e-2, key=jax.random.key(1))
    return decoder, params, losses, images


def test_decoder_output_shape_matches_images():
    decoder = decoder_lib.FeatureDecoder(image_shape=(12, 10, 3), base_width=8)
    output = jax.eval_shape(lambda features: decoder.init_with_output(
        jax.random.key(0), features)[0], jnp.zeros((2, 3, 3, 5)))
    assert output.shape == (2, 12, 10, 3)


def test_decoder_reduces_reconstruction_error(trained):
    decoder, params, losses, images = trained
    assert len(losses) == 25
    assert losses[-1] < 0.3 * losses[0]
    reconstruction = jax.jit(decoder.apply)({"params": params}, frozen_encoder(images))
    error = float(decoder_lib.reconstruction_loss(reconstruction, images))
    # The best constant image (the per-pixel mean) is the baseline a useless decoder reaches.
    constant = float(jnp.mean(jnp.var(images, axis=0)))
    assert error < 0.3 * constant


def test_reconstruction_loss_ignores_masked_examples():
    images = jnp.zeros((2, *IMAGE_SHAPE))
    reconstruction = images.at[1].set(5.0)
    assert float(decoder_lib.reconstruction_loss(reconstruction, images, jnp.array([1, 0]))) == 0.0
    assert float(decoder_lib.reconstruction_loss(reconstruction, images)) == pytest.approx(12.5)


def test_checkpoint_round_trip(trained, tmp_path):
    decoder, params, _, images = trained
    decoder_lib.save_decoder(str(tmp_path / "decoder"), decoder, params, epochs=25)
    loaded, loaded_params, settings = decoder_lib.load_decoder(str(tmp_path / "decoder"))
    assert loaded == decoder and settings["epochs"] == 25
    features = frozen_encoder(images)
    apply = jax.jit(decoder.apply)
    np.testing.assert_allclose(np.asarray(apply({"params": loaded_params}, features)),
                               np.asarray(apply({"params": params}, features)), atol=1e-6)
    with pytest.raises(ValueError, match="directory"):
        decoder_lib.load_decoder(str(tmp_path / "missing"))


def test_train_decoder_rejects_bad_epochs():
    decoder = decoder_lib.FeatureDecoder(image_shape=IMAGE_SHAPE, base_width=8)
    with pytest.raises(ValueError, match="epochs"):
        decoder_lib.train_decoder(decoder, lambda epoch: [], feature_shape=(2, 2, 16), epochs=0,
                                  key=jax.random.key(0))
