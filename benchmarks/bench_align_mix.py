"""Time the jitted `align_mix` at the paper's per-device feature shapes against a plain Sinkhorn.

For each shape, four jitted AlignMix ops (direction 0, 100 Sinkhorn updates) on post-ReLU normal
maps:
  fixed       `align_mix` with exactly `num_iters` updates (the training op);
  early stop  `align_mix` with `threshold` (ott's early-stopping `Sinkhorn`);
  ott solver  the same op with ott's `Sinkhorn` doing the updates, configured as `align_mix` ran
              it before this version (a `lax.scan` of `num_iters` updates on a `PointCloud`);
  floor       a hand-written batched log-domain Sinkhorn in plain jax.numpy (GEMM cost, the same
              updates, b's potential first, then the plan and the move).
With `--ablation`, two more loops on the cost computed once (an ott `PointCloud`'s), to see
where ott's solver spends its time:
  ott update  ott's `Geometry.update_potential` (its `lse_step`: `f + g - C` inside each
              log-sum-exp, the old potential subtracted after) in a `fori_loop`, nothing else;
  plain lse   `logsumexp((f - C) / eps)` in a `fori_loop` (the floor's update);
the fixed mode itself is the third step, `logsumexp(f - C / eps)`.
After one warm-up (compile) call each, every repeat calls each op once, in an order rotated
from repeat to repeat, so load on a shared machine hits all of them alike. Times are medians;
the ratios to the floor are the median and the mean of the per-repeat ratios. Prints a table
and one JSON line. Target: fixed / floor median <= 1.1 at (128, 4, 4, 512).

    python benchmarks/bench_align_mix.py            # the three paper shapes
    python benchmarks/bench_align_mix.py --quick    # CIFAR PreActResNet-18 shape only
    python benchmarks/bench_align_mix.py --ablation # and the loops between ott and fixed
"""

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
from ott.geometry import costs, geometry, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from alignmix_jax import align_mix, cli
from alignmix_jax.core.method import SinkhornOptions

PAPER_SHAPES = {
    "cifar_preactresnet18": (128, 4, 4, 512),
    "cifar_wrn16_8": (128, 8, 8, 512),
    "imagenet_resnet50": (128, 7, 7, 2048),
}
SINKHORN = SinkhornOptions.default()  # the method's epsilon and number of updates
EPSILON = SINKHORN.epsilon
EARLY_STOP_THRESHOLD = 1e-3  # the early-stopping rows'
TARGET_RATIO = 1.1  # fixed / floor, median, at (128, 4, 4, 512)
ARMS = ("fixed", "early_stop", "ott_solver", "floor")
ABLATION_ARMS = ("ott_update", "plain_lse")


def handwritten_align_mix(a, b, lam, num_iters):
    """Floor: AlignMix direction 0 with a plain batched log-domain Sinkhorn, `(B, H, W, C)`."""
    batch, channels = a.shape[0], a.shape[-1]
    x = a.reshape(batch, -1, channels)
    y = b.reshape(batch, -1, channels)
    r = x.shape[1]
    sq_x, sq_y = jnp.sum(x * x, -1), jnp.sum(y * y, -1)
    cost = sq_x[:, :, None] + sq_y[:, None, :] - 2.0 * jnp.einsum("brc,bsc->brs", x, y)
    log_marginal = -jnp.log(r)

    def update(potentials, _):
        f, g = potentials
        g = EPSILON * log_marginal - EPSILON * jax.nn.logsumexp(
            (f[:, :, None] - cost) / EPSILON, axis=1
        )
        f = EPSILON * log_marginal - EPSILON * jax.nn.logsumexp(
            (g[:, None, :] - cost) / EPSILON, axis=2
        )
        return (f, g), None

    zeros = jnp.zeros((batch, r), jnp.float32)
    (f, g), _ = jax.lax.scan(update, (zeros, zeros), None, length=num_iters)
    rows = r * jnp.exp((f[:, :, None] + g[:, None, :] - cost) / EPSILON)
    mixed = lam * x + (1.0 - lam) * rows @ y
    return mixed.reshape(a.shape)


