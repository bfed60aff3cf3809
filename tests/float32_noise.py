"""How far float32 rounding alone moves a few training steps.

Two runs that differ only in the order of their float32 reductions (N devices against 1, two hosts
against one) do not end bitwise equal: the steps amplify the rounding. To compare such runs at a
tolerance that holds on any CPU and still fails for a real defect, measure the amplification
itself: run the reference again from the initial parameters moved by one unit in the last place (a
relative 2**-23, each entry up or down at random), and again with every mean over the devices off
by the rounding a sum in another order can make (`pmean_in_another_order`: 2**-23 of the mean of
the terms' magnitudes, which is large where the terms cancel), and allow `NOISE_MARGIN` times the
larger difference either makes. A defect (wrong rows, a missing gradient mean, a skipped step,
per-device partners) moves parameters by orders of magnitude more; the tests check that too.
"""

import jax
import jax.numpy as jnp
import numpy as np

NOISE_MARGIN = 10.0
NOISE_FLOOR = 1e-6  # absolute: where the measured amplification is below float32 resolution
ULP = 2.0**-23
_pmean = jax.lax.pmean


def perturb_by_one_ulp(tree, seed: int = 0):
    """`tree` with every float entry multiplied by 1 +- 2**-23 (signs drawn with `seed`)."""
    rng = np.random.default_rng(seed)

    def perturb(leaf):
        leaf = np.asarray(leaf)
        signs = rng.choice(np.array([-1.0, 1.0], leaf.dtype), leaf.shape)
        return leaf * (1 + signs * np.asarray(ULP, leaf.dtype))

    return jax.tree.map(perturb, tree)


def pmean_in_another_order(values, axis_name, **kwargs):
    """`jax.lax.pmean` (a drop-in for it) plus, per entry, +- 2**-23 times the mean of the terms'
    magnitudes: what summing the devices' terms in another order can change (signs fixed per
    entry)."""

    def add_rounding(mean, magnitude):
        if not jnp.issubdtype(mean.dtype, jnp.inexact):
            return mean
        index = jnp.arange(mean.size, dtype=jnp.float32).reshape(mean.shape)
        signs = jnp.where(jnp.sin(index * 12.9898 + 78.233) > 0, 1.0, -1.0).astype(mean.dtype)
        return mean + signs * jnp.asarray(ULP, mean.dtype) * magnitude

    means = _pmean(values, axis_name, **kwargs)
    magnitudes = _pmean(jax.tree.map(jnp.abs, values), axis_name, **kwargs)
    return jax.tree.map(add_rounding, means, magnitudes)


def max_abs_difference(a, b) -> float:
    """Largest absolute difference between matching leaves of two trees of arrays."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def noise_tolerance(reference, *perturbed_runs) -> float:
    """`NOISE_MARGIN` times the largest difference a perturbation made, at least `NOISE_FLOOR`."""
    noise = max(max_abs_difference(reference, run) for run in perturbed_runs)
    return max(NOISE_MARGIN * noise, NOISE_FLOOR)
