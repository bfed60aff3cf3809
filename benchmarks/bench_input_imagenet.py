"""Images/s per CPU core of ImageNet training input: JPEG decoding and the train transform.

    python benchmarks/bench_input_imagenet.py                 # 1 and 2 workers (this machine)
    python benchmarks/bench_input_imagenet.py --workers 1,4,8,16 --images 512

Writes `--images` synthetic ImageNet-sized JPEGs (500x375 RGB, quality 90, smooth shapes plus
grain, about the size of an ImageNet file) to a temporary folder. Each batch decodes its JPEGs
with PIL (as tfds does without OpenCV) and applies `augment.imagenet_train_transform`
(RandomResizedCrop 224 + flip + colour jitter 0.4 + PCA lighting 0.1) and the normalisation,
with parameters from `augment.draw_params`, as the project's `RecordSource` pipeline does.

Two ways to spread batches over cores, both through grain: threads in one process
(`ReadOptions(num_threads=k)`, what `data.make_train_iterator` uses) and worker processes
(`mp_prefetch(MultiprocessingOptions(num_workers=k))`, one thread each). For each, images/s and
images/s per worker after a warm-up; then the cores needed to feed one H100 training ResNet-50 in
bfloat16 (about 3,000 images/s). A single-thread breakdown (decode alone, transform alone) comes
first. Prints a table and one JSON line.
"""

import argparse
import io
import json
import os
import pathlib
import statistics
import tempfile
import time

import grain
import numpy as np
from absl import flags
from PIL import Image

from alignmix_jax import cli
from alignmix_jax.data import augment
from alignmix_jax.data.config import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 224
JPEG_SHAPE = (375, 500)  # (height, width): ImageNet's most common size
JPEG_QUALITY = 90
H100_RESNET50_IMAGES_PER_S = 3000
WARMUP_BATCHES = 2


def write_jpegs(folder: pathlib.Path, count: int) -> list[pathlib.Path]:
    """`count` synthetic photos: smooth random colour fields (upsampled noise) plus fine grain,
    so that JPEG spends its bits as on real images."""
    rng = np.random.default_rng(0)
    height, width = JPEG_SHAPE
    paths = []
    for k in range(count):
        coarse = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        grain_noise = rng.normal(0.0, 16.0, (height, width, 3))
        pixels = np.clip(smooth + grain_noise, 0, 255).astype(np.uint8)
        path = folder / f"{k:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def decode(encoded: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