def ott_solver_align_mix(a, b, lam, num_iters):
    """AlignMix direction 0 with ott's `Sinkhorn` doing the updates, `(B, H, W, C)`.

    Configured as `align_mix` ran it up to this version: `min_iterations == max_iterations ==
    inner_iterations == num_iters` (a `lax.scan`, the marginal error evaluated once), on a
    `PointCloud` read by every update, plan a row softmax of `(g - C) / eps`.
    """
    batch, channels = a.shape[0], a.shape[-1]
    x = a.reshape(batch, -1, channels)
    y = b.reshape(batch, -1, channels)
    r = x.shape[1]
    solver = sinkhorn.Sinkhorn(
        lse_mode=True,
        inner_iterations=num_iters,
        min_iterations=num_iters,
        max_iterations=num_iters,
        implicit_diff=None,
    )

    def plan(xi, yi):
        geom = pointcloud.PointCloud(xi, yi, cost_fn=costs.SqEuclidean(), epsilon=EPSILON)
        g = solver(linear_problem.LinearProblem(geom)).g
        return jax.nn.softmax((g[None, :] - geom.cost_matrix) / EPSILON, axis=-1) / r

    with jax.default_matmul_precision("highest"):
        rows = r * jax.vmap(plan)(x, y)
    mixed = lam * x + (1.0 - lam) * jnp.matmul(rows, y, precision="highest")
    return mixed.reshape(a.shape)


def precomputed_cost_align_mix(a, b, lam, num_iters, update):
    """AlignMix direction 0, `(B, H, W, C)`, with `update` ("ott_update" or "plain_lse") run
    `num_iters` times in a `fori_loop` on each pair's cost, computed once by an ott `PointCloud`."""
    batch, channels = a.shape[0], a.shape[-1]
    x = a.reshape(batch, -1, channels)
    y = b.reshape(batch, -1, channels)
    r = x.shape[1]

    def plan(xi, yi):
        cloud = pointcloud.PointCloud(xi, yi, cost_fn=costs.SqEuclidean(), epsilon=EPSILON)
        geom = geometry.Geometry(cost_matrix=cloud.cost_matrix, epsilon=EPSILON)
        cost = geom.cost_matrix
        log_marginal = jnp.full((r,), -jnp.log(r))

        def ott_update(_, potentials):
            f, g = potentials
            g = geom.update_potential(f, g, log_marginal, axis=0)
            return geom.update_potential(f, g, log_marginal, axis=1), g

        def plain_lse(_, potentials):
            f, _ = potentials
            g = EPSILON * log_marginal - EPSILON * jax.nn.logsumexp(
                (f[:, None] - cost) / EPSILON, axis=0
            )
            f = EPSILON * log_marginal - EPSILON * jax.nn.logsumexp(
                (g[None, :] - cost) / EPSILON, axis=1
            )
            return f, g

        body = {"ott_update": ott_update, "plain_lse": plain_lse}[update]
        _, g = jax.lax.fori_loop(0, num_iters, body, (jnp.zeros(r), jnp.zeros(r)))
        return jax.nn.softmax((g[None, :] - cost) / EPSILON, axis=-1)

    with jax.default_matmul_precision("highest"):
        rows = jax.vmap(plan)(x, y)
    mixed = lam * x + (1.0 - lam) * jnp.matmul(rows, y, precision="highest")
    return mixed.reshape(a.shape)


