"""Training and evaluation of one experiment config: `train_and_evaluate(config, workdir)`.

The train step is one jitted call of a per-device program (`jax.shard_map` over the `data` axis):
each device mixes its own shard, BatchNorm statistics are synced over `data`, gradients and metrics
are `lax.pmean`ed, and the SGD update runs on the replicated state.
"""

import dataclasses
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from alignmix_jax import data, models
from alignmix_jax.core import method
from alignmix_jax.core.mixing import mixed_cross_entropy
from alignmix_jax.trainer import (
    checkpointing,
    compilation_cache,
    experiment_config,
    logging_utils,
    parallel,
    run_summary,
)

DATA_AXIS = parallel.DATA_AXIS
SUMMARY_FILE = "summary.json"
PROFILE_DIR = "profile"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Replicated training state: step (int32 scalar), params, batch_stats, opt_state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`config.num_train_steps` when > 0, else `num_epochs * steps_per_epoch` (at least 1)."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(round(config.num_epochs * steps_per_epoch)))


def create_learning_rate_fn(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Learning rate per step: linear warmup, then constant, piecewise-constant or cosine.

    Piecewise: multiplied by `decay_factor` at each epoch of `boundaries_epochs` (absolute epochs,
    as torch's MultiStepLR). Cosine: decays to 0 at `total_steps`.
    """
    base = optimizer_config.learning_rate
    warmup_steps = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    if optimizer_config.schedule == "constant":
        main = optax.constant_schedule(base)
    elif optimizer_config.schedule == "piecewise":
        boundaries = {}
        for epoch in optimizer_config.boundaries_epochs:
            boundary = int(round(epoch * steps_per_epoch)) - warmup_steps
            boundaries[boundary] = boundaries.get(boundary, 1.0) * optimizer_config.decay_factor
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        main = optax.cosine_decay_schedule(base, max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, base, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and coupled L2 weight decay, as torch.optim.SGD applies it.

    `weight_decay * params` is added to the gradient of every parameter (BatchNorm scales and
    biases included) before the momentum trace.
    """
    momentum = optimizer_config.momentum or None
    return optax.chain(
        optax.add_decayed_weights(optimizer_config.weight_decay),
        optax.sgd(learning_rate_fn, momentum=momentum, nesterov=optimizer_config.nesterov),
    )


def create_train_state(
    model: models.StagedClassifier,
    optimizer: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    seed: int,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """Initial state from `seed`, replicated on `mesh`; `image_shape` is (H, W, C) of one image.

    Parameters are drawn with the "rbg" PRNG (XLA's RngBitGenerator): the same values on every
    host, and about 4x faster to compile than threefry for a network's many initialisers.
    """

    def init() -> TrainState:
        key = jax.random.key(seed, impl="rbg")
        variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
        )

    return jax.jit(init, out_shardings=parallel.replicated_sharding(mesh))()


def _all_finite(tree) -> jax.Array:
    """True when every array of `tree` is free of NaN and infinity (a bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def make_train_step(
    model: models.StagedClassifier,
    mix_config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    mesh: jax.sharding.Mesh,
    normalisation: data.Normalisation | None = None,
) -> Callable:
    """The jitted data-parallel step `(state, batch, base_key) -> (state, metrics)`.

    BatchNorm statistics are synced over `data` when the model has that `axis_name`; a model
    without one (`batch_norm_group` 1) normalises each device's shard alone, and the state keeps
    device 0's running statistics, as `DataParallel` keeps replica 0's.

    `state` replicated; `batch` {"image": (B, H, W, C), "label": (B,)} sharded over `data` (B the
    global batch), made model input by `data.model_input(batch, normalisation)` (uint8 images,
    on-device augmentation; float model input with `normalisation` None); `base_key` a
    replicated key. The step key is `fold_in(base_key, state.step)`, the same on every device,
    so a resumed run draws exactly what an uninterrupted one would. `state` is donated.
    Metrics (replicated scalars): loss (the mean mixed loss of the global batch), lam (its
    mean label weight), learning_rate, finite (loss and new parameters free
    of NaN and infinity), and the alignment diagnostics `method.DIAGNOSTICS` (device means).
    """
    forward = method.make_mixed_forward(model, mix_config, DATA_AXIS)

    def per_device_step(state: TrainState, batch: dict, base_key: jax.Array):
        step_key = jax.random.fold_in(base_key, state.step)
        images, labels = data.model_input(batch, normalisation), batch["label"]

        def loss_fn(params):
            out = forward(params, state.batch_stats, images, labels, step_key)
            loss = mixed_cross_entropy(
                out.logits, labels, out.partner_labels, out.lam, mix_config.label_smoothing
            )
            return loss, out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = out.batch_stats
        if model.axis_name is None:  # per-device BatchNorm: keep device 0's running statistics
            batch_stats = jax.tree.map(lambda v: jax.lax.all_gather(v, DATA_AXIS)[0], batch_stats)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        loss = jax.lax.pmean(loss, DATA_AXIS)
        metrics = {
            "loss": loss,
            "lam": jax.lax.pmean(jnp.mean(out.lam), DATA_AXIS),
            "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
            "finite": jnp.isfinite(loss) & _all_finite(params),
            **jax.lax.pmean(out.diagnostics, DATA_AXIS),
        }
        return new_state, metrics

    # check_vma=False: pmap semantics. Per-device gradients are averaged explicitly with pmean
    # (with check_vma the gradient of the replicated params would already be summed).
    sharded_step = jax.shard_map(
        per_device_step,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )
    return jax.jit(sharded_step, donate_argnums=(0,))


def make_eval_step(
    model: models.StagedClassifier,
    extra: Callable | None = None,
    normalisation: data.Normalisation | None = None,
) -> Callable:
    """The jitted eval step `(variables, batch, key) -> (sums, per_example)` of every evaluation
    (the trainer's and `evaluation.report`'s).

    `variables` {"params", "batch_stats"} replicated; `batch` {"image": (B, H, W, C), "label":
    (B,), "mask": (B,)} sharded over `data` (jit partitions the step; eval-mode BatchNorm has no
    collective), its images made model input as in `make_train_step`; `key` for what `extra`
    draws. `sums`: {"count", "correct1", "correct5"}, sums over the examples with mask 1 (top-5
    is top-min(5, K)), and the sums `extra` adds; `per_example`: `extra`'s per-example
    outputs ({} without it).
    `extra(variables, logits_fn, logits, intermediates, batch, key) -> (sums, per_example)`, with
    `logits_fn(images) -> logits` the eval-mode model, computes further metrics in the same step.
    """

    def step(variables, batch, key):
        def logits_fn(images):
            return model.apply(variables, images, train=False)[0]

        batch = {**batch, "image": data.model_input(batch, normalisation)}
        logits, intermediates = model.apply(variables, batch["image"], train=False)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        top_k = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        sums = {
            "count": jnp.sum(mask),
            "correct1": jnp.sum((top_k[:, 0] == labels) * mask),
            "correct5": jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * mask),
        }
        if extra is None:
            return sums, {}
        extra_sums, per_example = extra(variables, logits_fn, logits, intermediates, batch, key)
        return {**sums, **extra_sums}, per_example

    return jax.jit(step)


def evaluate_split(eval_step: Callable, state: TrainState, config, mesh, split: str):
    """Top-1 and top-5 accuracy (in %) over one pass of `split` of `config.data`."""
    totals = None
    batches = data.make_eval_iterator(config.data, config.eval_batch_size, split=split)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    for batch in data.prefetch_to_mesh(batches, mesh):
        counts, _ = eval_step(variables, batch, None)
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {
        "top1": 100.0 * float(totals["correct1"]) / count,
        "top5": 100.0 * float(totals["correct5"]) / count,
    }


def _host_metrics(step_metrics: list[dict]) -> dict[str, np.ndarray]:
    """Per-step metric dicts of device scalars -> {name: (steps,) host array} (blocks on them)."""
    return jax.device_get(jax.tree.map(lambda *values: jnp.stack(values), *step_metrics))


def _abstract(tree):
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), tree
    )


class _Throughput:
    """Images/s over log intervals, and how an interval's time splits between waiting for input
    and the rest (the device step); the interval holding the first (compiling) step is dropped
    from the median.

    (clu's `periodic_actions.ReportProgress` would do this, but clu cannot be imported without
    TensorFlow, which training does not need.)
    """

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.rates: list[float] = []
        self._start = time.perf_counter()
        self._steps = 0
        self._input_wait = 0.0
        self._first_interval = True

    def pause(self) -> float:
        """Time spent outside training (eval, checkpoints) is excluded via `resume(paused_at)`."""
        return time.perf_counter()

    def resume(self, paused_at: float) -> None:
        self._start += time.perf_counter() - paused_at

    def add_step(self, input_wait: float) -> None:
        """Counts a step whose batch took `input_wait` seconds to arrive."""
        self._steps += 1
        self._input_wait += input_wait

    def close_interval(self) -> dict[str, float]:
        """The interval that just ended (call after blocking on its results): images_per_sec,
        step_sec (wall time per step) and input_wait_sec (of which waiting for the batch)."""
        now = time.perf_counter()
        seconds = max(now - self._start, 1e-9)
        steps = max(self._steps, 1)
        interval = {
            "images_per_sec": self._steps * self.global_batch_size / seconds,
            "step_sec": seconds / steps,
            "input_wait_sec": self._input_wait / steps,
        }
        if not self._first_interval:
            self.rates.append(interval["images_per_sec"])
        self._first_interval = False
        self._start, self._steps, self._input_wait = now, 0, 0.0
        return interval

    def median(self, fallback: float) -> float:
        return statistics.median(self.rates) if self.rates else fallback


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became NaN or infinite; nothing from that step on was saved."""


class RunInterrupted(Exception):
    """The run stopped on SIGTERM or SIGINT after writing a checkpoint at `step`; rerunning the
    same command resumes it. `signal_name` is e.g. "SIGTERM"."""

    def __init__(self, signal_name: str, step: int, workdir):
        self.signal_name, self.step = signal_name, step
        super().__init__(
            f"{signal_name}: stopped after step {step} and wrote its checkpoint in "
            f"{pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR}; rerun the same command "
            "to resume"
        )


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop after the current step (a context manager).

    One process: the handlers set a flag, read after each step; a second SIGINT (Ctrl-C again)
    raises KeyboardInterrupt at once, without a checkpoint. Several processes: SIGTERM goes to
    JAX's preemption service (started by `jax.distributed.initialize`), which agrees on one step at
    which every process stops (`multihost_utils.reached_preemption_sync_point`); SIGINT is passed
    on to it as SIGTERM.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        multi_process = jax.process_count() > 1
        for signum in self.SIGNALS:
            if multi_process and signum == signal.SIGTERM:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if jax.process_count() > 1:
            self.received = signal.Signals(signum).name
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"{self.received}: stopping after this step with a checkpoint"
            + (" (Ctrl-C again to stop at once without one)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
            flush=True,
        )

    def should_stop(self, step: int) -> bool:
        """Whether every process stops after `step`; call once per step on every process."""
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        return self.received is not None

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _check_finite(history: dict, first_step: int, workdir, last_checkpoint: int | None) -> None:
    """Raises TrainingDivergedError naming the first step of `history` (per-step metrics from
    `first_step` on) whose loss or parameters are not finite."""
    bad = np.flatnonzero(~np.asarray(history["finite"], bool))
    if not bad.size:
        return
    index = int(bad[0])
    where = (
        f"step {last_checkpoint} in {pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR}"
        if last_checkpoint is not None
        else "none: no checkpoint was written yet"
    )
    raise TrainingDivergedError(
        f"training diverged at step {first_step + index}: loss {history['loss'][index]}, "
        f"learning rate {history['learning_rate'][index]:.6g} (the loss or a parameter is NaN or "
        f"infinite). Nothing from that step on was saved; the last good checkpoint is {where}. "
        "Lower --config.optimizer.learning_rate and rerun (with --accept_config_changes to "
        "resume), or set --config.stop_on_divergence=False to train on regardless."
    )


def _alignment_record(history: dict) -> dict[str, float]:
    """The interval's alignment diagnostics: the fraction of its steps that ran aligned mixing
    and, when some did, the means over those steps of the plan and feature statistics."""
    aligned = np.asarray(history["aligned"], np.float64)
    record = {"aligned_fraction": float(aligned.mean())}
    if aligned.sum() > 0:
        for name in method.DIAGNOSTICS[1:]:
            record[name] = float(np.asarray(history[name], np.float64).sum() / aligned.sum())
    return record


class _Profile:
    """A `jax.profiler` trace of the steps `config.profile_steps` = (first, last) in
    `workdir/profile` (TensorBoard's profile plugin, and `perfetto_trace.json.gz` for Perfetto)."""

    def __init__(self, steps: tuple[int, int] | None, workdir: pathlib.Path, logger):
        self._steps, self._logger = steps, logger
        self.directory = workdir / PROFILE_DIR
        self._tracing = False

    def before(self, step: int) -> None:
        if self._steps is not None and step == self._steps[0]:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self._tracing = True

    def after(self, step: int, state) -> None:
        if self._tracing and step == self._steps[1]:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
            self._logger.message(f"Wrote a profile of steps {self._steps} in {self.directory}")


def _device_memory() -> dict[str, float]:
    """{"device_peak_memory_gib": the first local device's peak} where the backend reports it
    (GPUs, TPUs; not the CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return {}
    return {"device_peak_memory_gib": stats["peak_bytes_in_use"] / 2**30}


def _log_interval(logger, throughput: _Throughput, step: int, history: dict,
                  num_devices: int) -> float:
    """Writes the train metrics of the interval ending at `step`, with where its time went;
    returns its images/s."""
    interval = throughput.close_interval()
    rate = interval["images_per_sec"]
    loss = float(np.mean(history["loss"]))
    learning_rate = float(history["learning_rate"][-1])  # the rate of the step logged
    record = {
        "train_loss": loss,
        "learning_rate": learning_rate,
        "lam": float(np.mean(history["lam"])),
        **interval,
        "images_per_sec_per_device": rate / num_devices,
        **_device_memory(),
        **_alignment_record(history),
    }
    logger.write(step, record)
    input_share = interval["input_wait_sec"] / interval["step_sec"]
    logger.advance(step, {
        "loss": f"{loss:.4f}",
        "lr": f"{learning_rate:.4g}",
        "images/s": f"{rate:.0f}",
        "input wait": f"{100 * input_share:.0f}%",
    })
    return rate


def _evaluate_and_keep_best(
    eval_step, state, step, config, mesh, meta, checkpointer, logger, total_steps
) -> None:
    """Evaluates every split at `step`, records it in `meta` and saves the weights when they are
    the best of the selection split (see `run_summary`)."""
    results = {
        name: evaluate_split(eval_step, state, config, mesh, split)
        for name, split in run_summary.evaluation_splits(config.data).items()
    }
    if run_summary.record_eval(meta, step, results, config.summary_last_evals):
        checkpointer.save_best(step, state.params, state.batch_stats, {"step": step, **results})
    record = {"eval_top1": results["test"]["top1"], "eval_top5": results["test"]["top5"]}
    if run_summary.VALIDATION in results:
        validation = results[run_summary.VALIDATION]
        record.update(validation_top1=validation["top1"], validation_top5=validation["top5"])
    logger.write(step, record)
    shown = ", ".join(f"{name} top-1 {result['top1']:.2f}%" for name, result in results.items())
    best_test = meta["best"]["test"]
    logger.message(
        f"step {step}/{total_steps}: {shown}, test top-5 {results['test']['top5']:.2f}% "
        f"(best test top-1 {best_test['top1']:.2f}% at step {best_test['step']})"
    )


def run_banner(config, info: data.DatasetInfo, workdir, start_step: int, total_steps: int,
               steps_per_epoch: int, num_params: int, mesh: jax.sharding.Mesh) -> str:
    """The lines a run starts with: workdir and the step it resumes from, the data and where it
    is read from (and what a `:smoke` config replaced), model, method, devices, batch, steps."""
    height, width, channels = info.image_shape
    devices = mesh.devices.flat[0]
    lines = [
        f"Resumed from the checkpoint at step {start_step} in {workdir}"
        if start_step else f"New run in {workdir}",
        f"Data: {info.name} from {info.location}; {info.num_train} training and {info.num_eval} "
        f"eval images, {height}x{width}x{channels}, {info.num_classes} classes",
    ]
    if config.smoke_replaced_data is not None:
        lines.append(
            f"Smoke: ':smoke' replaced {config.smoke_replaced_data} by {info.name}; this run "
            f"exercises none of {config.smoke_replaced_data}'s data pipeline"
        )
    lines += [
        f"Model: {config.model.name}, {num_params / 1e6:.3g} M parameters, computing in "
        f"{config.compute_dtype}; method {config.mix.method}",
        f"Devices: {mesh.size} x {devices.device_kind} on {jax.process_count()} host(s); batch "
        f"{config.batch_size} ({config.batch_size // mesh.size} per device)",
        f"Steps: {total_steps}, {total_steps / steps_per_epoch:.3g} epochs of "
        f"{steps_per_epoch} steps",
    ]
    return "\n".join(lines)


def prepare_workdir(workdir) -> pathlib.Path:
    """Creates `workdir` if needed and checks that files can be written there; a ValueError with
    one line naming the problem otherwise (a file in the way, a read-only folder, ...)."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} is a file; expected a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check"):
            pass
    except OSError as error:
        raise ValueError(
            f"workdir={str(workdir)!r} cannot be written: {error.strerror or error}"
        ) from None
    return workdir


@dataclasses.dataclass(frozen=True)
class Training:
    """What a run of a config trains with on `mesh` (`build_training`): the model, its schedule and
    optimizer, the run's length, the base key of every step's draws, and the compiled steps."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    info: data.DatasetInfo
    model: models.StagedClassifier
    learning_rate_fn: optax.Schedule
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    total_steps: int
    last_mixing_step: int
    base_key: jax.Array
    mixing_step: Callable
    plain_step: Callable

    def initial_state(self) -> TrainState:
        """The replicated initial state of the config's seed."""
        return create_train_state(
            self.model, self.optimizer, tuple(self.info.image_shape), self.config.seed, self.mesh
        )

    def step_for(self, step: int) -> Callable:
        """The jitted step (`make_train_step`) that trains step number `step` (1-based): the
        mixing step through `mix.off_after_epoch`, then the plain one."""
        return self.mixing_step if step <= self.last_mixing_step else self.plain_step


def build_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Training:
    """The `Training` of a validated `config` on `mesh` (compiles nothing yet)."""
    info = data.get_dataset_info(config.data)
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    total_steps = total_train_steps(config, steps_per_epoch)
    last_mixing_step = total_steps
    if config.mix.off_after_epoch is not None:
        last_mixing_step = int(round(config.mix.off_after_epoch * steps_per_epoch))
    model = models.build_model(
        config.model,
        info.num_classes,
        axis_name=DATA_AXIS,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    learning_rate_fn = create_learning_rate_fn(config.optimizer, steps_per_epoch, total_steps)
    optimizer = create_optimizer(config.optimizer, learning_rate_fn)
    plain_mix = ml_collections.ConfigDict(config.mix.to_dict())
    plain_mix.method = "none"
    return Training(
        config=config,
        mesh=mesh,
        info=info,
        model=model,
        learning_rate_fn=learning_rate_fn,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        last_mixing_step=last_mixing_step,
        base_key=parallel.replicate(jax.random.key(config.seed), mesh),
        mixing_step=make_train_step(
            model, config.mix, optimizer, learning_rate_fn, mesh, info.normalisation
        ),
        plain_step=make_train_step(
            model, plain_mix, optimizer, learning_rate_fn, mesh, info.normalisation
        ),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir, *, accept_config_changes: bool = False
) -> dict:
    """Trains and evaluates `config` in `workdir`; resumes from the latest checkpoint there.

    Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ (last
    `config.keep_checkpoints`), best/ (the weights with the best eval top-1) and summary.json
    (host 0 writes the files; every host takes part in checkpoints).

    Resuming with a config that differs from the run's config.json (apart from where and how it
    runs: logging, paths, hosts) raises `checkpointing.ConfigChangedError` listing the changes,
    unless `accept_config_changes`, which records them in config_changes.jsonl. SIGTERM or SIGINT
    stops the run after the current step with a checkpoint there (`RunInterrupted`). A NaN or
    infinite loss or parameter raises `TrainingDivergedError` before anything non-finite is saved
    (unless `config.stop_on_divergence` is False).

    Returns:
      `run_summary.summarize`'s summary: for the test split "final_top1", "final_top5",
      "best_top1", "best_top5", "best_step", "median_last_top1", and with a validation split
      the same under "validation" and "test_top1_at_best_validation"; plus "selected_on",
      "images_per_sec", "steps", "wall_time_sec" (the run's: this process's, and each earlier
      process's up to its last checkpoint), "process_wall_time_sec" (this process's),
      "process_first_step_sec" (from its start to the end of its first step, compilation
      included; None when it trained no step), "machine".
      Accuracies in %.
    """
    wall_start = time.perf_counter()
    cache_dir = compilation_cache.use_compilation_cache(config.compilation_cache_dir)
    new_workdir = not pathlib.Path(workdir).exists()
    workdir = prepare_workdir(workdir)
    mesh = parallel.make_data_mesh()
    experiment_config.validate_config(config, mesh.size, jax.process_count())
    is_writer = jax.process_index() == 0

    try:
        training = build_training(config, mesh)  # prepares the dataset on first use
    except BaseException:
        if new_workdir and not any(workdir.iterdir()):
            workdir.rmdir()  # leave no empty workdir behind
        raise
    info, steps_per_epoch = training.info, training.steps_per_epoch
    total_steps = training.total_steps
    eval_every = config.eval_every_steps or steps_per_epoch
    state = training.initial_state()
    base_key = training.base_key

    checkpointer = checkpointing.RunCheckpointer(workdir, keep=config.keep_checkpoints)
    meta = run_summary.new_meta()
    last_checkpoint = checkpointer.latest_step()
    if last_checkpoint is not None:
        checkpointing.check_resumed_config(
            config, workdir, last_checkpoint, accept_config_changes, is_writer
        )
        state, meta = checkpointer.restore(_abstract(state))
    earlier_wall_time = meta.get("wall_time_sec", 0.0)  # of the processes before this one
    start_step = int(jax.device_get(state.step))
    if is_writer:
        checkpointing.save_config(config, workdir)
        logging_utils.truncate_metrics(workdir, start_step)
    logger = logging_utils.MetricLogger(
        workdir,
        total_steps,
        start_step,
        is_writer=is_writer,
        tensorboard=config.tensorboard,
        progress_bar=config.progress_bar,
    )
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    logger.message(run_banner(config, info, workdir, start_step, total_steps, steps_per_epoch,
                              num_params, mesh))
    logger.message(f"Compilation cache: {cache_dir or 'off'}")

    eval_step = make_eval_step(training.model, normalisation=training.info.normalisation)
    batches = data.prefetch_to_mesh(
        data.make_train_iterator(
            config.data, config.batch_size, seed=config.seed, start_step=start_step
        ),
        mesh,
    )
    throughput = _Throughput(config.batch_size)
    step_metrics, first_unchecked = [], start_step + 1
    log_window = []  # the host metrics of the steps since the last log, flushed in parts
    rate, first_step_sec = 0.0, None
    profile = _Profile(config.profile_steps, workdir, logger)
    try:
        with StopSignals() as signals:
            for step in range(start_step + 1, total_steps + 1):
                profile.before(step)
                waiting_since = time.perf_counter()
                batch = next(batches)
                throughput.add_step(time.perf_counter() - waiting_since)
                state, metrics = training.step_for(step)(state, batch, base_key)
                step_metrics.append(metrics)
                profile.after(step, state)
                if first_step_sec is None:
                    jax.block_until_ready(metrics)
                    first_step_sec = time.perf_counter() - wall_start
                    logger.message(f"First step done {first_step_sec:.1f} s after the start "
                                   "(compilation included)")
                stopping = signals.should_stop(step)
                log_now = step % config.log_every_steps == 0 or step == total_steps or stopping
                eval_now = step % eval_every == 0 or step == total_steps
                save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
                if not (log_now or eval_now or save_now or stopping):
                    continue
                history = _host_metrics(step_metrics)
                step_metrics = []
                if config.stop_on_divergence:
                    _check_finite(history, first_unchecked, workdir, last_checkpoint)
                first_unchecked = step + 1
                log_window.append(history)
                if log_now:
                    window = {name: np.concatenate([h[name] for h in log_window])
                              for name in history}
                    rate = _log_interval(logger, throughput, step, window, mesh.size)
                    log_window = []
                paused_at = throughput.pause()
                if eval_now:
                    _evaluate_and_keep_best(eval_step, state, step, config, mesh, meta,
                                            checkpointer, logger, total_steps)
                if save_now or stopping:
                    meta["images_per_sec"] = throughput.median(fallback=rate)
                    meta["wall_time_sec"] = earlier_wall_time + time.perf_counter() - wall_start
                    checkpointer.save(step, state, meta)
                    last_checkpoint = step
                throughput.resume(paused_at)
                if stopping:
                    raise RunInterrupted(signals.received, step, workdir)
    finally:
        profile.close()
        batches.close()  # stops the prefetch thread
        checkpointer.close()
        logger.close()

    process_wall_time = time.perf_counter() - wall_start
    summary = run_summary.summarize(
        meta,
        images_per_sec=throughput.median(fallback=meta.get("images_per_sec", rate)),
        steps=int(jax.device_get(state.step)),
        wall_time_sec=earlier_wall_time + process_wall_time,
        process_wall_time_sec=process_wall_time,
        process_first_step_sec=first_step_sec,
        machine=run_summary.machine(),
    )
    if is_writer:
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        logger.message("Summary: " + json.dumps(summary))
    return summary
