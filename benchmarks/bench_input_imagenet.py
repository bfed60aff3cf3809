"""Images/s per CPU core of ImageNet training input: ours against a tf.data anchor, same JPEGs.

    python benchmarks/bench_input_imagenet.py                 # 1 and 2 cores (this machine)
    python benchmarks/bench_input_imagenet.py --cores 1,4,8,16 --images 512

Writes `--images` ImageNet-sized JPEGs (500x375, quality 90) cut from the two photographs that
scikit-learn ships (`load_sample_images`: a temple in China and a flower): each a random 4:3
window of 375-427 rows, resized to 500x375 and mirrored at random, so the files hold real
photographic detail at about ImageNet's scale and file size.

Ours is the host half of `data.make_train_iterator` for ImageNet-style training, through the
library's own `pipeline.decoded_batches` (chunks of images per grain element, then batches):
`augment.decode_crop_resize` (RandomResizedCrop 224 with JPEG DCT-scaled decoding where the crop
allows it; parameters from `augment.draw_params`), the flip, colour jitter and lighting packed as
float32 rows (`device_transform.pack_params`) for the device, and the batch sent as uint8. The
anchor is the Flax ImageNet example's input: `tf.data` over the same JPEG bytes,
`sample_distorted_bounding_box` (area 0.08-1, ratio 3/4-4/3, 10 attempts, centre crop otherwise)
+ `decode_and_crop_jpeg` + bicubic resize 224 + random flip + normalisation, batched,
`num_parallel_calls=AUTOTUNE`, prefetched. A third row, "previous", is this project's host
transform before the device transform: full decoding, RandomResizedCrop + flip + colour jitter +
PCA lighting + normalisation in float32 NumPy on the host, float32 batches (through the same
`decoded_batches`, so only the per-image work differs).

Per core means with the process pinned (`os.sched_setaffinity`) to that many CPUs, in a fresh
process per case; "images/s per core" in the JSON line is each pipeline's best over the core counts
(on a busy 2-core machine, the 1-core row). The pipelines are measured in turns, `--rounds` times,
after a warm-up of twice the images in flight; medians are reported. Before that, a single-thread
breakdown: full decoding, ours' decode + crop, the previous host transform after full decoding
(crop, flip, jitter, lighting in float32 NumPy). Prints a table, ours over tf.data at each core
count, the cores one H100 (ResNet-50, bf16, about 3,000 images/s) and one 8-GPU host need, and one
JSON line."""

import argparse
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from alignmix_jax import cli
from alignmix_jax.data import augment, device_transform, pipeline
from alignmix_jax.data.config import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 224
JPEG_SHAPE = (375, 500)  # (height, width): ImageNet's most common size
JPEG_QUALITY = 90
H100_RESNET50_IMAGES_PER_S = 3000
GPUS_PER_HOST = 8


