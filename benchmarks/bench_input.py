"""Images per second of the CIFAR-10 training pipeline (JPEG folder copy, crop pad 4 + flip).

Usage: python benchmarks/bench_input.py [--archive PATH] [--batch 128] [--windows 7] [--steps 50]
Prints a table and one JSON line. The first run decodes the 60,000 JPEGs once into the cache.
"""

import argparse
import json
import os
import pathlib
import statistics
import time

from alignmix_jax import cli, data

DEFAULT_ARCHIVE = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/data/cifar10_jpg/CIFAR-10-images.tar.gz"
)


def measure(archive: str, batch: int, windows: int, steps: int) -> dict:
    """Median images/s over `windows` timed windows of `steps` batches each (after a warm-up)."""
    config = data.default_data_config("image_folder", path=archive, augment="cifar")
    start = time.perf_counter()
    info = data.get_dataset_info(config)
    stream = data.make_train_iterator(config, batch, seed=0)
    next(stream)
    setup_s = time.perf_counter() - start
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            next(stream)
        rates.append(steps * batch / (time.perf_counter() - start))
    return {
        "benchmark": "input_pipeline_cifar10_jpg",
        "num_train": info.num_train,
        "batch": batch,
        "windows": windows,
        "steps_per_window": steps,
        "setup_s": round(setup_s, 2),
        "images_per_s_median": round(statistics.median(rates)),
        "images_per_s_min": round(min(rates)),
        "images_per_s_max": round(max(rates)),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    cli.configure_runtime()  # before JAX starts its backend
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not os.path.exists(args.archive):
        raise SystemExit(f"--archive: {args.archive} not found (the CIFAR-10 JPEG archive)")
    result = measure(args.archive, args.batch, args.windows, args.steps)
    print(f"{'metric':<24}{'value':>12}")
    for key in ("batch", "setup_s", "images_per_s_median", "images_per_s_min", "images_per_s_max"):
        print(f"{key:<24}{result[key]:>12}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
