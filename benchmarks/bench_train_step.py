r"""Images/s of the CIFAR PreActResNet-18 train step (batch 128) for every mixing method, and the
ratio to `none`, measured in one run. Targets: alignmix >= 0.95x none, alignmixup >= 0.97x none.

    python benchmarks/bench_train_step.py                       # the paper's model, all devices
    python benchmarks/bench_train_step.py --base_width 16 --steps 5   # a quick CPU check
    python benchmarks/bench_train_step.py --cpu_devices 8 --partners global,device \
        --methods input_mixup,alignmix,alignmixup   # what gathering partners costs

With several partner modes, each method runs with each, and the table gives the global/device
ratio: what gathering each example's partner from the whole global batch costs against pairing
within each device's shard (target: at most 3% at CIFAR shapes). The cost of the alignment
diagnostics the step logs (`plan_statistics`, `mean_position_norm`) is timed alone at the step's
shapes and given as a share of the alignmixup step (target: under 1%).

Every method is compiled and warmed up (2 steps) first; then `--steps` rounds time one blocked step
of each method in turn, and each method's median is reported. Prints a Markdown table and one
JSON line. `benchmarks/device_check.py` times its cases with the same functions.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from alignmix_jax import cli, models
from alignmix_jax.core.ot import mean_position_norm, plan_statistics
from alignmix_jax.trainer import experiment_config, optimization, parallel, train

WARMUP_STEPS = 2
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One train step to time: a mixing method on CIFAR PreActResNet-18 at a batch and dtype."""

    method: str
    batch_size: int = 128
    compute_dtype: str = "float32"
    base_width: int = 64
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    partner: str = "global"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--base_width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compute_dtype", default="float32", choices=tuple(train.COMPUTE_DTYPES))
    parser.add_argument("--methods", default=",".join(experiment_config.METHODS))
    parser.add_argument("--partners", default="global", help="comma-separated: global, device")
    parser.add_argument("--cpu_devices", type=int, default=None, help="simulated CPU devices")
    return parser.parse_args()


