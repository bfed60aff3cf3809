"""Images/s of the CIFAR PreActResNet-18 train step (batch 128) for every mixing method, and the
ratio to `none`, measured in one run. Targets: alignmix >= 0.95x none, alignmixup >= 0.97x none.

    python benchmarks/bench_train_step.py                       # the paper's model, all devices
    python benchmarks/bench_train_step.py --base_width 16 --steps 5   # a quick CPU check

Every method is compiled and warmed up (2 steps) first; then `--steps` rounds time one blocked step
of each method in turn, and each method's median is reported. Prints a Markdown table and one
JSON line.
"""

from alignmix_jax import runtime

runtime.configure()  # before JAX starts its backend and before TensorFlow is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from alignmix_jax import experiment_config, models, parallel, train  # noqa: E402

WARMUP_STEPS = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--base_width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--methods", default=",".join(experiment_config.METHODS))
    return parser.parse_args()


def build_step(method: str, args, mesh, batch):
    """A compiled, warmed-up train step of `method`: `run() -> seconds` for one blocked step."""
    config = experiment_config.default_config("cifar10")
    config.model.base_width = args.base_width
    config.mix.method = method
    model = models.build_model(
        config.model, 10, axis_name="data", dtype=train.COMPUTE_DTYPES[args.compute_dtype]
    )
    learning_rate_fn = train.create_learning_rate_fn(config.optimizer, 390, 390 * 2000)
    optimizer = train.create_optimizer(config.optimizer, learning_rate_fn)
    state = train.create_train_state(model, optimizer, (32, 32, 3), 0, mesh)
    step = train.make_train_step(model, config.mix, optimizer, learning_rate_fn, mesh)
    key = parallel.replicate(jax.random.key(0), mesh)

    def run() -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    for _ in range(WARMUP_STEPS):
        run()
    return run


def time_methods(methods, args, mesh, batch) -> dict[str, float]:
    """Median images/s per method; the methods' steps are interleaved round by round, so a change
    in the machine's load during the run affects every method alike."""
    runs = {method: build_step(method, args, mesh, batch) for method in methods}
    times = {method: [] for method in methods}
    for _ in range(args.steps):
        for method, run in runs.items():
            times[method].append(run())
    return {method: args.batch_size / statistics.median(t) for method, t in times.items()}


def main() -> None:
    args = parse_args()
    mesh = parallel.make_data_mesh()
    rng = np.random.default_rng(0)
    batch = parallel.shard_host_batch(
        {
            "image": rng.normal(size=(args.batch_size, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, args.batch_size).astype(np.int32),
        },
        mesh,
    )
    methods = args.methods.split(",")
    rates = time_methods(methods, args, mesh, batch)
    baseline = rates.get("none")
    print(
        f"\nPreActResNet-18 (width {args.base_width}), batch {args.batch_size}, "
        f"{args.compute_dtype}, {mesh.size} x {jax.devices()[0].device_kind}"
    )
    print("| method | images/s | ratio to none |\n|---|---|---|")
    for method, rate in rates.items():
        ratio = f"{rate / baseline:.3f}" if baseline else "-"
        print(f"| {method} | {rate:.1f} | {ratio} |")
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": jax.devices()[0].device_kind,
                "devices": mesh.size,
                "batch_size": args.batch_size,
                "base_width": args.base_width,
                "compute_dtype": args.compute_dtype,
                "images_per_sec": rates,
                "ratio_to_none": {m: r / baseline for m, r in rates.items()} if baseline else None,
            }
        )
    )


if __name__ == "__main__":
    main()