class TrainBatch:
    """Batch `step` of the stream: its JPEGs decoded, augmented and normalised, float32
    `(batch, 224, 224, 3)`. A picklable callable, so grain's worker processes can run it."""

    def __init__(self, encoded: list[bytes], batch: int):
        self.encoded, self.batch = encoded, batch
        self.scale = (1.0 / np.asarray(IMAGENET_STD, np.float32)).astype(np.float32)
        self.shift = -np.asarray(IMAGENET_MEAN, np.float32) * self.scale

    def __call__(self, step: int) -> np.ndarray:
        rng = np.random.default_rng(step)
        params = augment.draw_params(rng, "imagenet", self.batch, IMAGE_SIZE)
        out = np.empty((self.batch, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        for row in range(self.batch):
            image = decode(self.encoded[(step * self.batch + row) % len(self.encoded)])
            params_row = {key: value[row] for key, value in params.items()}
            out[row] = augment.imagenet_train_transform(image, params_row, IMAGE_SIZE)
        out *= self.scale
        out += self.shift
        return out


def stream(batches: TrainBatch, num_batches: int, mode: str, workers: int):
    """grain iterator over `num_batches` batches on `workers` threads or worker processes."""
    dataset = grain.MapDataset.range(num_batches).map(batches)
    if mode == "threads":
        options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
        return iter(dataset.to_iter_dataset(options))
    per_worker = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    processes = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
    return iter(dataset.to_iter_dataset(per_worker).mp_prefetch(processes))


def images_per_s(batches: TrainBatch, num_batches: int, mode: str, workers: int) -> dict:
    """Images/s over `num_batches` batches after WARMUP_BATCHES (worker start-up excluded)."""
    start = time.perf_counter()
    iterator = stream(batches, WARMUP_BATCHES + num_batches, mode, workers)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    rate = num_batches * batches.batch / (time.perf_counter() - start)
    iterator.close()  # stops the threads or worker processes
    return {
        "mode": mode,
        "workers": workers,
        "images_per_s": round(rate, 1),
        "images_per_s_per_worker": round(rate / workers, 1),
        "startup_s": round(startup_s, 2),
    }


def single_thread_breakdown(encoded: list[bytes], count: int) -> dict:
    """ms per image (median of 3 passes over `count` images): decoding alone, and decoding plus
    the train transform."""
    params = augment.draw_params(np.random.default_rng(0), "imagenet", count, IMAGE_SIZE)
    rows = [{key: value[k] for key, value in params.items()} for k in range(count)]
    decoded = [decode(encoded[k % len(encoded)]) for k in range(count)]

    def ms_per_image(work) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for k in range(count):
                work(k)
            times.append((time.perf_counter() - start) / count)
        return 1e3 * statistics.median(times)

    decode_ms = ms_per_image(lambda k: decode(encoded[k % len(encoded)]))
    transform_ms = ms_per_image(
        lambda k: augment.imagenet_train_transform(decoded[k], rows[k], IMAGE_SIZE)
    )
    return {"decode_ms": round(decode_ms, 2), "transform_ms": round(transform_ms, 2)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="synthetic JPEGs (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (>= 1)")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per case (>= 1)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--modes", default="threads,processes")
    args = parser.parse_args()
    for name in ("images", "batch", "batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: expected comma-separated ints, got {args.workers!r}")
    if min(args.workers) < 1:
        parser.error(f"--workers: each count must be >= 1, got {args.workers}")
    args.modes = args.modes.split(",")
    if not set(args.modes) <= {"threads", "processes"}:
        parser.error(f"--modes: expected threads and/or processes, got {args.modes}")
    return args


def main() -> None:
    cli.configure_runtime()  # before JAX starts its backend
    args = parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read its absl flags (defaults here)
    with tempfile.TemporaryDirectory(prefix="bench_input_imagenet_") as folder:
        paths = write_jpegs(pathlib.Path(folder), args.images)
        encoded = [path.read_bytes() for path in paths]
    mean_kib = statistics.fmean(len(e) for e in encoded) / 1024
    breakdown = single_thread_breakdown(encoded, min(args.images, 64))
    batches = TrainBatch(encoded, args.batch)
    rows = [
        images_per_s(batches, args.batches, mode, workers)
        for mode in args.modes
        for workers in args.workers
    ]
    best_per_core = max(row["images_per_s_per_worker"] for row in rows)
    cores_needed = H100_RESNET50_IMAGES_PER_S / best_per_core
    print(
        f"\nImageNet train input: {JPEG_SHAPE[1]}x{JPEG_SHAPE[0]} JPEG q{JPEG_QUALITY} "
        f"({mean_kib:.0f} KiB mean) -> decode + RandomResizedCrop {IMAGE_SIZE} + flip + jitter "
        f"+ lighting + normalise; {os.cpu_count()} CPUs here"
    )
    print(
        f"single thread: decode {breakdown['decode_ms']:.2f} ms/image, transform "
        f"{breakdown['transform_ms']:.2f} ms/image\n"
    )
    print("| mode | workers | images/s | images/s per worker | start-up s |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['workers']} | {row['images_per_s']:.0f} "
            f"| {row['images_per_s_per_worker']:.0f} | {row['startup_s']:.2f} |"
        )
    print(
        f"\n{H100_RESNET50_IMAGES_PER_S} images/s (one H100, ResNet-50, bf16) needs about "
        f"{cores_needed:.1f} cores at the best per-worker rate ({best_per_core:.0f} images/s)."
    )
    print(
        json.dumps(
            {
                "benchmark": "input_imagenet",
                "cpu_count": os.cpu_count(),
                "jpeg_shape": list(JPEG_SHAPE),
                "jpeg_mean_kib": round(mean_kib, 1),
                "batch": args.batch,
                "batches": args.batches,
                "single_thread": breakdown,
                "rows": rows,
                "cores_for_3000_images_per_s": round(cores_needed, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
