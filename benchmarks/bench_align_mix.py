"""Time the jitted `align_mix` at the paper's per-device feature shapes.

For each shape: `align_mix` with a fixed number of Sinkhorn updates (a `lax.scan` in ott) and in
early-stopping mode (`threshold`), and the floor: a hand-written batched log-domain Sinkhorn
AlignMix in plain jax.numpy (GEMM cost, same number of updates, same mixing). Each time is the
median of `--repeats` calls after one warm-up call. Prints a table and one JSON line.

    python benchmarks/bench_align_mix.py            # the three paper shapes
    python benchmarks/bench_align_mix.py --quick    # CIFAR PreActResNet-18 shape only
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

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


def median_seconds(fn, args, repeats):
    """Median wall time of `fn(*args)` over `repeats` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(shape, num_iters, threshold, repeats):
    key_a, key_b = jax.random.split(jax.random.key(0))
    # post-ReLU feature maps, as the encoders produce
    a = jax.nn.relu(jax.random.normal(key_a, shape))
    b = jax.nn.relu(jax.random.normal(key_b, shape))
    lam = jnp.float32(0.4)
    fixed = jax.jit(lambda x, y, w: align_mix(x, y, w, direction=0, num_iters=num_iters))
    early = jax.jit(
        lambda x, y, w: align_mix(x, y, w, direction=0, num_iters=num_iters, threshold=threshold)
    )
    floor = jax.jit(lambda x, y, w: handwritten_align_mix(x, y, w, num_iters))
    return {
        "fixed_ms": 1e3 * median_seconds(fixed, (a, b, lam), repeats),
        "early_stop_ms": 1e3 * median_seconds(early, (a, b, lam), repeats),
        "floor_ms": 1e3 * median_seconds(floor, (a, b, lam), repeats),
    }


def main():
    cli.configure_runtime()  # before JAX starts its backend
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case (>= 1)")
    parser.add_argument("--num-iters", type=int, default=SINKHORN.num_iters,
                        help="Sinkhorn updates")
    parser.add_argument("--threshold", type=float, default=EARLY_STOP_THRESHOLD,
                        help="early-stop threshold")
    parser.add_argument("--quick", action="store_true", help="only the (128, 4, 4, 512) shape")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    names = ["cifar_preactresnet18"] if args.quick else list(PAPER_SHAPES)

    results = {}
    header = f"{'shape':<30}{'fixed ms':>11}{'early ms':>11}{'floor ms':>11}{'fixed/floor':>13}"
    print(
        f"align_mix, num_iters={args.num_iters}, threshold={args.threshold}, "
        f"median of {args.repeats}, {jax.devices()[0].platform}"
    )
    print(header)
    for name in names:
        shape = PAPER_SHAPES[name]
        row = bench_shape(shape, args.num_iters, args.threshold, args.repeats)
        row["ratio_fixed_to_floor"] = row["fixed_ms"] / row["floor_ms"]
        results[name] = {"shape": list(shape), **row}
        print(
            f"{str(shape):<30}{row['fixed_ms']:>11.2f}{row['early_stop_ms']:>11.2f}"
            f"{row['floor_ms']:>11.2f}{row['ratio_fixed_to_floor']:>13.2f}"
        )
    target = results["cifar_preactresnet18"]["ratio_fixed_to_floor"]
    print(f"target: (128, 4, 4, 512) fixed/floor <= 2.0: {'met' if target <= 2.0 else 'MISSED'}")
    summary = {
        "benchmark": "align_mix",
        "num_iters": args.num_iters,
        "threshold": args.threshold,
        "repeats": args.repeats,
        "platform": jax.devices()[0].platform,
        "results": results,
        "target_ratio_met": target <= 2.0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
