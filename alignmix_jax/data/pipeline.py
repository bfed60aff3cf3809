"""Train and eval iterators: epoch-exact, deterministic given a seed, sharded across hosts.

Batch `step` of the training stream is a pure function of (seed, step): epoch = step // steps per
epoch takes a fresh permutation from (seed, epoch); the global batch is a contiguous slice of it;
augmentation parameters for the global batch come from (seed, step); host `p` of `P` reads and
augments only rows [p * host_batch, (p + 1) * host_batch). So resuming at a step needs no replay,
and the hosts' batches put side by side equal the single-host batch. grain's `MapDataset` maps
step numbers to batches in background threads, in order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignmix_jax.data import augment, device_transform, sources
from alignmix_jax.data.base import ArraySource
from alignmix_jax.data.config import DataSpec, resolve_spec

PERMUTATION_STREAM = 0
AUGMENTATION_STREAM = 1
MAX_STEPS = 2**62
# Where images are decoded: images per grain element, and threads per CPU core (at most
# MAX_DECODE_THREADS). More threads a core contend for the GIL: on 2 cores, 16 threads made 9% fewer
# images/s than 2 to 4 (benchmarks/bench_input_imagenet.py).
DECODE_CHUNK = 8
DECODE_THREADS_PER_CORE = 2
MAX_DECODE_THREADS = 16
ARRAY_THREADS = 2
# Batches grain holds ready on the host, whatever its thread count (at ImageNet scale one uint8
# batch of 1024 is 154 MB; the device-side `prefetch_to_mesh` holds 2 more).
PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Shapes, sizes and normalisation of a dataset as the pipelines deliver it.

    `image_shape` is (H, W, C) after preprocessing; `mean`/`std` are per channel on [0, 1].
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_eval: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    has_boxes: bool
    class_names: tuple[str, ...]
    location: str  # where the examples are read from, in words

    @property
    def normalisation(self) -> device_transform.Normalisation:
        """What `model_input` normalises the pipelines' uint8 images with."""
        return device_transform.Normalisation(self.mean, self.std)


def _location(spec: DataSpec) -> str:
    """Where `spec`'s examples are read from, in words (for the run's banner)."""
    source = spec.defaults.source
    if source == "digits":
        return "scikit-learn's bundled copy"
    if source == "image_folder":
        return spec.path
    where = spec.data_dir or "tfds's default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    return f"tfds array_record files in {where}"


def get_dataset_info(data_config) -> DatasetInfo:
    """The `DatasetInfo` of `config.data`: `num_train` counts the training rows (`train_split`
    after slicing and `train_examples_per_class`), `num_eval` the rows of `eval_split`; `mean` and
    `std` are what the pipelines normalise with. Reads metadata (prepares a tfds dataset once),
    labels where a stratified slice or a per-class subset needs them, and the training images where
    the statistics are computed from them (image folders, digits without `data.mean`/`data.std`)."""
    spec = resolve_spec(data_config)
    meta = sources.dataset_metadata(spec)
    num_train = sources.num_training_examples(spec)
    num_eval = sources.num_examples(spec, spec.eval_split, field="data.eval_split")
    if spec.validation_split is not None:
        sources.num_examples(spec, spec.validation_split, field="data.validation_split")
    _warn_if_evaluating_on_training_rows(spec)
    mean, std = sources.normalisation(spec)
    return DatasetInfo(
        name=spec.name,
        num_classes=len(meta.class_names),
        image_shape=(spec.image_size, spec.image_size, meta.channels),
        num_train=num_train,
        num_eval=num_eval,
        mean=mean,
        std=std,
        has_boxes=spec.defaults.has_boxes,
        class_names=meta.class_names,
        location=_location(spec),
    )


