"""White-box adversarial attacks (FGSM, PGD) on normalised images, perturbing on the [0, 1] scale.

Images arrive normalised, ``x = (x01 - mean) / std``. Each attack maps them back to pixels
``x01 = x * std + mean``, perturbs them inside the L-infinity ball of radius ``epsilon`` (on the
[0, 1] scale), clips to [0, 1] and renormalises. Gradients are those of the summed cross-entropy
through ``logits_fn`` (e.g. an eval-mode ``model.apply``), so each example's perturbation depends
only on that example. All functions are pure and jit-friendly.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[[jax.Array], jax.Array]


def _check_epsilon(name: str, value: float) -> None:
    if not isinstance(value, jax.Array) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (pixel scale), got {value}")


def _pixel_transform(x: jax.Array, mean, std) -> tuple[jax.Array, jax.Array]:
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    channels = x.shape[-1]
    if mean.shape not in ((), (channels,)) or std.shape not in ((), (channels,)):
        raise ValueError(
            f"mean and std must be scalars or shape ({channels},) to match images {x.shape}, "
            f"got {mean.shape} and {std.shape}"
        )
    return mean, std


def _loss_gradient(logits_fn: LogitsFn, x01, labels, mean, std) -> jax.Array:
    """Gradient of the summed cross-entropy with respect to the [0, 1] pixels, ``x01``'s shape."""

    def loss(pixels):
        logits = logits_fn((pixels - mean) / std)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    return jax.grad(loss)(x01)


def fgsm(
    logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, *, epsilon: float, mean, std
) -> jax.Array:
    """Fast gradient sign method: ``clip(x01 + epsilon * sign(grad), 0, 1)``, renormalised.

    Args:
      logits_fn: maps normalised images ``(B, H, W, C)`` to logits ``(B, K)``.
      images: normalised images ``(B, H, W, C)``.
      labels: int labels ``(B,)``.
      epsilon: L-infinity radius on the [0, 1] pixel scale.
      mean, std: per-channel normalisation ``(C,)`` (or scalars).

    Returns:
      adversarial normalised images ``(B, H, W, C)``.
    """
    _check_epsilon("epsilon", epsilon)
    mean, std = _pixel_transform(images, mean, std)
    x01 = images * std + mean
    gradient = _loss_gradient(logits_fn, x01, labels, mean, std)
    adversarial = jnp.clip(x01 + epsilon * jnp.sign(gradient), 0.0, 1.0)
    return (adversarial - mean) / std


def pgd(
    logits_fn: LogitsFn,
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    mean,
    std,
    random_start: bool = True,
) -> jax.Array:
    """Projected gradient descent (Madry et al.) in the L-infinity ball, on the [0, 1] scale.

    Starts from a uniform point in the ball (``random_start``), takes ``num_steps`` signed-gradient
    steps of ``step_size``, and after each step projects onto the ball around the clean pixels and
    onto [0, 1].

    Args:
      logits_fn: maps normalised images ``(B, H, W, C)`` to logits ``(B, K)``.
      key: PRNG key for the random start.
      images: normalised images ``(B, H, W, C)``.
      labels: int labels ``(B,)``.
      epsilon: ball radius on the [0, 1] scale; step_size: step on that scale.
      num_steps: number of gradient steps (>= 1).
      mean, std: per-channel normalisation ``(C,)`` (or scalars).
      random_start: start from a random point of the ball instead of the clean image.

    Returns:
      adversarial normalised images ``(B, H, W, C)``.
    """
    _check_epsilon("epsilon", epsilon)
    _check_epsilon("step_size", step_size)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    mean, std = _pixel_transform(images, mean, std)
    clean = images * std + mean
    lower = jnp.clip(clean - epsilon, 0.0, 1.0)
    upper = jnp.clip(clean + epsilon, 0.0, 1.0)
    if random_start:
        noise = jax.random.uniform(key, clean.shape, clean.dtype, -epsilon, epsilon)
        start = jnp.clip(clean + noise, lower, upper)
    else:
        start = clean

    def step(pixels, _):
        gradient = _loss_gradient(logits_fn, pixels, labels, mean, std)
        return jnp.clip(pixels + step_size * jnp.sign(gradient), lower, upper), None

    adversarial, _ = jax.lax.scan(step, start, None, length=num_steps)
    return (adversarial - mean) / std
