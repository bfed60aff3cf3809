"""Entropic optimal-transport alignment of feature maps and AlignMix.

Features are sets of positions: a `(B, H, W, C)` map is `r = H * W` positions of `C` channels, a
`(B, N, C)` token sequence is `r = N` positions. The cost between two sets is the raw squared
Euclidean distance, evaluated once per pair in the GEMM form `||a||^2 + ||b||^2 - 2 a.b` (ott's
`PointCloud` with `SqEuclidean`, which also applies `scale_cost`), never as a `(B, r, s, C)`
broadcast. The plan is entropic OT with uniform marginals solved by log-domain Sinkhorn from zero
potentials, updating b's potential first and a's last (so the plan's rows are exact):

- `num_iters` updates exactly (`threshold=None`, the training op): a `lax.fori_loop` of the two
  log-sum-exp updates on the materialised cost divided by epsilon, nothing else per update;
  the same iterates as ott's `Sinkhorn` with `min_iterations == max_iterations`;
- early stopping (`threshold` given): ott's `Sinkhorn` on the materialised cost.

`align` moves features with a plan, `align_mix` / `align_mix_with_plan` mix aligned maps;
`plan_statistics`, `mean_position_norm` and `pooled_relative_gap` describe plans and mixes.
`align_mix(a, b, lam, direction=d)` is the official AlignMixup op applied to `(b, a, 1 - lam,
1 - d)`: docs/library.md ("`align_mix` and the official op"), tests/test_official_sinkhorn.py.

Precision: every matmul on raw features (the cost, the moves `R @ b`) runs at `HIGHEST`, whatever
`jax.default_matmul_precision` is in force. At the default, GPUs use TF32 and TPUs bf16 passes;
emulated on trained features scaled to norm ~30 (cost / epsilon ~1e4), bf16 operands put the
cost off by up to 3.8 (median 0.2) and TF32 by up to 0.4, against epsilon = 0.1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import costs, geometry, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from alignmix_jax.core import _checks

_MAX_CHECK_INTERVAL = 10
# Every matmul that touches raw features (the cost, the moves `R @ b`) runs in full float32.
_MATMUL_PRECISION = "highest"


def _check_interval(num_iters: int) -> int:
    """Largest divisor of `num_iters` not above 10: how often early stopping tests convergence."""
    return max(d for d in range(1, min(num_iters, _MAX_CHECK_INTERVAL) + 1) if num_iters % d == 0)


def _early_stopping_solver(num_iters: int, threshold) -> sinkhorn.Sinkhorn:
    """ott's log-domain Sinkhorn stopping once the column marginal's L1 error is below `threshold`.

    The error is tested every `_check_interval(num_iters)` updates (a divisor of `num_iters`, so
    the cap of `num_iters` updates is exact) inside a `while_loop`.
    """
    return sinkhorn.Sinkhorn(
        lse_mode=True,
        threshold=threshold,
        inner_iterations=_check_interval(num_iters),
        min_iterations=0,
        max_iterations=num_iters,
        implicit_diff=None,
    )


def _cost_geometry(x, y, epsilon, scale_cost) -> geometry.Geometry:
    """ott geometry `(r, s)` between `x (r, c)` and `y (s, c)` with its cost matrix computed once.

    `PointCloud` recomputes its cost matrix wherever it is read; a solver loop reading it in every
    update relies on the compiler to hoist that matmul out of the loop. The `Geometry` returned
    holds the scaled squared-Euclidean cost as an array, evaluated here once.
    """
    cloud = pointcloud.PointCloud(
        x, y, cost_fn=costs.SqEuclidean(), epsilon=epsilon, scale_cost=scale_cost
    )
    return geometry.Geometry(cost_matrix=cloud.cost_matrix, epsilon=cloud.epsilon)


def _column_potential_fixed(cost_over_eps, num_iters: int):
    """b's potential g / epsilon `(s,)` after exactly `num_iters` log-domain Sinkhorn updates.

    `cost_over_eps (r, s)` is the cost divided by epsilon; the marginals are uniform (1/r, 1/s).
    From zero potentials, each update sets g (b's potential) from f, then f from the new g, both in
    units of epsilon: ott's `Sinkhorn.lse_step` without momentum, Anderson acceleration or
    unbalanced terms, and without its per-update bookkeeping (marginal errors, the convergence
    `cond`). Dividing the cost by epsilon once saves a multiply per entry and update.
    """
    r, s = cost_over_eps.shape
    log_a, log_b = -jnp.log(float(r)), -jnp.log(float(s))

    def update(_, potentials):
        f, _ = potentials
        g = log_b - jax.nn.logsumexp(f[:, None] - cost_over_eps, axis=0)
        f = log_a - jax.nn.logsumexp(g[None, :] - cost_over_eps, axis=1)
        return f, g

    zeros = (jnp.zeros(r, cost_over_eps.dtype), jnp.zeros(s, cost_over_eps.dtype))
    _, g = jax.lax.fori_loop(0, num_iters, update, zeros)
    return g


def _single_plan(x, y, epsilon, num_iters, threshold, scale_cost):
    """Plan `(r, s)` between positions `x (r, c)` and `y (s, c)`, rows summing to exactly 1/r.

    The plan is exp(f + g - C) (in units of epsilon), and the last update sets f to minus the
    log-sum-exp over each row of g - C (plus log 1/r), so the plan equals a row softmax of g - C
    scaled by 1/r: that form keeps rows summing to 1/r in float32 even when C / eps is ~1e7.
    """
    geom = _cost_geometry(x, y, epsilon, scale_cost)
    cost_over_eps = geom.cost_matrix / geom.epsilon
    if threshold is None:
        g_over_eps = _column_potential_fixed(cost_over_eps, num_iters)
    else:
        output = _early_stopping_solver(num_iters, threshold)(linear_problem.LinearProblem(geom))
        g_over_eps = output.g / geom.epsilon
    return jax.nn.softmax(g_over_eps[None, :] - cost_over_eps, axis=-1) / x.shape[0]


def _outside_vma_checked_shard_map(*arrays) -> None:
    """Raise a clear error for inputs of a `jax.shard_map` that runs with `check_vma=True`.

    ott-jax 0.6.0's Sinkhorn (early stopping) has a `lax.cond` whose branches differ in their
    varying mesh axes, and the fixed loop starts from zero potentials that vary over no axis while
    its updates vary over the features' axes: `check_vma=True` rejects both with a type error;
    `check_vma=False` runs them per device.
    """
    for array in arrays:
        varying = jax.typeof(array).manual_axis_type.varying
        if varying:
            raise ValueError(
                f"features vary over the shard_map axes {sorted(varying)} under check_vma=True; "
                "the Sinkhorn solvers need jax.shard_map(..., check_vma=False)"
            )


def _position_sets(a, b):
    """`a (..., r, c)` and `b (..., s, c)` as arrays, checked to share leading dims and c."""
    a = _checks.as_array(a, "a")
    b = _checks.as_array(b, "b")
    _checks.min_rank(a, "a", 2, "(..., r, c)")
    _checks.min_rank(b, "b", 2, "(..., s, c)")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
        raise ValueError(
            "a (..., r, c) and b (..., s, c) must share leading dimensions and channels c, got "
            f"a {a.shape} and b {b.shape}"
        )
    return a, b


def validated_options(epsilon, num_iters, threshold, scale_cost):
    """The Sinkhorn options of `sinkhorn_plan` and `align_mix`, checked: (epsilon float32 scalar,
    num_iters int, threshold float32 scalar or None, scale_cost float or name); a ValueError that
    names the option otherwise. The one check of these ranges (the trainer's config uses it)."""
    epsilon = _checks.positive_scalar(epsilon, "epsilon")
    num_iters = _checks.static_int(num_iters, "num_iters", minimum=1)
    if threshold is not None:
        threshold = _checks.positive_scalar(threshold, "threshold")
    scale_cost = _checks.scale_cost_option(scale_cost)
    return epsilon, num_iters, threshold, scale_cost


def _plan(x, y, epsilon, num_iters, threshold, scale_cost):
    """Plans `(n, r, s)` between float32 `x (n, r, c)` and `y (n, s, c)`, one problem each.

    Traced under `jax.default_matmul_precision("highest")`: ott's `PointCloud` evaluates the cost
    with its own matmuls and takes no precision argument, and at the caller's default precision
    (TF32 on GPUs, bf16 passes on TPUs) the cost of raw features is wrong by more than epsilon.
    """
    plan_fn = jax.vmap(
        lambda xi, yi: _single_plan(xi, yi, epsilon, num_iters, threshold, scale_cost)
    )
    with jax.default_matmul_precision(_MATMUL_PRECISION):
        return plan_fn(jax.lax.stop_gradient(x), jax.lax.stop_gradient(y))


@functools.partial(jax.jit, static_argnames=("num_iters", "scale_cost"))
def _plan_batched(a, b, epsilon, threshold, *, num_iters, scale_cost):
    """`sinkhorn_plan` on validated inputs `a (..., r, c)`, `b (..., s, c)` -> `(..., r, s)`."""
    lead, (r, c), s = a.shape[:-2], a.shape[-2:], b.shape[-2]
    x = a.reshape((-1, r, c)).astype(jnp.float32)
    y = b.reshape((-1, s, c)).astype(jnp.float32)
    return _plan(x, y, epsilon, num_iters, threshold, scale_cost).reshape(lead + (r, s))


def sinkhorn_plan(a, b, *, epsilon=0.1, num_iters=100, threshold=None, scale_cost=1.0):
    """Entropic OT plan between the positions of `a` and `b`, stop-gradient, float32.

    Args:
      a: `(..., r, c)` features, r positions of c channels (any float dtype; computed in float32).
      b: `(..., s, c)` features with the same leading dimensions and channels as `a`.
      epsilon: entropic regularisation, absolute on the raw squared-Euclidean cost (> 0).
      num_iters: number of log-domain Sinkhorn updates (exactly this many unless `threshold`).
      threshold: when given, stop early once the L1 error of the column marginal is below it,
        tested every `d` updates (`d` the largest divisor of `num_iters` up to 10), at most
        `num_iters` updates. Under `vmap` every problem runs as long as the slowest one.
      scale_cost: passed to ott: the cost is divided by this number, or by a statistic of it
        ("mean", "max_cost", "median", "max_norm", "max_bound") for a scale-free `epsilon`.

    Returns:
      Plan `(..., r, s)` float32 with row sums exactly 1/r and column sums 1/s up to the
      convergence of the solver (raw features of norm ~1e3 at epsilon 0.1 give cost / epsilon
      ~1e7: the columns are then far from converged after 100 updates, the rows stay exact and
      the plan finite). No gradient flows through it. The leading dimensions are batched with
      `vmap`, one problem each.
    """
    a, b = _position_sets(a, b)
    _checks.floating(a, "a")
    _checks.floating(b, "b")
    _outside_vma_checked_shard_map(a, b)
    epsilon, num_iters, threshold, scale_cost = validated_options(
        epsilon, num_iters, threshold, scale_cost
    )
    return _plan_batched(a, b, epsilon, threshold, num_iters=num_iters, scale_cost=scale_cost)


def _move(rows, features):
    """`rows (..., r, s) @ features (..., s, c)` in float32 at full matmul precision."""
    return jnp.matmul(rows, features, precision=_MATMUL_PRECISION)


def align(a, b, plan):
    """`r * plan @ b`: b's features moved onto a's positions.

    Args:
      a: `(..., r, c)` features whose positions receive the alignment (only its shape is read).
      b: `(..., s, c)` features to move.
      plan: `(..., r, s)` transport plan between `a` and `b` with rows summing to 1/r.

    Returns:
      `(..., r, c)`, the shape and dtype of `a`; row i is the plan-weighted mean of b's rows.
      Computed in float32.
    """
    a, b = _position_sets(a, b)
    plan = _checks.as_array(plan, "plan")
    expected_plan = a.shape[:-1] + (b.shape[-2],)
    if plan.shape != expected_plan:
        raise ValueError(f"plan must have shape (..., r, s) = {expected_plan}, got {plan.shape}")
    r = a.shape[-2]
    moved = _move(r * plan.astype(jnp.float32), b.astype(jnp.float32))
    return moved.astype(a.dtype)


def _direction(direction):
    """A Python int 0/1, or a scalar bool/int array (nonzero means 1), validated."""
    if isinstance(direction, bool | int):
        if direction not in (0, 1):
            raise ValueError(f"direction must be 0 or 1, got {direction!r}")
        return int(direction)
    try:
        array = jnp.asarray(direction)
    except TypeError:
        raise ValueError(
            f"direction must be 0 or 1 (a Python int or a scalar int/bool array), got "
            f"{direction!r} of type {type(direction).__name__}"
        ) from None
    if array.ndim != 0 or not (
        jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.bool_)
    ):
        raise ValueError(
            "direction must be 0 or 1 (a Python int or a scalar int/bool array), got an array "
            f"of shape {array.shape} and dtype {array.dtype}"
        )
    if _checks.is_concrete(direction):
        value = int(np.asarray(direction))
        if value not in (0, 1):
            raise ValueError(f"direction must be 0 or 1, got {value}")
        return value
    return array.astype(jnp.bool_)


def align_mix(a, b, lam, *, direction, epsilon=0.1, num_iters=100, threshold=None, scale_cost=1.0):
    """AlignMix: mix feature maps after aligning them with an entropic OT plan.

    With P the plan between a's and b's positions and R = r * P (rows sum to 1):
    direction 0: `lam * A + (1 - lam) * (R @ A')` (A' moved onto A's positions);
    direction 1: `lam * (R.T @ A) + (1 - lam) * A'` (A moved onto A''s positions).
    In both directions the label weight is `lam` for a's label and `1 - lam` for b's.
    The official op with its partner roles swapped; see the module docstring.

    Args:
      a: `(B, H, W, C)` feature maps or `(B, N, C)` tokens (any `(B, *positions, C)`).
      b: partner features, the same shape as `a`.
      lam: mixing weight in [0, 1], a scalar or `(B,)`.
      direction: 0 or 1; a Python int, or a scalar int/bool array that may be traced (a coin
        drawn inside `jit`; nonzero means 1). One plan serves both directions.
      epsilon, num_iters, threshold, scale_cost: as in `sinkhorn_plan`.

    Returns:
      Mixed features with `a`'s shape and dtype (computed in float32). Gradients flow to `a` and
      `b`; none flows through the plan.
    """
    mixed, _ = align_mix_with_plan(
        a,
        b,
        lam,
        direction=direction,
        epsilon=epsilon,
        num_iters=num_iters,
        threshold=threshold,
        scale_cost=scale_cost,
    )
    return mixed


def align_mix_with_plan(
    a, b, lam, *, direction, epsilon=0.1, num_iters=100, threshold=None, scale_cost=1.0
):
    """`align_mix` that also returns the plan it mixed with (one solve), for diagnostics.

    Args:
      a, b, lam, direction, epsilon, num_iters, threshold, scale_cost: as in `align_mix`.

    Returns:
      `(mixed, plan)`: `mixed` exactly as `align_mix` returns it; `plan` `(B, r, r)` float32,
      r = H * W (or N), the plan P between a's and b's positions (`sinkhorn_plan` of the
      flattened features: rows sum to 1/r), stop-gradient. Under `jit`, an unused plan costs
      nothing; `plan_statistics(plan)` summarises it.
    """
    a = _checks.as_array(a, "a")
    b = _checks.as_array(b, "b")
    _checks.min_rank(a, "a", 3, "(B, H, W, C) or (B, N, C)")
    _checks.same_shape(a, b, "a", "b")
    _checks.floating(a, "a")
    _checks.floating(b, "b")
    _outside_vma_checked_shard_map(a, b)
    lam = jnp.broadcast_to(_checks.lam_array(lam, a.shape[0]), a.shape[:1])
    direction = _direction(direction)
    epsilon, num_iters, threshold, scale_cost = validated_options(
        epsilon, num_iters, threshold, scale_cost
    )
    if isinstance(direction, int):
        static_direction, flip = direction, None
    else:
        static_direction, flip = None, direction
    return _align_mix_validated(
        a,
        b,
        lam,
        flip,
        epsilon,
        threshold,
        direction=static_direction,
        num_iters=num_iters,
        scale_cost=scale_cost,
    )


@functools.partial(jax.jit, static_argnames=("direction", "num_iters", "scale_cost"))
def _align_mix_validated(a, b, lam, flip, epsilon, threshold, *, direction, num_iters, scale_cost):
    """`align_mix_with_plan` on validated inputs; `direction` 0/1 when static, else the bool
    array `flip`. Returns `(mixed, plan)`."""
    batch, channels = a.shape[0], a.shape[-1]
    lam = lam[:, None, None]
    x = a.reshape((batch, -1, channels)).astype(jnp.float32)
    y = b.reshape((batch, -1, channels)).astype(jnp.float32)
    plan = _plan(x, y, epsilon, num_iters, threshold, scale_cost)
    rows = x.shape[1] * plan

    def onto_a():
        return lam * x + (1.0 - lam) * _move(rows, y)

    def onto_b():
        return lam * _move(jnp.swapaxes(rows, -1, -2), x) + (1.0 - lam) * y

    if direction is None:
        mixed = jnp.where(flip, onto_b(), onto_a())
    else:
        mixed = onto_b() if direction else onto_a()
    return mixed.reshape(a.shape).astype(a.dtype), plan


def plan_statistics(plan):
    """How a plan from `sinkhorn_plan` / `align_mix_with_plan` aligns: float32 scalars.

    Args:
      plan: `(..., r, s)` plans P with rows summing to 1/r (the leading dimensions are a batch).

    Returns:
      A dict of float32 scalars, each a mean over the leading dimensions:
      "column_marginal_l1": `sum_j |sum_i P_ij - 1/s|`, the L1 error of the marginal the solver
        does not make exact (0 at convergence, < 2 always);
      "row_max": mean over rows of `max_j R_ij`, R = r * P: 1 when every row of R is one-hot
        (each of a's positions takes one of b's; a permutation when also "column_coverage" is
        1), 1/s for the uniform plan;
      "column_coverage": fraction of b's positions that are the largest entry of at least one
        row (1 for a permutation, 1/s when every row picks the same position).
    """
    plan = _checks.as_array(plan, "plan")
    _checks.min_rank(plan, "plan", 2, "(..., r, s)")
    _checks.floating(plan, "plan")
    plan = plan.astype(jnp.float32)
    r, s = plan.shape[-2:]
    column_error = jnp.abs(plan.sum(-2) - 1.0 / s).sum(-1)
    row_max = r * plan.max(-1)
    chosen = jax.nn.one_hot(jnp.argmax(plan, -1), s, dtype=jnp.float32).max(-2)
    return {
        "column_marginal_l1": column_error.mean(),
        "row_max": row_max.mean(),
        "column_coverage": chosen.mean(),
    }


def mean_position_norm(features):
    """Mean L2 norm of the positions of `(B, H, W, C)` maps or `(B, N, C)` tokens, float32 `()`."""
    features = _checks.as_array(features, "features")
    _checks.min_rank(features, "features", 3, "(B, H, W, C) or (B, N, C)")
    _checks.floating(features, "features")
    return jnp.linalg.norm(features.astype(jnp.float32), axis=-1).mean()


def pooled_relative_gap(mixed, reference):
    """How far global average pooling of `mixed` lands from pooling `reference`, float32 `()`.

    Args:
      mixed: `(B, H, W, C)` maps or `(B, N, C)` tokens, e.g. the aligned mix
        `lam A + (1 - lam) R A'`.
      reference: the same shape, e.g. the linear mix `lam A + (1 - lam) A'` of the same pair and
        lam.

    Returns:
      The mean over the batch of `||pool(mixed) - pool(reference)|| / ||pool(reference)||`, pool
      the mean over positions. With R = r P and exact marginals the pooled aligned mix equals the
      pooled linear one, so this measures what the alignment can still pass to a pooled head.
    """
    mixed = _checks.as_array(mixed, "mixed")
    reference = _checks.as_array(reference, "reference")
    _checks.min_rank(mixed, "mixed", 3, "(B, H, W, C) or (B, N, C)")
    _checks.same_shape(mixed, reference, "mixed", "reference")
    axes = tuple(range(1, mixed.ndim - 1))
    pooled = mixed.astype(jnp.float32).mean(axes)
    pooled_reference = reference.astype(jnp.float32).mean(axes)
    gap = jnp.linalg.norm(pooled - pooled_reference, axis=-1)
    return (gap / jnp.maximum(jnp.linalg.norm(pooled_reference, axis=-1), 1e-12)).mean()
