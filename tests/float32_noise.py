"""How far float32 rounding alone moves a few training steps.

Two runs that differ only in the order of their float32 reductions (N devices against 1, two hosts
against one) do not end bitwise equal: the steps amplify the rounding. To compare such runs at a
tolerance that holds on any CPU and still fails for a real defect, measure the amplification
itself: run the reference twice, from the initial parameters and from the same parameters moved by
one unit in the last place (a relative 2**-23, each entry up or down at random), and allow
`NOISE_MARGIN` times the difference that makes. A defect (wrong rows, a missing gradient mean, a
skipped step, per-device partners) moves parameters by orders of magnitude more; the tests check
that too.
"""

import jax
import numpy as np

NOISE_MARGIN = 10.0
NOISE_FLOOR = 1e-6  # absolute: where the measured amplification is below float32 resolution


def perturb_by_one_ulp(tree, seed: int = 0):
    """`tree` with every float entry multiplied by 1 +- 2**-23 (signs drawn with `seed`)."""
    rng = np.random.default_rng(seed)

    def perturb(leaf):
        leaf = np.asarray(leaf)
        signs = rng.choice(np.array([-1.0, 1.0], leaf.dtype), leaf.shape)
        return leaf * (1 + signs * np.asarray(2.0**-23, leaf.dtype))

    return jax.tree.map(perturb, tree)


def max_abs_difference(a, b) -> float:
    """Largest absolute difference between matching leaves of two trees of arrays."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def noise_tolerance(reference, from_perturbed_start) -> float:
    """`NOISE_MARGIN` times the difference one ulp at the start made, at least `NOISE_FLOOR`."""
    return max(NOISE_MARGIN * max_abs_difference(reference, from_perturbed_start), NOISE_FLOOR)
