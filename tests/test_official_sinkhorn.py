"""`align_mix` against a float64 NumPy transcription of the official AlignMixup op.

The official op (github.com/shashankvkt/AlignMixup_CVPR22, cifar10_100/utils/OT.py and
`mixup_aligned` in cifar10_100/models/resnet18_classifier.py) is transcribed below, written anew in
NumPy float64: log-domain Sinkhorn updating u (rows) then v (columns), `1e-8` added to the
marginals inside the logs, at most 100 iterations, stopping once the batch mean of the L1 change of
u is below 0.1; plan `exp(M(C, u, v))`; features in its `(B, C, r)` layout. Findings pinned here
(documented with their measurements in docs/library.md, "`align_mix` and the official op"):

- the official op on `(a, b, lam, direction d)` IS the project's `align_mix(b, a, 1 - lam,
  direction=1 - d)`: the same iterates with the partners' roles swapped (and the same label
  weights), to float32 precision at the training regime;
- on the same arguments the two are different ops at the training regime (cost / eps ~1e3-1e4):
  their plans pick different partners for about half the positions;
- there, the official stopping rule never fires: it runs all 100 iterations, as the project does.
"""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from alignmix_jax import align_mix, sinkhorn_plan

TRAINED_FEATURES = pathlib.Path(__file__).parent / "fixtures" / "trained_features.npz"
LAM = 0.3


def official_sinkhorn(x, y, eps=0.1, max_iter=100, thresh=0.1):
    """Official `SinkhornDistance(eps, max_iter)(x, y)` in float64.

    Args:
      x: `(B, r, c)` positions; y: `(B, s, c)` positions.

    Returns:
      `(plan (B, r, s), iterations run)`; columns of the plan sum to 1/s + 1e-8, rows do not.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = (np.abs(x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    batch, r, s = cost.shape
    mu, nu = np.full((batch, r), 1.0 / r), np.full((batch, s), 1.0 / s)
    u, v = np.zeros_like(mu), np.zeros_like(nu)

    def modified_cost(u, v):  # M_ij = (-C_ij + u_i + v_j) / eps
        return (-cost + u[:, :, None] + v[:, None, :]) / eps

    iterations = 0
    for _ in range(max_iter):
        previous_u = u
        u = eps * (np.log(mu + 1e-8) - logsumexp(modified_cost(u, v), axis=-1)) + u
        v = eps * (np.log(nu + 1e-8) - logsumexp(modified_cost(u, v), axis=-2)) + v
        change = np.abs(u - previous_u).sum(-1).mean()
        iterations += 1
        if change < thresh:
            break
    return np.exp(modified_cost(u, v)), iterations


def official_mixup_aligned(out, partner, lam, align_mix_choice, **sinkhorn_options):
    """Official `mixup_aligned` on NCHW maps `out`, `partner = out[indices]`, `(B, C, H, W)`.

    Returns the mixed `(B, C, H, W)` maps; the label weights are lam for out's, 1 - lam for
    partner's labels.
    """
    batch, channels, height, width = out.shape
    feat1 = out.reshape(batch, channels, -1)  # (B, C, r)
    feat2 = partner.reshape(batch, channels, -1)
    plan, _ = official_sinkhorn(
        feat1.transpose(0, 2, 1), feat2.transpose(0, 2, 1), **sinkhorn_options
    )
    plan = plan * (height * width)
    if align_mix_choice == 0:
        f1 = (feat2 @ plan.transpose(0, 2, 1)).reshape(out.shape)
        return feat1.reshape(out.shape) * lam + f1 * (1 - lam)
    f2 = (feat1 @ plan).reshape(out.shape)
    return f2 * lam + feat2.reshape(out.shape) * (1 - lam)


def to_nchw(maps):
    return np.asarray(maps, np.float64).transpose(0, 3, 1, 2)


def marginal_l1_errors(plan):
    """`(row, column)` L1 marginal errors of `(B, r, s)` plans, means over the batch."""
    r, s = plan.shape[-2:]
    rows = np.abs(plan.sum(-1) - 1 / r).sum(-1).mean()
    columns = np.abs(plan.sum(-2) - 1 / s).sum(-1).mean()
    return rows, columns


@pytest.fixture(scope="module")
def small_pair():
    """Random `(4, 6, 5)` positions of norm ~1 and partners: an easy, well-conditioned problem."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 6, 5)).astype(np.float32), rng.normal(size=(4, 6, 5)).astype(
        np.float32
    )


def test_official_transcription_solves_the_same_problem(small_pair):
    """Converged, both solvers give the one entropic OT plan; the 0.1 rule stops it early."""
    a, b = small_pair
    converged, _ = official_sinkhorn(a, b, eps=1.0, max_iter=3000, thresh=0.0)
    project = sinkhorn_plan(a, b, epsilon=1.0, num_iters=3000)
    np.testing.assert_allclose(project, converged, rtol=1e-4, atol=1e-7)
    _, iterations = official_sinkhorn(a, b, eps=1.0)
    assert 1 < iterations < 100