def synthetic_batch(batch_size: int, mesh) -> dict:
    """A global CIFAR-shaped batch of normal images and random labels, sharded over `data`."""
    rng = np.random.default_rng(0)
    return parallel.shard_host_batch(
        {
            "image": rng.normal(size=(batch_size, *IMAGE_SHAPE)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        },
        mesh,
    )


def build_step(case: StepCase, mesh) -> Callable[[], float]:
    """A compiled, warmed-up train step of `case`: `run() -> seconds` for one blocked step."""
    config = experiment_config.default_config("cifar10")
    config.model.base_width = case.base_width
    config.model.stage_sizes = case.stage_sizes
    config.mix.method = case.method
    config.mix.partner = case.partner
    model = models.build_model(
        config.model, NUM_CLASSES, axis_name="data", dtype=train.COMPUTE_DTYPES[case.compute_dtype]
    )
    learning_rate_fn = optimization.create_learning_rate_fn(config.optimizer, 390, 390 * 2000)
    optimizer = optimization.create_optimizer(config.optimizer, learning_rate_fn)
    state = train.create_train_state(model, optimizer, IMAGE_SHAPE, 0, mesh)
    step = train.make_train_step(model, config.mix, optimizer, learning_rate_fn, mesh)
    key = parallel.replicate(jax.random.key(0), mesh)
    batch = synthetic_batch(case.batch_size, mesh)

    def run() -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    for _ in range(WARMUP_STEPS):
        run()
    return run


def build_steps(cases, mesh, workers: int | None = None) -> dict:
    """`{case: run}` for every case, built (traced, compiled, warmed up) by `workers` threads:
    XLA compiles outside Python's lock, so on a many-core host the compilations overlap."""
    workers = workers or min(len(cases), os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        runs = pool.map(lambda case: build_step(case, mesh), cases)
        return dict(zip(cases, runs, strict=True))


def time_steps(runs: dict, rounds: int) -> dict[object, list[float]]:
    """Seconds of `rounds` steps of each run; the runs are interleaved round by round, so a change
    in the machine's load during the measurement affects every case alike."""
    times = {case: [] for case in runs}
    for _ in range(rounds):
        for case, run in runs.items():
            times[case].append(run())
    return times


def images_per_sec(batch_size: int, seconds: list[float]) -> dict[str, float]:
    """Throughput from step times: over the median step and over the mean step (the rate a run
    sustains when step times differ, e.g. alignmixup's input and aligned branches)."""
    return {
        "median": batch_size / statistics.median(seconds),
        "mean": batch_size / statistics.fmean(seconds),
        "median_ms": 1e3 * statistics.median(seconds),
        "mean_ms": 1e3 * statistics.fmean(seconds),
    }


def diagnostics_seconds(batch_size: int, base_width: int, rounds: int) -> float:
    """Median seconds of the alignment diagnostics alone at the step's shapes: a (B, 16, 16) plan
    and (B, 4, 4, 8 * base_width) features."""
    rng = np.random.default_rng(0)
    plan = rng.dirichlet(np.ones(16), size=(batch_size, 16)).astype(np.float32) / 16
    features = rng.normal(size=(batch_size, 4, 4, 8 * base_width)).astype(np.float32)
    diagnostics = jax.jit(lambda p, f: (plan_statistics(p), mean_position_norm(f)))
    jax.block_until_ready(diagnostics(plan, features))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(diagnostics(plan, features))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cli.configure_runtime()  # before JAX starts its backend
    args = parse_args()
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    mesh = parallel.make_data_mesh()
    partners = args.partners.split(",")
    cases = [
        StepCase(method, args.batch_size, args.compute_dtype, args.base_width, partner=partner)
        for method in args.methods.split(",")
        for partner in (partners if method != "none" else partners[:1])
    ]
    # Built one after another here: the table is also run on small CPU hosts.
    times = time_steps(build_steps(cases, mesh, workers=1), args.steps)
    rates = {case: images_per_sec(case.batch_size, t)["median"] for case, t in times.items()}
    baseline = next((rate for case, rate in rates.items() if case.method == "none"), None)
    by_method = {}
    for case, rate in rates.items():
        by_method.setdefault(case.method, {})[case.partner] = rate
    print(
        f"\nPreActResNet-18 (width {args.base_width}), batch {args.batch_size}, "
        f"{args.compute_dtype}, {mesh.size} x {jax.devices()[0].device_kind}"
    )
    header = " | ".join(f"{partner} images/s | {partner} / none" for partner in partners)
    print(f"| method | {header} | global / device |\n|---|" + "---|" * (2 * len(partners) + 1))
    for method, by_partner in by_method.items():
        cells = []
        for partner in partners:
            rate = by_partner.get(partner)
            cells.append("- | -" if rate is None else f"{rate:.1f} | {rate / baseline:.3f}")
        ratio = by_partner["global"] / by_partner["device"] if len(by_partner) == 2 else None
        print(f"| {method} | {' | '.join(cells)} | {'-' if ratio is None else f'{ratio:.3f}'} |")
    aligned = [t for case, t in times.items() if case.method == "alignmixup"]
    diagnostics_share = None
    if aligned:
        diagnostics_share = diagnostics_seconds(args.batch_size, args.base_width, args.steps) / (
            statistics.median(aligned[0])
        )
        print(f"alignment diagnostics: {100 * diagnostics_share:.2f}% of the alignmixup step")
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": jax.devices()[0].device_kind,
                "devices": mesh.size,
                "batch_size": args.batch_size,
                "base_width": args.base_width,
                "compute_dtype": args.compute_dtype,
                "images_per_sec": by_method,
                "ratio_to_none": {
                    method: {p: r / baseline for p, r in by_partner.items()}
                    for method, by_partner in by_method.items()
                }
                if baseline
                else None,
                "diagnostics_share_of_alignmixup_step": diagnostics_share,
            }
        )
    )


if __name__ == "__main__":
    main()