def median_seconds(fn, args, repeats):
    """Median wall time of `fn(*args)` over `repeats` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(fns, args, repeats):
    """`{name: [seconds per repeat]}` of `fns` (name -> fn): one warm-up call each, then every
    repeat calls each fn once, the order rotated by one from repeat to repeat."""
    names = list(fns)
    for name in names:
        jax.block_until_ready(fns[name](*args))
    times = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            jax.block_until_ready(fns[name](*args))
            times[name].append(time.perf_counter() - start)
    return times


def bench_shape(shape, num_iters, threshold, repeats, ablation=False):
    """Row of one `(B, H, W, C)` shape: `<arm>_ms` (median ms) for each of ARMS (and
    ABLATION_ARMS), and `ratio_<arm>_to_floor` (`_mean`): the median (mean) over repeats of the
    ratio of every arm but early stopping to the floor."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    # post-ReLU feature maps, as the encoders produce
    a = jax.nn.relu(jax.random.normal(key_a, shape))
    b = jax.nn.relu(jax.random.normal(key_b, shape))
    lam = jnp.float32(0.4)
    fns = {
        "fixed": jax.jit(lambda x, y, w: align_mix(x, y, w, direction=0, num_iters=num_iters)),
        "early_stop": jax.jit(
            lambda x, y, w: align_mix(
                x, y, w, direction=0, num_iters=num_iters, threshold=threshold
            )
        ),
        "ott_solver": jax.jit(lambda x, y, w: ott_solver_align_mix(x, y, w, num_iters)),
        "floor": jax.jit(lambda x, y, w: handwritten_align_mix(x, y, w, num_iters)),
    }
    if ablation:
        for name in ABLATION_ARMS:
            fns[name] = jax.jit(
                functools.partial(precomputed_cost_align_mix, num_iters=num_iters, update=name)
            )
    times = interleaved_seconds(fns, (a, b, lam), repeats)
    row = {f"{name}_ms": 1e3 * statistics.median(seconds) for name, seconds in times.items()}
    for name in [name for name in times if name not in ("early_stop", "floor")]:
        ratios = [t / f for t, f in zip(times[name], times["floor"], strict=True)]
        row[f"ratio_{name}_to_floor"] = statistics.median(ratios)
        row[f"ratio_{name}_to_floor_mean"] = statistics.mean(ratios)
    return row


def main():
    cli.configure_runtime()  # before JAX starts its backend
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case (>= 1)")
    parser.add_argument("--num-iters", type=int, default=SINKHORN.num_iters,
                        help="Sinkhorn updates")
    parser.add_argument("--threshold", type=float, default=EARLY_STOP_THRESHOLD,
                        help="early-stop threshold")
    parser.add_argument("--quick", action="store_true", help="only the (128, 4, 4, 512) shape")
    parser.add_argument(
        "--ablation", action="store_true", help="also time the loops between ott and the fixed mode"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    names = ["cifar_preactresnet18"] if args.quick else list(PAPER_SHAPES)

    results = {}
    print(
        f"align_mix, num_iters={args.num_iters}, threshold={args.threshold}, {args.repeats} "
        f"interleaved repeats, {jax.devices()[0].platform}: median ms; ratio to the floor, "
        "median (mean) over repeats"
    )
    print(
        f"{'shape':<20}{'fixed':>9}{'early':>9}{'ott':>9}{'floor':>9}"
        f"{'fixed/floor':>16}{'ott/floor':>16}"
    )
    for name in names:
        shape = PAPER_SHAPES[name]
        row = bench_shape(shape, args.num_iters, args.threshold, args.repeats, args.ablation)
        results[name] = {"shape": list(shape), **row}
        fixed_ratio = f"{row['ratio_fixed_to_floor']:.3f} ({row['ratio_fixed_to_floor_mean']:.3f})"
        ott_ratio = (
            f"{row['ratio_ott_solver_to_floor']:.3f} ({row['ratio_ott_solver_to_floor_mean']:.3f})"
        )
        print(
            f"{str(shape):<20}{row['fixed_ms']:>9.2f}{row['early_stop_ms']:>9.2f}"
            f"{row['ott_solver_ms']:>9.2f}{row['floor_ms']:>9.2f}{fixed_ratio:>16}{ott_ratio:>16}"
        )
    if args.ablation:
        print("ablation, ratio to the floor, median (mean) over repeats:")
        for name in names:
            row = results[name]
            ratios = "".join(
                f"  {arm} {row[f'ratio_{arm}_to_floor']:.3f} "
                f"({row[f'ratio_{arm}_to_floor_mean']:.3f})"
                for arm in ("ott_solver", *ABLATION_ARMS, "fixed")
            )
            print(f"{str(tuple(row['shape'])):<20}{ratios}")
    target = results["cifar_preactresnet18"]["ratio_fixed_to_floor"]
    met = target <= TARGET_RATIO
    print(
        f"target: (128, 4, 4, 512) fixed/floor median <= {TARGET_RATIO}: "
        f"{'met' if met else 'MISSED'}"
    )
    summary = {
        "benchmark": "align_mix",
        "num_iters": args.num_iters,
        "threshold": args.threshold,
        "repeats": args.repeats,
        "platform": jax.devices()[0].platform,
        "results": results,
        "target_ratio": TARGET_RATIO,
        "target_ratio_met": met,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
