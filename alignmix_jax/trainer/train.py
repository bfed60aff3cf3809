"""Training and evaluation of one experiment config: `train_and_evaluate(config, workdir)`.

The train step is one jitted call of a per-device program (`jax.shard_map` over the `data` axis):
each device mixes its own shard, BatchNorm statistics are synced over `data`, gradients and metrics
are `lax.pmean`ed, and the SGD update runs on the replicated state.
"""

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec

from alignmix_jax import data, models
from alignmix_jax.core import method
from alignmix_jax.core.mixing import mixed_cross_entropy
from alignmix_jax.trainer import (
    checkpointing,
    compilation_cache,
    divergence,
    eval_loop,
    experiment_config,
    metrics_log,
    optimization,
    parallel,
    profiling,
    run_config,
    run_directory,
    run_summary,
    stop_signals,
    throughput,
)

DATA_AXIS = parallel.DATA_AXIS
SUMMARY_FILE = "summary.json"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Replicated training state: step (int32 scalar), params, batch_stats, opt_state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


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
    last_mixing_step: int | None = None,
    normalisation: data.Normalisation | None = None,
) -> Callable:
    """The jitted data-parallel step `(state, batch, base_key) -> (state, metrics)`; from step
    number `last_mixing_step + 1` on (None: never) it trains without mixing, in the same program.

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
        mixing = None if last_mixing_step is None else state.step < last_mixing_step

        def loss_fn(params):
            out = forward(params, state.batch_stats, images, labels, step_key, mixing)
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


def _host_metrics(step_metrics: list[dict]) -> dict[str, np.ndarray]:
    """Per-step metric dicts of device scalars -> {name: (steps,) host array} (blocks on them)."""
    return jax.device_get(jax.tree.map(lambda *values: jnp.stack(values), *step_metrics))


def abstract_state(tree):
    """`tree` as `jax.ShapeDtypeStruct`s with its shardings: a restore target."""
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), tree
    )


def _alignment_record(step_metrics: dict) -> dict[str, float]:
    """The interval's alignment diagnostics: the fraction of its steps that ran aligned mixing
    and, when some did, the means over those steps of the plan and feature statistics."""
    aligned = np.asarray(step_metrics["aligned"], np.float64)
    record = {"aligned_fraction": float(aligned.mean())}
    if aligned.sum() > 0:
        for name in method.DIAGNOSTICS[1:]:
            record[name] = float(np.asarray(step_metrics[name], np.float64).sum() / aligned.sum())
    return record


def _device_memory() -> dict[str, float]:
    """{"device_peak_memory_gib": the first local device's peak} where the backend reports it
    (GPUs, TPUs; not the CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return {}
    return {"device_peak_memory_gib": stats["peak_bytes_in_use"] / 2**30}


def _log_interval(logger, timing: throughput.Throughput, step: int, step_metrics: dict,
                  num_devices: int) -> float:
    """Writes the train metrics of the interval ending at `step`, with where its time went;
    returns its images/s."""
    interval = timing.close_interval()
    rate = interval["images_per_sec"]
    loss = float(np.mean(step_metrics["loss"]))
    learning_rate = float(step_metrics["learning_rate"][-1])  # the rate of the step logged
    record = {
        "train_loss": loss,
        "learning_rate": learning_rate,
        "lam": float(np.mean(step_metrics["lam"])),
        **interval,
        "images_per_sec_per_device": rate / num_devices,
        **_device_memory(),
        **_alignment_record(step_metrics),
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


@dataclasses.dataclass(frozen=True)
class _Evaluator:
    """Evaluates every split of a run at a step, logs it, records it in the run record and keeps
    the best weights of the selection split (see `run_summary`)."""

    eval_step: Callable
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    checkpointer: checkpointing.RunCheckpointer
    logger: metrics_log.MetricLogger
    total_steps: int

    def split_accuracy(self, state: TrainState, split: str) -> dict[str, float]:
        batches = data.make_eval_iterator(
            self.config.data, self.config.eval_batch_size, split=split
        )
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return eval_loop.accuracy(
            eval_loop.run_eval_pass(self.eval_step, variables, batches, self.mesh)
        )

    def __call__(self, state: TrainState, step: int, run_record: dict) -> None:
        results = {
            name: self.split_accuracy(state, split)
            for name, split in run_summary.evaluation_splits(self.config.data).items()
        }
        if run_summary.record_eval(run_record, step, results, self.config.summary_last_evals):
            self.checkpointer.save_best(
                step, state.params, state.batch_stats, {"step": step, **results}
            )
        record = {"eval_top1": results["test"]["top1"], "eval_top5": results["test"]["top5"]}
        if run_summary.VALIDATION in results:
            validation = results[run_summary.VALIDATION]
            record.update(validation_top1=validation["top1"], validation_top5=validation["top5"])
        self.logger.write(step, record)
        shown = ", ".join(f"{name} top-1 {result['top1']:.2f}%" for name, result in results.items())
        best_test = run_record["best"]["test"]
        self.logger.message(
            f"step {step}/{self.total_steps}: {shown}, test top-5 {results['test']['top5']:.2f}% "
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


@dataclasses.dataclass(frozen=True)
class Training:
    """What a run of a config trains with on `mesh` (`build_training`): the model, its schedule and
    optimizer, the run's length, the base key of every step's draws, and the jitted step."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    info: data.DatasetInfo
    model: models.StagedClassifier
    learning_rate_fn: optax.Schedule
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    total_steps: int
    base_key: jax.Array
    train_step: Callable

    def initial_state(self) -> TrainState:
        """The replicated initial state of the config's seed."""
        return create_train_state(
            self.model, self.optimizer, tuple(self.info.image_shape), self.config.seed, self.mesh
        )


def build_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Training:
    """The `Training` of a validated `config` on `mesh` (compiles nothing yet)."""
    info = data.get_dataset_info(config.data)
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    total_steps = optimization.total_train_steps(config, steps_per_epoch)
    last_mixing_step = None  # mixing to the end
    if config.mix.off_after_epoch is not None:
        last_mixing_step = int(round(config.mix.off_after_epoch * steps_per_epoch))
    model = models.build_model(
        config.model,
        info.num_classes,
        axis_name=DATA_AXIS,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    learning_rate_fn = optimization.create_learning_rate_fn(
        config.optimizer, steps_per_epoch, total_steps
    )
    optimizer = optimization.create_optimizer(config.optimizer, learning_rate_fn)
    return Training(
        config=config,
        mesh=mesh,
        info=info,
        model=model,
        learning_rate_fn=learning_rate_fn,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        base_key=parallel.replicate(jax.random.key(config.seed), mesh),
        train_step=make_train_step(
            model,
            config.mix,
            optimizer,
            learning_rate_fn,
            mesh,
            last_mixing_step=last_mixing_step,
            normalisation=info.normalisation,
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
    runs: logging, paths, hosts) raises `run_config.ConfigChangedError` listing the changes,
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
    mesh = parallel.make_data_mesh()
    experiment_config.validate_config(config, mesh.size, jax.process_count())  # the one check
    new_workdir = not pathlib.Path(workdir).exists()
    workdir = run_directory.prepare(workdir)
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
    run_record = run_summary.new_run_record()
    last_checkpoint = checkpointer.latest_step()
    if last_checkpoint is not None:
        run_config.check_resumed_config(
            config, workdir, last_checkpoint, accept_config_changes, is_writer
        )
        state, run_record = checkpointer.restore(abstract_state(state))
    earlier_wall_time = run_record.get("wall_time_sec", 0.0)  # of the processes before this one
    start_step = int(jax.device_get(state.step))
    if is_writer:
        run_config.save(config, workdir)
        metrics_log.truncate_metrics(workdir, start_step)
    logger = metrics_log.MetricLogger(
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

    eval_step = eval_loop.make_eval_step(training.model, normalisation=training.info.normalisation)
    evaluate = _Evaluator(eval_step, config, mesh, checkpointer, logger, total_steps)
    batches = data.prefetch_to_mesh(
        data.make_train_iterator(
            config.data, config.batch_size, seed=config.seed, start_step=start_step
        ),
        mesh,
    )
    timing = throughput.Throughput(config.batch_size)
    device_metrics, first_unchecked = [], start_step + 1
    log_window = []  # the host metrics of the steps since the last log, flushed in parts
    rate, first_step_sec = 0.0, None
    profile = profiling.Profile(config.profile_steps, workdir, logger)
    try:
        with stop_signals.StopSignals() as signals:
            for step in range(start_step + 1, total_steps + 1):
                profile.before(step)
                waiting_since = time.perf_counter()
                batch = next(batches)
                timing.add_step(time.perf_counter() - waiting_since)
                state, metrics = training.train_step(state, batch, base_key)
                device_metrics.append(metrics)
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
                host_metrics = _host_metrics(device_metrics)
                device_metrics = []
                if config.stop_on_divergence:
                    divergence.raise_if_diverged(
                        host_metrics, first_unchecked, workdir, last_checkpoint
                    )
                first_unchecked = step + 1
                log_window.append(host_metrics)
                if log_now:
                    window = {name: np.concatenate([h[name] for h in log_window])
                              for name in host_metrics}
                    rate = _log_interval(logger, timing, step, window, mesh.size)
                    log_window = []
                paused_at = timing.pause()
                if eval_now:
                    evaluate(state, step, run_record)
                if save_now or stopping:
                    run_record["images_per_sec"] = timing.median(fallback=rate)
                    run_record["wall_time_sec"] = (
                        earlier_wall_time + time.perf_counter() - wall_start
                    )
                    checkpointer.save(step, state, run_record)
                    last_checkpoint = step
                timing.resume(paused_at)
                if stopping:
                    raise stop_signals.RunInterrupted(signals.received, step, workdir)
    finally:
        profile.close()
        batches.close()  # stops and joins the prefetch thread
        checkpointer.close()
        logger.close()

    process_wall_time = time.perf_counter() - wall_start
    summary = run_summary.summarize(
        run_record,
        images_per_sec=timing.median(fallback=run_record.get("images_per_sec", rate)),
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
