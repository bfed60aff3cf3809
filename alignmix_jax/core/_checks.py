"""Input validation shared by the public functions of `ot` and `mixing`.

Every check raises `ValueError` with a message naming the argument, what was given and what is
expected. Shape, rank and dtype checks are static and run under `jit`; checks on values (lam,
epsilon, threshold) run only when the value is concrete, never on a tracer.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np

SCALE_COST_NAMES = ("mean", "max_cost", "median", "max_norm", "max_bound")


def is_concrete(value) -> bool:
    """True when `value` holds known numbers (not a tracer inside `jit`/`vmap`/`grad`).

    Test the argument as the caller gave it: inside `jit` even `jnp.asarray(0.5)` is a tracer.
    """
    return not isinstance(value, jax.core.Tracer)


def as_array(value, name: str) -> jax.Array:
    """`value` as a JAX array; a `ValueError` naming `name` when it is not array-like."""
    try:
        return jnp.asarray(value)
    except TypeError as error:
        raise ValueError(f"{name} must be an array, got {type(value).__name__}: {error}") from None


def static_int(value, name: str, minimum: int) -> int:
    """`value` as a Python int >= `minimum` (a static argument, e.g. an iteration count)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got the bool {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}"
        ) from None
    if as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {as_int}")
    return as_int


def positive_scalar(value, name: str) -> jax.Array:
    """A float32 scalar > 0; the value check runs only when `value` is concrete."""
    array = as_array(value, name)
    if array.ndim != 0:
        raise ValueError(f"{name} must be a positive scalar, got an array of shape {array.shape}")
    real = jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.floating)
    if not real:
        raise ValueError(f"{name} must be a positive real scalar, got dtype {array.dtype}")
    if is_concrete(value):
        number = float(np.asarray(value))
        if not (np.isfinite(number) and number > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {number}")
    return array.astype(jnp.float32)


def scale_cost_option(value) -> float | str:
    """ott's `scale_cost`, static: a positive Python float or one of `SCALE_COST_NAMES`."""
    if isinstance(value, str):
        if value not in SCALE_COST_NAMES:
            raise ValueError(
                f"scale_cost must be a positive number or one of {SCALE_COST_NAMES}, got {value!r}"
            )
        return value
    if not is_concrete(value):
        raise ValueError("scale_cost must be a concrete number or a name, got a traced value")
    positive_scalar(value, "scale_cost")
    return float(np.asarray(value))


def same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    """Raise unless `a` and `b` have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {name_a} {a.shape} and "
            f"{name_b} {b.shape}"
        )


def min_rank(array: jax.Array, name: str, rank: int, layout: str) -> None:
    """Raise unless `array.ndim >= rank`; `layout` spells the expected shape, e.g. "(B, N, C)"."""
    if array.ndim < rank:
        raise ValueError(
            f"{name} must have rank >= {rank}, shape {layout}, got shape {array.shape}"
        )


def floating(array: jax.Array, name: str) -> None:
    """Raise unless `array` has a real floating dtype."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {array.dtype}")


def lam_array(lam, batch_size: int) -> jax.Array:
    """Mixing weight `lam` as float32 of shape `()` or `(batch_size,)`, checked to lie in [0, 1].

    The range check runs only when `lam` is concrete.
    """
    array = as_array(lam, "lam")
    if array.shape not in ((), (batch_size,)):
        raise ValueError(
            f"lam must be a scalar or have shape ({batch_size},) (one weight per example), "
            f"got shape {array.shape}"
        )
    if not jnp.issubdtype(array.dtype, jnp.floating) and not jnp.issubdtype(
        array.dtype, jnp.integer
    ):
        raise ValueError(f"lam must be a real number in [0, 1], got dtype {array.dtype}")
    if is_concrete(lam):
        values = np.asarray(lam, dtype=np.float64)
        if not np.all((values >= 0.0) & (values <= 1.0)):
            bad = values[~((values >= 0.0) & (values <= 1.0))]
            raise ValueError(f"lam must lie in [0, 1], got {bad.ravel()[:4].tolist()}")
    return array.astype(jnp.float32)


def per_example(lam: jax.Array, ndim: int) -> jax.Array:
    """`lam` of shape `()` or `(B,)` reshaped to broadcast against a `(B, ...)` array of `ndim`."""
    return lam.reshape(lam.shape + (1,) * (ndim - lam.ndim)) if lam.ndim else lam


def labels(y, name: str, batch_size: int | None = None) -> jax.Array:
    """Integer class labels of shape `(B,)`; `batch_size` fixes B when given."""
    array = as_array(y, name)
    if array.ndim != 1 or (batch_size is not None and array.shape[0] != batch_size):
        expected = f"({batch_size},)" if batch_size is not None else "(B,)"
        raise ValueError(f"{name} must have shape {expected} of class indices, got {array.shape}")
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array