@functools.cache
def _warn_if_evaluating_on_training_rows(spec: DataSpec) -> None:
    """Logs a warning (once) when `eval_split` or `validation_split` shares examples with the
    training rows."""
    training = sources.select(
        spec, spec.train_split, per_class=spec.train_examples_per_class, field="data.train_split"
    )
    for field in ("eval_split", "validation_split"):
        split = getattr(spec, field)
        if split is None:
            continue
        evaluated = sources.select(spec, split, field=f"data.{field}")
        shared = sum(
            len(np.intersect1d(train_rows, eval_rows))
            for train_name, train_rows in training
            for eval_name, eval_rows in evaluated
            if train_name == eval_name
        )
        if shared:
            logging.warning(
                "data.%s %r shares %d examples with the training rows (data.train_split %r): "
                "its accuracy is not a held-out accuracy. Hold out complementary slices, e.g. "
                "'train[:45000](stratified)' and 'train[45000:](stratified)'.",
                field, split, shared, spec.train_split,
            )


def steps_per_epoch(data_config, global_batch_size: int) -> int:
    """Full global batches per epoch of the training split (the remainder is dropped)."""
    info = get_dataset_info(data_config)
    _check_batch_size(global_batch_size, 1)
    steps = info.num_train // global_batch_size
    if steps == 0:
        raise ValueError(
            f"global_batch_size: {global_batch_size} exceeds the {info.num_train} training "
            f"examples of {info.name!r}"
        )
    return steps


def _check_batch_size(global_batch_size: int, process_count: int) -> None:
    if not isinstance(global_batch_size, int | np.integer) or global_batch_size <= 0:
        raise ValueError(f"global_batch_size: expected a positive int, got {global_batch_size!r}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size: {global_batch_size} is not divisible by process_count "
            f"{process_count}"
        )


def _host_layout(global_batch_size, process_index, process_count) -> tuple[int, int, int]:
    """(process_index, process_count, host_batch), defaulting to this JAX process."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index: expected 0 <= process_index < process_count={process_count}, got "
            f"{process_index}"
        )
    _check_batch_size(global_batch_size, process_count)
    return process_index, process_count, global_batch_size // process_count


def _preprocess(spec, source, images, params, boxes):
    """Crops and flips on the host (per `params`; none when empty) one host batch of `images`
    (n, S, S, C) uint8 or, for variable-size sources, a list of (H_i, W_i, C) uint8; returns
    (uint8 (n, S, S, C), boxes (n, 4) moved with the test-time crop or None). ImageNet-style
    training does not come here: sources crop while reading (`read_cropped`)."""
    size = spec.image_size
    if source.variable_size:
        boxes = [None] * len(images) if boxes is None else boxes
        pairs = [
            augment.resize_shorter_center_crop(image, size, box)
            for image, box in zip(images, boxes, strict=True)
        ]
        images = np.stack([image for image, _ in pairs])
        boxes = None if pairs[0][1] is None else np.stack([box for _, box in pairs])
    if params:
        pad = augment.crop_padding(spec.augment, size)
        images = augment.random_crop_flip(images, params["offset"], params["flip"], pad)
    return images, boxes


def _concatenate(examples: list[dict]) -> dict:
    return {key: np.concatenate([example[key] for example in examples]) for key in examples[0]}


def _stream(rows_at, first: int, stop: int, host_batch: int, source) -> Iterator[dict]:
    """Host batches `rows_at(b, slice(None))` for b in [first, stop), in order, made in grain's
    background threads. In-memory sources: one batch per grain element, ARRAY_THREADS threads,
    PREFETCH_BATCHES ready. Decoding sources: `decoded_batches`."""
    if isinstance(source, ArraySource):
        batches = grain.MapDataset.range(first, stop).map(lambda b: rows_at(b, slice(None)))
        options = grain.ReadOptions(
            num_threads=ARRAY_THREADS, prefetch_buffer_size=PREFETCH_BATCHES
        )
        return iter(batches.to_iter_dataset(options))
    return decoded_batches(rows_at, first, stop, host_batch)


def decoded_batches(rows_at, first: int, stop: int, host_batch: int) -> Iterator[dict]:
    """Host batches for b in [first, stop), in order, each made as chunks of DECODE_CHUNK rows
    `rows_at(b, slice(k, k + DECODE_CHUNK))` (dicts of arrays with leading axis the rows), one
    chunk per grain element on `decode_threads()` threads, then joined. The host holds that many
    chunks in flight, not batches, however large the batch. Chunks rather than single images:
    grain's per-element work holds the GIL, and one image per element kept two cores from scaling
    (benchmarks/bench_input_imagenet.py)."""
    chunks_per_batch = -(-host_batch // DECODE_CHUNK)
    stop = min(stop, MAX_STEPS // chunks_per_batch)

    def chunk_at(position: int) -> dict:
        batch, chunk = divmod(position, chunks_per_batch)
        start = chunk * DECODE_CHUNK
        return rows_at(batch, slice(start, min(start + DECODE_CHUNK, host_batch)))

    chunks = grain.MapDataset.range(first * chunks_per_batch, stop * chunks_per_batch)
    threads = decode_threads()
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
    dataset = chunks.map(chunk_at).to_iter_dataset(options)
    return iter(dataset.batch(chunks_per_batch, batch_fn=_concatenate))


def decode_threads() -> int:
    """Threads `decoded_batches` decodes on: DECODE_THREADS_PER_CORE per CPU this process may
    run on, at most MAX_DECODE_THREADS."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(MAX_DECODE_THREADS, DECODE_THREADS_PER_CORE * cores)


