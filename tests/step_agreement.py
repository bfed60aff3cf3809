"""Whether two computations of one training step, from the same state, agree up to float32 rounding.

Runs whose float32 reductions sum in different orders (one device against eight, two hosts against
one) never end bitwise equal, and over many steps the aligned steps amplify the difference without
bound (the Sinkhorn plan at cost/epsilon ~1e4 is exponentially sensitive to its inputs): a
trajectory can only be compared under a tolerance tuned on one CPU. So the suite compares one step
at a time: both computations start from the same state (bitwise) and the same batch and key, and
the states they reach may differ only by the rounding of that one step. For every leaf of the
state, that is at most

    UPDATE_RTOL * max|expected - before| + STATE_ULPS * 2**-23 * max|expected|

a fraction of the step's own update (its reductions in another order, amplified at most by the one
step's conditioning: a few ulp of the cost times cost/epsilon ~1e4 is ~1e-3, measured 2e-4 at
most), plus a few ulp of the state itself (the rounding of `before + update`). The optimizer's
momentum traces (leaves under `opt_state`) are not `before + update` but `0.9 * before + gradient`:
the step computes the gradient, whose rounding is relative to the gradient, while `expected -
before = gradient - 0.1 * before` can cancel to far less (seen: 1.45 update-tolerances on one
BatchNorm bias trace at one step of the two-host run). For them the first term is taken of
`max(|expected|, |before|)`, the scale of the gradient (|g| <= |expected| + 0.9 |before|). Neither
term depends on the CPU or on how many steps came before. A defect moves a leaf by the order of its
whole update: a skipped step by exactly `expected - before`, a missing device mean or wrong rows by
a gradient of other examples; the tests show each lands more than `DEFECT_MARGIN` tolerances away.
Integer leaves (the step counter) must be equal.
"""

import jax
import numpy as np

UPDATE_RTOL = 1e-2
STATE_ULPS = 16
FLOAT32_ULP = 2.0**-23
DEFECT_MARGIN = 10.0
OPTIMIZER_STATE = "opt_state"  # in the keystr of the optimizer's leaves (momentum traces)


def leaves(tree) -> dict[str, np.ndarray]:
    """{`jax.tree_util.keystr` of each leaf: its host array} of `tree`."""
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    }


def disagreement(before, after, expected) -> tuple[float, str]:
    """(the largest difference between `after` and `expected` in units of the one-step tolerance,
    the leaf where it is). `before`, `after`, `expected`: trees of one structure; `after` and
    `expected` two computations of one step from `before`. Below 1 means they agree."""
    before, after, expected = leaves(before), leaves(after), leaves(expected)
    assert before.keys() == after.keys() == expected.keys(), (after.keys() ^ expected.keys())
    worst = (0.0, "")
    for name, reference in expected.items():
        value = after[name]
        assert value.shape == reference.shape and value.dtype == reference.dtype, name
        if not np.issubdtype(reference.dtype, np.floating):
            ratio = 0.0 if np.array_equal(value, reference) else float("inf")
        else:
            value, reference = value.astype(np.float64), reference.astype(np.float64)
            start = before[name].astype(np.float64)
            if OPTIMIZER_STATE in name:  # a momentum trace: the step's new term is the gradient
                computed = np.maximum(np.abs(reference), np.abs(start))
            else:
                computed = np.abs(reference - start)
            tolerance = UPDATE_RTOL * np.max(computed, initial=0.0)
            tolerance += STATE_ULPS * FLOAT32_ULP * np.max(np.abs(reference), initial=0.0)
            difference = np.max(np.abs(value - reference), initial=0.0)
            ratio = 0.0 if difference == 0 else difference / max(tolerance, np.finfo(float).tiny)
            if not np.all(np.isfinite(value)):
                ratio = float("inf")
        worst = max(worst, (ratio, name))
    return worst


def assert_same_step(before, after, expected, context="") -> None:
    """Fails unless `after` and `expected` agree within the one-step tolerance of every leaf."""
    ratio, leaf = disagreement(before, after, expected)
    assert ratio <= 1.0, f"{context}: {leaf} is {ratio:.3g} one-step tolerances away"


def assert_defect_rejected(before, after, expected, defect: str) -> None:
    """Fails unless `after` (a step with `defect`) lands more than DEFECT_MARGIN tolerances from
    `expected` (the step without it)."""
    ratio, leaf = disagreement(before, after, expected)
    assert ratio > DEFECT_MARGIN, f"{defect}: only {ratio:.3g} tolerances away (at {leaf})"
