"""Sinkhorn plans, alignment and AlignMix (alignmix_jax.ot)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn
from scipy.special import logsumexp

from alignmix_jax import align, align_mix, sinkhorn_plan
from alignmix_jax.core.ot import (
    align_mix_with_plan,
    mean_position_norm,
    plan_statistics,
    pooled_relative_gap,
)

TRAINED_FEATURES = pathlib.Path(__file__).parent / "fixtures" / "trained_features.npz"


def reference_plan(a, b, epsilon, num_iters):
    """Float64 NumPy log-domain Sinkhorn for one pair `a (r, c)`, `b (s, c)`: g, then f updates."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    r, s = cost.shape
    f, g = np.zeros(r), np.zeros(s)
    for _ in range(num_iters):
        g = -epsilon * np.log(s) - epsilon * logsumexp((f[:, None] - cost) / epsilon, axis=0)
        f = -epsilon * np.log(r) - epsilon * logsumexp((g[None, :] - cost) / epsilon, axis=1)
    return np.exp((f[:, None] + g[None, :] - cost) / epsilon)


def reference_plans(a, b, epsilon, num_iters):
    return np.stack([reference_plan(x, y, epsilon, num_iters) for x, y in zip(a, b, strict=True)])


@pytest.fixture(scope="module")
def pair():
    """Two batches of token features `(B=4, N=6, C=5)` with norms of order 1."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    return 0.5 * jax.random.normal(key_a, (4, 6, 5)), 0.5 * jax.random.normal(key_b, (4, 6, 5))


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 1.0])
def test_plan_matches_float64_reference(pair, epsilon):
    a, b = pair[0], pair[1][:, :4]  # r = 6 positions against s = 4
    plan = sinkhorn_plan(a, b, epsilon=epsilon, num_iters=40)
    expected = reference_plans(a, b, epsilon, 40)
    assert plan.dtype == jnp.float32 and plan.shape == (4, 6, 4)
    np.testing.assert_allclose(plan, expected, rtol=1e-5, atol=1e-5 * expected.max())
    np.testing.assert_allclose(plan.sum(-1), 1 / 6, rtol=1e-6)


def test_plan_marginals_hold_at_convergence(pair):
    plan = sinkhorn_plan(*pair, epsilon=0.5, num_iters=300)
    np.testing.assert_allclose(plan.sum(-1), 1 / 6, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(-2), 1 / 6, rtol=1e-5)


def test_num_iters_is_exact_in_both_modes(pair):
    """7 updates (not ott's multiple of 10): equal to 7 reference updates, not 6 or 8."""
    a, b = pair
    plan = np.asarray(sinkhorn_plan(a, b, epsilon=0.05, num_iters=7))
    never_converging = np.asarray(sinkhorn_plan(a, b, epsilon=0.05, num_iters=7, threshold=1e-30))
    for iterations in (6, 7, 8):
        expected = reference_plans(a, b, 0.05, iterations)
        for result in (plan, never_converging):
            close = np.allclose(result, expected, rtol=1e-5, atol=1e-5 * expected.max())
            assert close == (iterations == 7)


def test_early_stopping_stops_at_the_threshold(pair):
    a, b = pair
    stopped = sinkhorn_plan(a, b, epsilon=0.05, num_iters=2000, threshold=1e-2)
    full = sinkhorn_plan(a, b, epsilon=0.05, num_iters=2000)
    column_error = np.abs(np.asarray(stopped).sum(-2) - 1 / 6).sum(-1)
    assert np.all(column_error < 1e-2)
    assert not np.allclose(stopped, full, atol=1e-6)  # it did stop before 2000 updates


def test_raw_features_with_norm_1e3_stay_finite():
    key_a, key_b = jax.random.split(jax.random.key(1))
    a = jax.random.normal(key_a, (2, 4, 4, 32))
    b = jax.random.normal(key_b, (2, 4, 4, 32))
    a = 1e3 * a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = 1e3 * b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    plan = sinkhorn_plan(a.reshape(2, 16, 32), b.reshape(2, 16, 32), epsilon=0.1)
    assert np.all(np.isfinite(plan))
    np.testing.assert_allclose(plan.sum(-1), 1 / 16, rtol=1e-5)
    np.testing.assert_allclose(plan.sum((-1, -2)), 1.0, rtol=1e-5)
    onto_a = align_mix(a, b, 0.3, direction=0, epsilon=0.1)
    # rows of R = r * P sum to 1: a convex combination of norm-1e3 positions has norm <= 1e3
    assert float(jnp.linalg.norm(onto_a, axis=-1).max()) <= 1e3 * (1 + 1e-4)
    # columns are far from converged at cost / epsilon ~ 1e7, so only finiteness holds for R.T
    assert np.all(np.isfinite(align_mix(a, b, 0.3, direction=1, epsilon=0.1)))


def test_known_permutation_is_recovered():
    """b is a with its positions shuffled: aligning b onto a gives back a exactly."""
    batch, height, width, channels = 2, 3, 3, 12
    rng = np.random.default_rng(0)
    # well separated positions: a scaled one-hot direction each plus small noise
    base = 3.0 * np.eye(channels)[: height * width] + 0.01 * rng.normal(size=(9, channels))
    a = np.stack([base, base[::-1]]).astype(np.float32)
    perms = [rng.permutation(9) for _ in range(batch)]
    b = np.stack([a[i][perms[i]] for i in range(batch)])
    plan = sinkhorn_plan(a, b, epsilon=0.05)
    np.testing.assert_allclose(align(a, b, plan), a, atol=1e-5)
    maps_a = a.reshape(batch, height, width, channels)
    maps_b = b.reshape(batch, height, width, channels)
    for lam in (0.0, 0.3, 1.0):
        onto_a = align_mix(maps_a, maps_b, lam, direction=0, epsilon=0.05)
        onto_b = align_mix(maps_a, maps_b, lam, direction=1, epsilon=0.05)
        np.testing.assert_allclose(onto_a, maps_a, atol=1e-5)
        np.testing.assert_allclose(onto_b, maps_b, atol=1e-5)


@pytest.fixture(scope="module")
def maps():
    """Feature maps `(B=8, H=2, W=3, C=4)` and their partners."""
    key_a, key_b = jax.random.split(jax.random.key(2))
    return jax.random.normal(key_a, (8, 2, 3, 4)), jax.random.normal(key_b, (8, 2, 3, 4))


def test_direction_semantics_and_lam_endpoints(maps):
    a, b = maps
    tokens_a, tokens_b = a.reshape(8, 6, 4), b.reshape(8, 6, 4)
    rows = 6 * np.asarray(sinkhorn_plan(tokens_a, tokens_b), np.float64)
    b_onto_a = (rows @ np.asarray(tokens_b, np.float64)).reshape(a.shape)
    a_onto_b = (rows.transpose(0, 2, 1) @ np.asarray(tokens_a, np.float64)).reshape(a.shape)
    np.testing.assert_allclose(align_mix(a, b, 1.0, direction=0), a, atol=1e-6)
    np.testing.assert_allclose(align_mix(a, b, 0.0, direction=1), b, atol=1e-6)
    np.testing.assert_allclose(align_mix(a, b, 0.0, direction=0), b_onto_a, atol=1e-5)
    np.testing.assert_allclose(align_mix(a, b, 1.0, direction=1), a_onto_b, atol=1e-5)
    np.testing.assert_allclose(
        align_mix(a, b, 0.3, direction=0), 0.3 * a + 0.7 * b_onto_a, atol=1e-5
    )
    np.testing.assert_allclose(
        align_mix(a, b, 0.3, direction=1), 0.3 * a_onto_b + 0.7 * b, atol=1e-5
    )


def test_per_example_lam_and_maps_equal_tokens(maps):
    a, b = maps
    lam = jnp.linspace(0.0, 1.0, 8)
    mixed = align_mix(a, b, lam, direction=1)
    for i in (0, 3, 7):
        one = align_mix(a[i : i + 1], b[i : i + 1], lam[i], direction=1)
        np.testing.assert_allclose(mixed[i : i + 1], one, atol=1e-6)
    tokens = align_mix(a.reshape(8, 6, 4), b.reshape(8, 6, 4), lam, direction=1)
    np.testing.assert_allclose(tokens.reshape(a.shape), mixed, atol=1e-6)


def test_gradients_reach_both_inputs_and_skip_the_plan(maps):
    a, b = maps
    weights = jax.random.normal(jax.random.key(3), a.shape)
    lam = 0.3
    grad_a, grad_b = jax.grad(
        lambda x, y: jnp.sum(weights * align_mix(x, y, lam, direction=0)), argnums=(0, 1)
    )(a, b)
    rows = 6 * sinkhorn_plan(a.reshape(8, 6, 4), b.reshape(8, 6, 4))
    # With the plan constant: d/dA = lam * W and d/dA' = (1 - lam) * R^T W.
    np.testing.assert_allclose(grad_a, lam * weights, atol=1e-6)
    expected_b = (1 - lam) * jnp.swapaxes(rows, 1, 2) @ weights.reshape(8, 6, 4)
    np.testing.assert_allclose(grad_b, expected_b.reshape(a.shape), atol=1e-5)
    assert float(jnp.abs(grad_b).max()) > 0.01
    plan_grad = jax.grad(lambda x: jnp.sum(weights[..., :1] * sinkhorn_plan(x, b)[..., :1]))(a)
    np.testing.assert_array_equal(plan_grad, 0.0)


def test_jit_vmap_and_eight_devices_match_eager(maps):
    a, b = maps
    lam = jnp.linspace(0.1, 0.9, 8)
    eager = {d: align_mix(a, b, lam, direction=d, num_iters=30) for d in (0, 1)}

    @jax.jit
    def mix(x, y, weights, direction):
        return align_mix(x, y, weights, direction=direction, num_iters=30)

    for d in (0, 1):
        np.testing.assert_allclose(mix(a, b, lam, jnp.int32(d)), eager[d], rtol=1e-5, atol=1e-5)
    groups = jax.vmap(mix, in_axes=(0, 0, 0, None))(
        a.reshape(2, 4, 2, 3, 4), b.reshape(2, 4, 2, 3, 4), lam.reshape(2, 4), jnp.bool_(True)
    )
    np.testing.assert_allclose(groups.reshape(a.shape), eager[1], rtol=1e-5, atol=1e-5)

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    sharded_args = [jax.device_put(v, sharding) for v in (a, b, lam)]
    sharded = mix(*sharded_args, jnp.int32(0))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(sharded, eager[0], rtol=1e-5, atol=1e-5)

    def per_device(check_vma):
        return jax.jit(
            jax.shard_map(
                lambda x, y, w: align_mix(x, y, w, direction=1, num_iters=30),
                mesh=mesh,
                in_specs=PartitionSpec("data"),
                out_specs=PartitionSpec("data"),
                check_vma=check_vma,
            )
        )

    np.testing.assert_allclose(per_device(False)(*sharded_args), eager[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"vary over the shard_map axes \['data'\]"):
        per_device(True)(*sharded_args)


def test_bfloat16_features(maps):
    a, b = (m.astype(jnp.bfloat16) for m in maps)
    mixed = align_mix(a, b, 0.4, direction=0, num_iters=30)
    assert mixed.dtype == jnp.bfloat16 and mixed.shape == a.shape
    reference = align_mix(
        a.astype(jnp.float32), b.astype(jnp.float32), 0.4, direction=0, num_iters=30
    )
    np.testing.assert_allclose(mixed.astype(jnp.float32), reference, rtol=1e-2, atol=1e-2)
    assert sinkhorn_plan(a, b).dtype == jnp.float32


def _equations(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (scan, while, cond, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = param if isinstance(param, list | tuple) else [param]
            for sub in inner:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def _avals(jaxpr):
    """Every abstract value produced anywhere in a jaxpr, sub-jaxprs included."""
    for eqn in _equations(jaxpr):
        yield from (var.aval for var in eqn.outvars)


def _has_pairwise_broadcast(fn, *args, positions, channels):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return any(
        tuple(getattr(aval, "shape", ()))[-3:] == (positions, positions, channels)
        for aval in _avals(jaxpr)
    )


def test_cost_uses_the_gemm_form_without_a_pairwise_broadcast(maps):
    a, b = maps  # 6 positions of 4 channels

    def mix(x, y):
        return align_mix(x, y, 0.5, direction=0, num_iters=3)

    def broadcast_cost(x, y):  # what the check must catch: a (B, r, s, C) difference tensor
        return jnp.sum((x[:, :, None, :] - y[:, None, :, :]) ** 2, axis=-1)

    tokens_a, tokens_b = a.reshape(8, 6, 4), b.reshape(8, 6, 4)
    assert _has_pairwise_broadcast(broadcast_cost, tokens_a, tokens_b, positions=6, channels=4)
    assert not _has_pairwise_broadcast(jax.jit(mix), a, b, positions=6, channels=4)


def _dot_precisions(fn, *args):
    """The `precision` of every dot_general in the jaxpr of `fn(*args)`."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [
        eqn.params["precision"]
        for eqn in _equations(jaxpr)
        if eqn.primitive.name == "dot_general"
    ]


@pytest.fixture(scope="module")
def trained_pair():
    """Last maps `(16, 4, 4, 128)` of a trained network and their partners (cost / eps ~1e3-1e4)."""
    features = np.load(TRAINED_FEATURES)["features"]
    return features, features[np.random.default_rng(0).permutation(len(features))]


def test_matmuls_run_at_highest_precision_under_a_bfloat16_default(trained_pair):
    """TF32 / bf16-pass matmuls give a cost wrong by more than epsilon at these feature norms.

    CPUs compute every float32 dot in full precision whatever the setting, so the numbers agree
    here in any case; the jaxpr shows what a GPU or TPU would run.
    """
    a, b = trained_pair
    tokens_a, tokens_b = a.reshape(16, 16, 128), b.reshape(16, 16, 128)
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    default_plan = sinkhorn_plan(tokens_a, tokens_b)
    default_mix = {d: align_mix(a, b, 0.3, direction=d) for d in (0, 1)}
    with jax.default_matmul_precision("bfloat16"):
        for fn, args in [
            (lambda x, y, d: align_mix_with_plan(x, y, 0.3, direction=d), (a, b, jnp.int32(1))),
            (lambda x, y: sinkhorn_plan(x, y, threshold=0.1), (tokens_a, tokens_b)),
            (lambda x, y, p: align(x, y, p), (tokens_a, tokens_b, default_plan)),
        ]:
            precisions = _dot_precisions(fn, *args)
            assert precisions and all(p == highest for p in precisions), precisions
        np.testing.assert_allclose(sinkhorn_plan(tokens_a, tokens_b), default_plan, atol=1e-5)
        for d in (0, 1):
            mixed = align_mix(a, b, 0.3, direction=d)
            np.testing.assert_allclose(mixed, default_mix[d], rtol=1e-5, atol=1e-5)


def ott_solver_plans(x, y, num_iters, scale_cost=1.0, epsilon=0.1):
    """Plans `(n, r, s)` of ott's `Sinkhorn` run as sinkhorn_plan ran it up to this version.

    A `lax.scan` of exactly `num_iters` updates (`min == max == inner_iterations`) on a
    `PointCloud`, and the plan as a row softmax of `(g - C) / eps` scaled by 1/r.
    """
    solver = sinkhorn.Sinkhorn(
        lse_mode=True,
        inner_iterations=num_iters,
        min_iterations=num_iters,
        max_iterations=num_iters,
        implicit_diff=None,
    )

    def one(xi, yi):
        geom = pointcloud.PointCloud(
            xi, yi, cost_fn=costs.SqEuclidean(), epsilon=epsilon, scale_cost=scale_cost
        )
        g = solver(linear_problem.LinearProblem(geom)).g
        return jax.nn.softmax((g[None, :] - geom.cost_matrix) / epsilon, axis=-1) / xi.shape[0]

    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(jax.vmap(one))(x, y))


@pytest.mark.parametrize(
    ("inputs", "scale_cost"),
    [("trained", 1.0), ("trained", "mean"), ("relu512", 1.0)],
)
def test_fixed_updates_equal_ott_sinkhorn_to_float32_rounding(trained_pair, inputs, scale_cost):
    """One call of the fixed-update path against ott's solver on the same positions.

    Both are float32 evaluations of the same 100 updates; they round differently (ott adds and
    subtracts the old potential inside each log-sum-exp, this path divides the cost by epsilon
    once). Each update rounds its log-sum-exp arguments `(f_i - C_ij) / eps`, of size up to
    m = max C / eps, to a relative 2^-24, which moves the log of a plan entry by up to 2^-24 m,
    and R = r P has entries <= 1: the tolerance on R is 8 * 2^-24 * m. Measured: 4.5e-4 against
    6.7e-3 on trained maps (m = 1.4e4), 9.5e-4 against 2.1e-3 on post-ReLU normal maps of 512
    channels (m = 4.4e3), 3.6e-7 against 1.7e-5 with scale_cost "mean" (m = 36). One update
    fewer moves R by 0.046 and 0.068 at scale_cost 1, beyond the tolerance.
    """
    if inputs == "trained":
        x, y = (m.reshape(16, 16, 128) for m in trained_pair)
    else:
        keys = jax.random.split(jax.random.key(4))
        x, y = (np.asarray(jax.nn.relu(jax.random.normal(k, (4, 16, 512)))) for k in keys)
    r = x.shape[1]
    cost = ((x[:, :, None].astype(np.float64) - y[:, None]) ** 2).sum(-1)
    if scale_cost == "mean":
        cost = cost / cost.mean((1, 2), keepdims=True)
    tolerance = 8 * 2.0**-24 * cost.max() / 0.1
    plan = r * np.asarray(sinkhorn_plan(x, y, scale_cost=scale_cost))
    expected = r * ott_solver_plans(x, y, 100, scale_cost)
    np.testing.assert_allclose(plan, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(plan.sum(-1), 1.0, rtol=1e-6)
    if scale_cost == 1.0:  # far from convergence: the 100th update still moves R
        one_fewer = r * ott_solver_plans(x, y, 99)
        assert np.abs(one_fewer - expected).max() > 4 * tolerance


def test_align_mix_with_plan_returns_the_plan_it_mixed_with(maps):
    a, b = maps
    lam = jnp.linspace(0.0, 1.0, 8)
    plan = sinkhorn_plan(a.reshape(8, 6, 4), b.reshape(8, 6, 4), num_iters=30)

    @jax.jit
    def mix(direction):
        return align_mix_with_plan(a, b, lam, direction=direction, num_iters=30)

    for d in (0, 1):
        mixed, mixed_plan = mix(jnp.int32(d))
        assert mixed_plan.shape == (8, 6, 6) and mixed_plan.dtype == jnp.float32
        np.testing.assert_allclose(mixed_plan, plan, rtol=1e-5, atol=1e-6)
        expected = align_mix(a, b, lam, direction=d, num_iters=30)
        np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-5)


def test_plan_statistics_of_known_plans():
    permutation = np.eye(3)[[2, 0, 1]] / 3  # rows and columns exact, one-hot
    uniform = np.full((3, 3), 1 / 9)
    # rows sum to 1/2 = 1/r; columns 0.8, 0.2, 0 against 1/3; both rows pick column 0
    skewed = np.array([[0.3, 0.2, 0.0], [0.5, 0.0, 0.0]])
    expected = {
        "permutation": (permutation, 0.0, 1.0, 1.0),
        "uniform": (uniform, 0.0, 1 / 3, 1 / 3),
        "skewed": (skewed, 0.8 - 1 / 3 + 1 / 3 - 0.2 + 1 / 3, (0.6 + 1.0) / 2, 1 / 3),
    }
    for name, (plan, column_l1, row_max, coverage) in expected.items():
        stats = plan_statistics(plan.astype(np.float32))
        assert set(stats) == {"column_marginal_l1", "row_max", "column_coverage"}
        assert all(v.dtype == jnp.float32 and v.shape == () for v in stats.values())
        got = (stats["column_marginal_l1"], stats["row_max"], stats["column_coverage"])
        np.testing.assert_allclose(got, (column_l1, row_max, coverage), atol=1e-6, err_msg=name)
    batch = plan_statistics(np.stack([permutation, uniform]).astype(np.float32))
    np.testing.assert_allclose(batch["row_max"], (1.0 + 1 / 3) / 2, rtol=1e-6)
    np.testing.assert_allclose(batch["column_coverage"], (1.0 + 1 / 3) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"plan must have rank >= 2"):
        plan_statistics(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"plan must have a floating dtype"):
        plan_statistics(np.ones((2, 2), np.int32))


def test_plan_statistics_of_a_recovered_permutation_and_of_trained_features(trained_pair):
    a, b = trained_pair
    perm = np.random.default_rng(1).permutation(16)
    shuffled = sinkhorn_plan(a.reshape(16, 16, 128), a.reshape(16, 16, 128)[:, perm])
    stats = plan_statistics(shuffled)
    assert float(stats["row_max"]) > 0.999 and float(stats["column_coverage"]) == 1.0
    assert float(stats["column_marginal_l1"]) < 1e-3
    # unrelated images: rows near one-hot (cost / eps ~1e3) but columns far from 1/s
    stats = plan_statistics(sinkhorn_plan(a.reshape(16, 16, 128), b.reshape(16, 16, 128)))
    assert 0.8 < float(stats["row_max"]) < 0.99
    assert 0.2 < float(stats["column_marginal_l1"]) < 0.8
    assert 0.6 < float(stats["column_coverage"]) < 0.95


def test_mean_position_norm():
    features = np.zeros((2, 2, 2, 3), np.float32)
    features[0, 0, 0] = (3.0, 4.0, 0.0)  # norm 5, the other 7 positions 0 ...
    features[1] = (0.0, 0.0, 2.0)  # ... but these 4, norm 2
    value = mean_position_norm(features)
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(value, (5.0 + 4 * 2.0) / 8, rtol=1e-6)
    np.testing.assert_allclose(
        mean_position_norm(features.reshape(2, 4, 3).astype(jnp.bfloat16)), 13 / 8, rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"features must have rank >= 3"):
        mean_position_norm(features[0, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a, b: align_mix(a, b[:, :1], 0.5, direction=0), r"a and b must have the same"),
        (lambda a, b: align_mix(a[0, 0], b[0, 0], 0.5, direction=0), r"a must have rank >= 3"),
        (lambda a, b: align_mix(a, b, 1.5, direction=0), r"lam must lie in \[0, 1\], got \[1.5\]"),
        (lambda a, b: align_mix(a, b, -0.1, direction=0), r"lam must lie in \[0, 1\]"),
        (
            lambda a, b: align_mix(a, b, jnp.ones(3), direction=0),
            r"lam must be a scalar or .*\(8,\)",
        ),
        (lambda a, b: align_mix(a, b, 0.5, direction=2), r"direction must be 0 or 1, got 2"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0.5), r"direction must be 0 or 1"),
        (lambda a, b: align_mix(a, b, 0.5, direction="left"), r"direction must be 0 or 1"),
        (lambda a, b: align_mix(a, b, 0.5, direction=jnp.int32(3)), r"direction must be 0 or 1"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, epsilon=0.0), r"epsilon must be .*> 0"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, epsilon=-1), r"epsilon must be .*got -1"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, num_iters=0), r"num_iters must be .*>= 1"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, num_iters=2.5), r"num_iters must be an"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, threshold=0), r"threshold must be"),
        (lambda a, b: align_mix(a, b, 0.5, direction=0, scale_cost="mode"), r"scale_cost must"),
        (lambda a, b: sinkhorn_plan(a[0, 0], b[0, 0, :, :3]), r"share leading dimensions"),
        (lambda a, b: sinkhorn_plan(a[0, 0, 0], b[0, 0, 0]), r"a must have rank >= 2"),
        (lambda a, b: align(a[0], b[0], jnp.ones((2, 3, 2))), r"plan must have shape"),
    ],
)
def test_bad_input_raises_a_clear_value_error(maps, call, message):
    with pytest.raises(ValueError, match=message):
        call(*maps)


def test_value_checks_are_skipped_for_traced_lam_and_epsilon(maps):
    a, b = maps
    mix = jax.jit(lambda lam, eps: align_mix(a, b, lam, direction=0, epsilon=eps, num_iters=3))
    assert mix(0.5, 0.1).shape == a.shape
    with pytest.raises(ValueError, match=r"a and b must have the same"):
        jax.jit(lambda x: align_mix(x, b[:, :1], 0.5, direction=0))(a)
    # Python numbers stay concrete inside jit, so their values are still checked there
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        jax.jit(lambda x: align_mix(x, b, 1.5, direction=0))(a)
    with pytest.raises(ValueError, match=r"epsilon must be a finite number > 0, got 0.0"):
        jax.jit(lambda x: align_mix(x, b, 0.5, direction=0, epsilon=0.0))(a)
    with pytest.raises(ValueError, match=r"direction must be 0 or 1, got 2"):
        jax.jit(lambda x: align_mix(x, b, 0.5, direction=np.int32(2)))(a)


def test_pooled_gap_is_zero_for_exact_marginals_and_the_column_error_otherwise():
    """Pooling lam a + (1 - lam) r P b gives lam mean(a) + (1 - lam) sum_j c_j b_j (c_j = r times
    P's column sums): the linear mix's pool exactly when P's columns are exact."""
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 4, 5)).astype(np.float32) for _ in range(2))
    lam = 0.3
    linear = lam * a + (1 - lam) * b
    permutation = np.eye(4, dtype=np.float32)[[2, 0, 3, 1]] / 4
    exact = lam * a + (1 - lam) * np.asarray(align(a, b, np.broadcast_to(permutation, (3, 4, 4))))
    assert float(pooled_relative_gap(exact, linear)) < 1e-6
    onto_first = np.zeros((3, 4, 4), np.float32)
    onto_first[:, :, 0] = 0.25  # every position takes b's first: column sums (1, 0, 0, 0)
    collapsed = lam * a + (1 - lam) * np.asarray(align(a, b, onto_first))
    expected = np.linalg.norm((1 - lam) * (b[:, 0] - b.mean(1)), axis=-1) / np.linalg.norm(
        linear.mean(1), axis=-1)
    np.testing.assert_allclose(pooled_relative_gap(collapsed, linear), expected.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="reference"):
        pooled_relative_gap(a, b[:, :3])