class _Permutations:
    """Per-epoch permutations of `size` examples from (seed, epoch), the latest few cached."""

    def __init__(self, seed: int, size: int):
        self._seed, self._size = seed, size
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                rng = np.random.default_rng([PERMUTATION_STREAM, self._seed, epoch])
                self._cache[epoch] = rng.permutation(self._size)
                for stale in [e for e in self._cache if e < epoch - 1]:
                    del self._cache[stale]
            return self._cache[epoch]


def make_train_iterator(
    data_config,
    global_batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite training stream of host-local batches, starting at batch `start_step`.

    Yields {"image": uint8 (host_batch, H, W, C) cropped (and, but for ImageNet-style
    augmentation, flipped), "label": int32 (host_batch,)} and, with `augment` "imagenet",
    "augment": float32 (host_batch, 10), the flip, colour jitter and lighting that
    `device_transform.model_input` applies with the normalisation inside the step;
    host_batch = global_batch_size // process_count. Epoch-exact
    (each epoch a fresh permutation from (seed, epoch), remainder dropped) and deterministic given
    `seed`; host `process_index` reads only its disjoint share of each global batch.
    """
    spec = resolve_spec(data_config)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if not isinstance(start_step, int | np.integer) or start_step < 0:
        raise ValueError(f"start_step: expected a non-negative int, got {start_step!r}")
    process_index, _, host_batch = _host_layout(global_batch_size, process_index, process_count)
    num_steps = steps_per_epoch(data_config, global_batch_size)
    source = sources.training_examples(spec)
    permutation = _Permutations(int(seed), len(source))
    host_rows = slice(process_index * host_batch, (process_index + 1) * host_batch)

    @functools.lru_cache(maxsize=8)
    def params_at(step: int) -> dict:
        rng = np.random.default_rng([AUGMENTATION_STREAM, int(seed), step])
        params = augment.draw_params(rng, spec.augment, global_batch_size, spec.image_size)
        return augment.slice_params(params, host_rows)

    @functools.lru_cache(maxsize=8)
    def packed_at(step: int) -> np.ndarray:
        return device_transform.pack_params(params_at(step))

    def batch_at(step: int, rows: slice) -> dict[str, np.ndarray]:
        epoch, step_in_epoch = divmod(step, num_steps)
        first = step_in_epoch * global_batch_size
        indices = permutation(epoch)[first : first + global_batch_size][host_rows][rows]
        params = augment.slice_params(params_at(step), rows)
        if spec.augment == "imagenet":
            images, labels = source.read_cropped(indices, params, spec.image_size)
            packed = packed_at(step)[rows]
            return {"image": images, "label": labels, device_transform.AUGMENT_KEY: packed}
        images, labels, _ = source.read(indices)
        images, _ = _preprocess(spec, source, images, params, None)
        return {"image": images, "label": labels}

    return _stream(batch_at, int(start_step), MAX_STEPS, host_batch, source)


def make_eval_iterator(
    data_config,
    global_batch_size: int,
    *,
    split: str | None = None,
    with_boxes: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over `split` (default `eval_split`), test-time preprocessing only.

    Yields {"image": uint8 (host_batch, H, W, C) (normalised on the device by
    `device_transform.model_input`), "label": int32 (host_batch,), "mask": float32
    (host_batch,) 1 real / 0 padding} and, with `with_boxes`, "bbox": float32 (host_batch, 4)
    (ymin, xmin, ymax, xmax) on [0, 1] of the preprocessed image. The last global batch is padded.
    """
    spec = resolve_spec(data_config)
    if with_boxes and not spec.defaults.has_boxes:
        raise ValueError(
            f"with_boxes: dataset {spec.name!r} has no bounding boxes; only "
            "'caltech_birds2011' has them"
        )
    process_index, _, host_batch = _host_layout(global_batch_size, process_index, process_count)
    field = "data.eval_split" if split is None else "split"
    source = sources.load_split(spec, spec.eval_split if split is None else split, field=field)
    num_examples = len(source)

    def batch_at(batch: int, rows: slice) -> dict[str, Any]:
        first = batch * global_batch_size + process_index * host_batch
        positions = np.arange(first, first + host_batch)[rows]
        real = positions < num_examples
        images, labels, boxes = source.read(np.where(real, positions, 0))
        images, boxes = _preprocess(spec, source, images, {}, boxes)
        out = {"image": images, "label": labels, "mask": real.astype(np.float32)}
        if with_boxes:
            out["bbox"] = boxes
        return out

    num_batches = math.ceil(num_examples / global_batch_size)
    return _stream(batch_at, 0, num_batches, host_batch, source)


def prefetch_to_mesh(iterator, mesh: jax.sharding.Mesh, size: int = 2):
    """Turns host-local batches {key: (host_batch, ...)} into global `jax.Array`s of shape
    (global_batch, ...) sharded `NamedSharding(mesh, P("data"))`, `size` batches ahead."""
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh: expected a 'data' axis, got axes {mesh.axis_names}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    return _prefetch(iterator, NamedSharding(mesh, P("data")), size)


def _prefetch(iterator, sharding: NamedSharding, size: int):
    """The producer is an ordinary (non-daemon) thread that stops when the generator is closed or
    the thread that first read it has ended (so one left open does not hold the process at exit;
    a read from another thread then raises), and closing joins it. A daemon thread would be killed
    at exit wherever it stood, and killed inside jax's C++ the process aborts ("FATAL: exception
    not rethrown")."""
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    finished = object()

    consumer = threading.current_thread()

    def stopped() -> bool:
        return stop.is_set() or not consumer.is_alive()

    def put(item) -> None:
        while not stopped():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for batch in iterator:
                if stopped():
                    return
                put({
                    key: jax.make_array_from_process_local_data(sharding, value)
                    for key, value in batch.items()
                })
            put(finished)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    producer = threading.Thread(target=produce, name="prefetch_to_mesh")
    producer.start()
    try:
        while True:
            try:
                item = ready.get(timeout=0.1)
            except queue.Empty:
                # What a producer put before it ended is all there once it has ended.
                if producer.is_alive() or not ready.empty():
                    continue
                raise RuntimeError(
                    f"prefetch_to_mesh: stopped when {consumer.name}, the thread that first read "
                    "it, ended; read a prefetch from the thread that started reading it"
                ) from None
            if item is finished:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()