def test_official_iterates_are_the_project_iterates_with_partners_swapped(small_pair):
    """Far from convergence (7 updates at eps 0.05): official(a, b) == project(b, a).T."""
    a, b = small_pair
    official, iterations = official_sinkhorn(a, b, eps=0.05, max_iter=7, thresh=0.0)
    assert iterations == 7
    swapped = np.asarray(sinkhorn_plan(b, a, epsilon=0.05, num_iters=7), np.float64)
    np.testing.assert_allclose(swapped.transpose(0, 2, 1), official, rtol=1e-4, atol=1e-7)
    same_order = np.asarray(sinkhorn_plan(a, b, epsilon=0.05, num_iters=7), np.float64)
    assert np.abs(same_order - official).max() > 0.01
    official_rows, official_columns = marginal_l1_errors(official)
    project_rows, project_columns = marginal_l1_errors(same_order)
    assert official_columns < 1e-6 < 0.01 < official_rows  # u then v: columns exact
    assert project_rows < 1e-6 < 0.01 < project_columns  # g then f: rows exact


@pytest.fixture(scope="module", params=[1.0, 2.7], ids=["trained", "norm30"])
def trained_pair(request):
    """Last maps `(16, 4, 4, 128)` of a trained network (tests/fixtures) and their partners.

    As stored, position norms have median 11 and squared distances / eps median 2.5e3, max 1.4e4;
    scaled by 2.7 the norms match a CIFAR PreActResNet-18's (~30), cost / eps median 1.8e4.
    """
    maps = np.load(TRAINED_FEATURES)["features"] * np.float32(request.param)
    return maps, maps[np.random.default_rng(0).permutation(len(maps))]


def test_official_stopping_rule_never_fires_at_the_training_regime(trained_pair):
    a, b = trained_pair
    plan, iterations = official_sinkhorn(a.reshape(16, 16, -1), b.reshape(16, 16, -1))
    assert iterations == 100
    rows, columns = marginal_l1_errors(plan)
    assert columns < 1e-6 and 0.25 < rows < 0.9


@pytest.mark.parametrize("direction", [0, 1])
def test_project_align_mix_is_the_official_op_with_partners_swapped(trained_pair, direction):
    """official(a, b, lam, d) == align_mix(b, a, 1 - lam, 1 - d), plans transposed.

    Measured on this fixture, also with the features perturbed by one float32 ulp: max |R
    difference| <= 9.5e-4, max |mixed difference| <= 2.4e-4 of max |mixed|: float32 against
    float64 at cost / eps up to 1e5. The tolerances leave a factor 8-10.
    """
    a, b = trained_pair
    official = official_mixup_aligned(to_nchw(a), to_nchw(b), LAM, direction)
    project = align_mix(b, a, 1 - LAM, direction=1 - direction)
    scale = np.abs(official).max()
    np.testing.assert_allclose(to_nchw(project), official, atol=2e-3 * scale, rtol=0)
    official_plan, _ = official_sinkhorn(a.reshape(16, 16, -1), b.reshape(16, 16, -1))
    swapped = np.asarray(sinkhorn_plan(b.reshape(16, 16, -1), a.reshape(16, 16, -1)))
    np.testing.assert_allclose(16 * swapped.transpose(0, 2, 1), 16 * official_plan, atol=1e-2)


def test_same_arguments_give_a_different_op_at_the_training_regime(trained_pair):
    """The plans' update orders differ, and 100 updates are far from convergence here."""
    a, b = trained_pair
    official_plan, _ = official_sinkhorn(a.reshape(16, 16, -1), b.reshape(16, 16, -1))
    project_plan = np.asarray(sinkhorn_plan(a.reshape(16, 16, -1), b.reshape(16, 16, -1)))
    agreement = (official_plan.argmax(-1) == project_plan.argmax(-1)).mean()
    assert agreement < 0.75  # measured 0.59 (0.50 at norm 30)
    assert 16 * np.abs(official_plan - project_plan).max() > 0.9
    project_rows, project_columns = marginal_l1_errors(project_plan)
    assert project_rows < 1e-5 and 0.25 < project_columns < 0.9  # measured 0.41 (0.59)
    for direction in (0, 1):
        official = official_mixup_aligned(to_nchw(a), to_nchw(b), LAM, direction)
        project = to_nchw(align_mix(jnp.asarray(a), jnp.asarray(b), LAM, direction=direction))
        assert np.abs(project - official).max() > 0.5 * np.abs(official).max()