def photo_jpegs(count: int) -> list[bytes]:
    """`count` JPEGs (500x375, quality 90) cut from scikit-learn's two sample photographs."""
    import io

    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8
    rng = np.random.default_rng(0)
    height, width = JPEG_SHAPE
    encoded = []
    for k in range(count):
        photo = photos[k % len(photos)]
        rows = int(rng.integers(height, photo.shape[0] + 1))
        cols = round(rows * width / height)
        top = int(rng.integers(0, photo.shape[0] - rows + 1))
        left = int(rng.integers(0, photo.shape[1] - cols + 1))
        window = Image.fromarray(photo[top : top + rows, left : left + cols])
        window = window.resize((width, height), Image.BILINEAR)
        if rng.uniform() < 0.5:
            window = window.transpose(Image.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        window.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        encoded.append(buffer.getvalue())
    return encoded


def decode(encoded: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8, full size."""
    import io

    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


class OurRows:
    """Rows `rows` of batch `step` of our stream, as `data.make_train_iterator` makes them for a
    decoding source: image `position % len(encoded)` of each position `step * batch + row`
    cropped and resized to uint8 (n, 224, 224, 3), with the packed on-device parameters (n, 10)
    drawn per batch of `batch`."""

    def __init__(self, encoded: list[bytes], batch: int):
        self.encoded, self.batch = encoded, batch

    def __call__(self, step: int, rows: slice) -> dict:
        params = _params(step, self.batch)
        images = [
            augment.decode_crop_resize(
                self.encoded[(step * self.batch + row) % len(self.encoded)],
                augment.param_row(params, row), IMAGE_SIZE, 3,
            )
            for row in range(self.batch)[rows]
        ]
        return {"image": np.stack(images), "augment": _packed(step, self.batch)[rows]}


@functools.lru_cache(maxsize=8)
def _params(step: int, batch: int) -> dict:
    """The parameters of batch `step`, drawn once per batch (as `data.make_train_iterator`)."""
    return augment.draw_params(np.random.default_rng(step), "imagenet", batch, IMAGE_SIZE)


@functools.lru_cache(maxsize=8)
def _packed(step: int, batch: int) -> np.ndarray:
    """The on-device parameters of batch `step`, packed once per batch."""
    return device_transform.pack_params(_params(step, batch))


class PreviousRows:
    """Rows `rows` of batch `step` of the previous host pipeline: full decoding, the whole train
    transform in float32 NumPy (`augment.imagenet_train_transform`) and the normalisation on the
    host, float32 (n, 224, 224, 3), as `data.make_train_iterator` made it before the device
    transform."""

    def __init__(self, encoded: list[bytes], batch: int):
        self.encoded, self.batch = encoded, batch
        self.scale = (1.0 / np.asarray(IMAGENET_STD, np.float32)).astype(np.float32)
        self.shift = -np.asarray(IMAGENET_MEAN, np.float32) * self.scale

    def __call__(self, step: int, rows: slice) -> dict:
        params = _params(step, self.batch)
        units = [
            augment.imagenet_train_transform(
                decode(self.encoded[(step * self.batch + row) % len(self.encoded)]),
                augment.param_row(params, row), IMAGE_SIZE,
            )
            for row in range(self.batch)[rows]
        ]
        return {"image": np.stack(units) * self.scale + self.shift}


def tfdata_stream(encoded: list[bytes], batch: int):
    """The Flax ImageNet example's train preprocessing, as a tf.data pipeline over `encoded`."""
    import tensorflow as tf

    mean = tf.constant([255.0 * m for m in IMAGENET_MEAN], shape=[1, 1, 3])
    std = tf.constant([255.0 * s for s in IMAGENET_STD], shape=[1, 1, 3])

    def center_crop(image_bytes, shape):
        side = tf.cast(
            (IMAGE_SIZE / (IMAGE_SIZE + 32)) * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32),
            tf.int32,
        )
        top, left = (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2
        return tf.image.decode_and_crop_jpeg(image_bytes, [top, left, side, side], channels=3)

    def distorted_crop(image_bytes, shape):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
            min_object_covered=0.1,
            aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        top, left, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(size)
        return tf.image.decode_and_crop_jpeg(image_bytes, [top, left, height, width], channels=3)

    def preprocess(image_bytes):
        shape = tf.io.extract_jpeg_shape(image_bytes)
        image = distorted_crop(image_bytes, shape)
        bad = tf.reduce_all(tf.equal(tf.shape(image), shape))  # the whole image: centre-crop
        image = tf.cond(bad, lambda: center_crop(image_bytes, shape), lambda: image)
        image = tf.image.resize([image], [IMAGE_SIZE, IMAGE_SIZE], method="bicubic")[0]
        image = tf.image.random_flip_left_right(image)
        return (image - mean) / std

    dataset = tf.data.Dataset.from_tensor_slices(encoded).repeat()
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(dataset.as_numpy_iterator())


def images_per_s(make_stream, batch: int, num_batches: int) -> float:
    """Images/s of `make_stream()` over `num_batches` batches after a warm-up of twice the images
    `decoded_batches` has in flight, so that the timed window starts with the pipeline in the
    state it ends in (a window opened on a full buffer of finished work counts that work as free).
    """
    warmup_images = 2 * pipeline.decode_threads() * pipeline.DECODE_CHUNK
    iterator = make_stream()
    for _ in range(-(-warmup_images // batch)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    rate = num_batches * batch / (time.perf_counter() - start)
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return rate


def single_thread_breakdown(encoded: list[bytes], count: int) -> dict:
    """ms per image (median of 3 passes over `count` images): full decoding; ours (decode at
    reduced size where the crop allows + crop-resize to uint8); the previous host transform
    after full decoding (crop-resize, flip, jitter, lighting in float32 NumPy)."""
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
        return round(1e3 * statistics.median(times), 3)

    return {
        "decode_ms": ms_per_image(lambda k: decode(encoded[k % len(encoded)])),
        "ours_decode_crop_ms": ms_per_image(
            lambda k: augment.decode_crop_resize(encoded[k % len(encoded)], rows[k], IMAGE_SIZE, 3)
        ),
        "previous_transform_ms": ms_per_image(
            lambda k: augment.imagenet_train_transform(decoded[k], rows[k], IMAGE_SIZE)
        ),
        "reduced_decodes": sum(
            min(augment._random_resized_box(*JPEG_SHAPE, row)[2:]) >= 2 * IMAGE_SIZE
            for row in rows
        ) / count,
    }


PIPELINES = {"ours": OurRows, "previous": PreviousRows}


def measure(pipeline: str, folder: str, batch: int, num_batches: int, cpus: list[int]) -> float:
    """Images/s of `pipeline` ("ours" or "tfdata") over the JPEGs in `folder`, in a fresh
    process pinned to `cpus` (so that every thread either pipeline starts runs there)."""
    command = [sys.executable, __file__, "--measure", pipeline, "--folder", folder,
               "--batch", str(batch), "--batches", str(num_batches),
               "--cores", ",".join(map(str, cpus))]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def measure_here(args) -> None:
    """The child of `measure`: pins itself, runs one case, prints its images/s."""
    os.sched_setaffinity(0, args.cores)
    files = sorted(pathlib.Path(args.folder).glob("*.jpg"))
    encoded = [path.read_bytes() for path in files]
    if args.measure in PIPELINES:
        rows_at = PIPELINES[args.measure](encoded, args.batch)
        make = functools.partial(pipeline.decoded_batches, rows_at, 0, 10**12, args.batch)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        make = functools.partial(tfdata_stream, encoded, args.batch)
    print(images_per_s(make, args.batch, args.batches))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (>= 1)")
    parser.add_argument("--batches", type=int, default=32, help="timed batches per case (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each case (>= 1)")
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts")
    parser.add_argument("--measure", choices=[*PIPELINES, "tfdata"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("images", "batch", "batches", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        args.cores = [int(c) for c in args.cores.split(",")]
    except ValueError:
        parser.error(f"--cores: expected comma-separated ints, got {args.cores!r}")
    if args.measure:  # a child of `measure`: --cores lists the CPUs to pin to
        return args
    available = sorted(os.sched_getaffinity(0))
    if min(args.cores) < 1 or max(args.cores) > len(available):
        parser.error(f"--cores: each count must be in 1..{len(available)}, got {args.cores}")
    args.cpus = available
    return args


def main() -> None:
    args = parse_args()
    if args.measure:
        measure_here(args)
        return
    cli.configure_runtime()  # before JAX starts its backend
    encoded = photo_jpegs(args.images)
    mean_kib = statistics.fmean(len(e) for e in encoded) / 1024
    load_before = os.getloadavg()
    breakdown = single_thread_breakdown(encoded, min(args.images, 64))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_input_imagenet_") as folder:
        for k, jpeg in enumerate(encoded):
            pathlib.Path(folder, f"{k:05d}.jpg").write_bytes(jpeg)
        rates = {
            (name, cores): [] for cores in args.cores for name in ("ours", "tfdata", "previous")
        }
        for _ in range(args.rounds):  # in turns, so that a change of load hits both
            for name, cores in rates:
                rates[name, cores].append(
                    measure(name, folder, args.batch, args.batches, args.cpus[:cores])
                )
    for (name, cores), values in rates.items():
        rate = statistics.median(values)
        rows.append({
            "pipeline": name,
            "cores": cores,
            "images_per_s": round(rate, 1),
            "images_per_s_per_core": round(rate / cores, 1),
            "rounds": [round(v, 1) for v in values],
        })
    per_core = {
        name: max(r["images_per_s_per_core"] for r in rows if r["pipeline"] == name)
        for name in ("ours", "tfdata", "previous")
    }
    cores_h100 = {name: H100_RESNET50_IMAGES_PER_S / rate for name, rate in per_core.items()}
    rate_of = {(r["pipeline"], r["cores"]): r["images_per_s"] for r in rows}
    ours_over_tfdata = {
        str(cores): round(rate_of["ours", cores] / rate_of["tfdata", cores], 3)
        for cores in args.cores
    }
    batch_1024 = {
        "float32_mb": 1024 * IMAGE_SIZE**2 * 3 * 4 / 1e6,
        "uint8_mb": (1024 * IMAGE_SIZE**2 * 3 + 1024 * device_transform.AUGMENT_WIDTH * 4) / 1e6,
    }
    print(
        f"\nImageNet train input: {len(encoded)} JPEGs {JPEG_SHAPE[1]}x{JPEG_SHAPE[0]} "
        f"q{JPEG_QUALITY} cut from scikit-learn's sample photographs ({mean_kib:.0f} KiB mean); "
        f"{len(args.cpus)} CPUs here, load average {load_before[0]:.2f} before"
    )
    print(
        f"single thread: full decode {breakdown['decode_ms']:.2f} ms/image; ours decode + crop "
        f"{breakdown['ours_decode_crop_ms']:.2f} ms (reduced-size decoding for "
        f"{100 * breakdown['reduced_decodes']:.0f}% of crops); previous host transform after "
        f"decoding {breakdown['previous_transform_ms']:.2f} ms\n"
    )
    print("| pipeline | cores | images/s | images/s per core | rounds |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['pipeline']} | {row['cores']} | {row['images_per_s']:.0f} "
            f"| {row['images_per_s_per_core']:.0f} | {row['rounds']} |"
        )
    ratios = ", ".join(f"{ratio:.2f} on {cores}" for cores, ratio in ours_over_tfdata.items())
    print(f"\nOurs over tf.data (medians, same run), by cores: {ratios}.")
    print(
        f"One H100 (ResNet-50, bf16, {H100_RESNET50_IMAGES_PER_S} images/s) needs "
        f"{cores_h100['ours']:.1f} cores with ours, {cores_h100['tfdata']:.1f} with tf.data, "
        f"{cores_h100['previous']:.1f} with the previous pipeline; an {GPUS_PER_HOST}-GPU host "
        f"{GPUS_PER_HOST * cores_h100['ours']:.0f}, {GPUS_PER_HOST * cores_h100['tfdata']:.0f} "
        f"and {GPUS_PER_HOST * cores_h100['previous']:.0f}. A batch of 1024 crosses to the device "
        f"as {batch_1024['uint8_mb']:.0f} MB (uint8 + parameters), not "
        f"{batch_1024['float32_mb']:.0f} MB (float32)."
    )
    print(
        json.dumps(
            {
                "benchmark": "input_imagenet",
                "cpu_count": len(args.cpus),
                "load_average_before": round(load_before[0], 2),
                "jpeg_shape": list(JPEG_SHAPE),
                "jpeg_mean_kib": round(mean_kib, 1),
                "batch": args.batch,
                "batches": args.batches,
                "single_thread": breakdown,
                "rows": rows,
                "ours_images_per_sec_per_core": per_core["ours"],
                "tfdata_images_per_sec_per_core": per_core["tfdata"],
                "ours_over_tfdata_by_cores": ours_over_tfdata,
                "previous_images_per_sec_per_core": per_core["previous"],
                "cores_per_h100": {k: round(v, 1) for k, v in cores_h100.items()},
                "cores_per_8_gpu_host": {
                    k: round(GPUS_PER_HOST * v, 1) for k, v in cores_h100.items()
                },
                "batch_1024_mb": {k: round(v, 1) for k, v in batch_1024.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
