"""Training and evaluation of one experiment config: `train_and_evaluate(config, workdir)`.

The train step is one jitted call of a per-device program (`jax.shard_map` over the `data` axis):
each device mixes its own shard, BatchNorm statistics are synced over `data`, gradients and metrics
are `lax.pmean`ed, and the SGD update runs on the replicated state.
"""

import json
import pathlib
import statistics
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

from alignmix_jax import checkpointing, data, experiment_config, logging_utils, models, parallel
from alignmix_jax.mixing import cutmix, mixed_cross_entropy, mixup, saliencymix, sample_lam
from alignmix_jax.ot import align_mix

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


def _train_forward(model, params, batch_stats, inputs, start_at="input", stop_at=None):
    """Train-mode forward of the stages after `start_at` through `stop_at` (None: the head).

    Returns (output, new batch_stats); BatchNorm statistics are synced over the model's axis.
    """
    (output, _), mutated = model.apply(
        {"params": params, "batch_stats": batch_stats},
        inputs,
        train=True,
        start_at=start_at,
        stop_at=stop_at,
        mutable=["batch_stats"],
    )
    return output, mutated["batch_stats"]


def _forward_mixing_once(model, params, batch_stats, images, perm, stages, mix_fns, choice):
    """One forward pass that mixes the output of exactly one of `stages` with its permuted copy.

    `stages` are stage names in model order; `mix_fns[k](features, partner) -> mixed` mixes at
    `stages[k]`; `choice` (traced int, the same on every device) picks k. The model runs in
    segments between the candidate stages, so nothing is computed twice, and the conditionals
    hold only the cheap mixing, never a network segment (XLA runs conditionals sequentially,
    and BatchNorm collectives stay outside them). Returns (logits (B, K), new batch_stats).
    """
    hidden, position = images, "input"
    for index, stage in enumerate(stages):
        if stage != position:
            hidden, batch_stats = _train_forward(
                model, params, batch_stats, hidden, position, stage
            )
            position = stage

        def mix(features, mix_fn=mix_fns[index]):
            return mix_fn(features, features[perm]).astype(features.dtype)

        if len(stages) == 1:
            hidden = mix(hidden)
        else:
            hidden = jax.lax.cond(choice == index, mix, lambda features: features, hidden)
    return _train_forward(model, params, batch_stats, hidden, position)


def make_mixed_forward(model: models.StagedClassifier, mix_config: ml_collections.ConfigDict):
    """The per-device mixed forward of `mix_config.method`.

    Returns `forward(params, batch_stats, images, labels, shared_key, device_key)` ->
    `(logits (B, K), new batch_stats, partner labels (B,), lam scalar or (B,))`, for use inside
    `shard_map` over `data`. `shared_key` must be identical on every device: it draws lam, the
    input/aligned coin, the direction coin and the manifold stage, which select `lax.cond`
    branches and which stages' outputs BatchNorm (synced over `data`) sees; devices taking
    different branches would diverge, or deadlock in a collective. `device_key` differs per
    device (the axis index is folded in): it draws the permutation that picks each example's
    partner and the CutMix boxes.
    """
    method = mix_config.method
    stage_names = model.stage_names
    stage = experiment_config.resolve_stage(mix_config.stage, stage_names)
    manifold_stages = sorted(
        {experiment_config.resolve_stage(name, stage_names) for name in mix_config.manifold_stages},
        key=stage_names.index,
    )
    ot_options = dict(
        epsilon=mix_config.epsilon,
        num_iters=mix_config.num_iters,
        threshold=mix_config.threshold,
        scale_cost=mix_config.scale_cost,
    )

    def forward(params, batch_stats, images, labels, shared_key, device_key):
        lam_key, coin_key, direction_key, stage_key = jax.random.split(shared_key, 4)
        perm_key, box_key = jax.random.split(device_key)
        if method == "none":
            logits, batch_stats = _train_forward(model, params, batch_stats, images)
            return logits, batch_stats, labels, jnp.ones((), jnp.float32)
        lam = sample_lam(lam_key, mix_config.alpha)
        perm = jax.random.permutation(perm_key, images.shape[0])

        def linear_mix(features, partner):
            return mixup(features, partner, lam)

        def aligned_mix(features, partner):
            if mix_config.direction == "random":
                direction = jax.random.bernoulli(direction_key).astype(jnp.int32)
            else:
                direction = int(mix_config.direction)
            return align_mix(features, partner, lam, direction=direction, **ot_options)

        if method in ("cutmix", "saliencymix"):
            mix_images = cutmix if method == "cutmix" else saliencymix
            mixed, lam = mix_images(box_key, images, images[perm], lam)
            logits, batch_stats = _train_forward(model, params, batch_stats, mixed)
            return logits, batch_stats, labels[perm], lam
        if method == "input_mixup":
            stages, mix_fns, choice = ("input",), (linear_mix,), 0
        elif method == "manifold_mixup":
            stages, mix_fns = manifold_stages, (linear_mix,) * len(manifold_stages)
            choice = jax.random.randint(stage_key, (), 0, len(stages))
        elif method == "alignmix":
            stages, mix_fns, choice = (stage,), (aligned_mix,), 0
        else:  # alignmixup: a coin picks input mixup or aligned mixup at `stage`.
            stages, mix_fns = ("input", stage), (linear_mix, aligned_mix)
            choice = 1 - jax.random.bernoulli(coin_key, mix_config.input_prob).astype(jnp.int32)
        logits, batch_stats = _forward_mixing_once(
            model, params, batch_stats, images, perm, stages, mix_fns, choice
        )
        return logits, batch_stats, labels[perm], lam

    return forward


def make_train_step(
    model: models.StagedClassifier,
    mix_config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    mesh: jax.sharding.Mesh,
) -> Callable:
    """The jitted data-parallel step `(state, batch, base_key) -> (state, metrics)`.

    `state` replicated; `batch` {"image": (B, H, W, C), "label": (B,)} sharded over `data` (B the
    global batch); `base_key` a replicated key. The step key is `fold_in(base_key, state.step)`,
    so a resumed run draws exactly what an uninterrupted one would. `state` is donated. Metrics (all
    replicated scalars): loss (mean over devices of the per-device mixed loss), learning_rate, lam.
    """
    forward = make_mixed_forward(model, mix_config)

    def per_device_step(state: TrainState, batch: dict, base_key: jax.Array):
        step_key = jax.random.fold_in(base_key, state.step)
        shared_key, device_key = jax.random.split(step_key)
        device_key = jax.random.fold_in(device_key, jax.lax.axis_index(DATA_AXIS))
        images, labels = batch["image"], batch["label"]

        def loss_fn(params):
            logits, batch_stats, partner_labels, lam = forward(
                params, state.batch_stats, images, labels, shared_key, device_key
            )
            loss = mixed_cross_entropy(logits, labels, partner_labels, lam)
            return loss, (batch_stats, jnp.mean(lam))

        (loss, (batch_stats, lam)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = {
            "loss": jax.lax.pmean(loss, DATA_AXIS),
            "lam": jax.lax.pmean(lam, DATA_AXIS),
            "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
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


def make_eval_step(model: models.StagedClassifier, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted `(params, batch_stats, batch) -> {"correct1", "correct5", "count"}` (global sums).

    `batch` {"image": (B, H, W, C), "label": (B,), "mask": (B,)} sharded over `data`; padding
    examples (mask 0) are not counted. Top-5 is top-min(5, K).
    """

    def per_device_eval(params, batch_stats, batch):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["image"], train=False
        )
        labels = batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        top_k = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        hit5 = jnp.any(top_k == labels[:, None], axis=-1)
        hit1 = top_k[:, 0] == labels
        counts = {
            "correct1": jnp.sum(hit1 * mask),
            "correct5": jnp.sum(hit5 * mask),
            "count": jnp.sum(mask),
        }
        return jax.lax.psum(counts, DATA_AXIS)

    sharded_eval = jax.shard_map(
        per_device_eval,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    return jax.jit(sharded_eval)


def evaluate(eval_step: Callable, state: TrainState, config, mesh) -> dict[str, float]:
    """Test top-1 and top-5 accuracy (in %) over one pass of the eval split."""
    totals = None
    batches = data.make_eval_iterator(config.data, config.eval_batch_size)
    for batch in data.prefetch_to_mesh(batches, mesh):
        counts = eval_step(state.params, state.batch_stats, batch)
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {
        "top1": 100.0 * float(totals["correct1"]) / count,
        "top5": 100.0 * float(totals["correct5"]) / count,
    }


def _mean_metrics(step_metrics: list[dict]) -> dict[str, float]:
    """Host means of a list of per-step metric dicts of device scalars (blocks on them)."""
    stacked = jax.device_get(jax.tree.map(lambda *values: jnp.stack(values), *step_metrics))
    return {name: float(np.mean(values)) for name, values in stacked.items()}


def _abstract(tree):
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), tree
    )


class _Throughput:
    """Images/s over log intervals; the interval holding the first (compiling) step is dropped."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.rates: list[float] = []
        self._start = time.perf_counter()
        self._steps = 0
        self._first_interval = True

    def pause(self) -> float:
        """Time spent outside training (eval, checkpoints) is excluded via `resume(paused_at)`."""
        return time.perf_counter()

    def resume(self, paused_at: float) -> None:
        self._start += time.perf_counter() - paused_at

    def add_steps(self, steps: int) -> None:
        self._steps += steps

    def close_interval(self) -> float:
        """Rate of the interval that just ended (call after blocking on its results)."""
        now = time.perf_counter()
        rate = self._steps * self.global_batch_size / max(now - self._start, 1e-9)
        if not self._first_interval:
            self.rates.append(rate)
        self._first_interval = False
        self._start, self._steps = now, 0
        return rate

    def median(self, fallback: float) -> float:
        return statistics.median(self.rates) if self.rates else fallback


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Trains and evaluates `config` in `workdir`; resumes from the latest checkpoint there.

    Writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ (last
    `config.keep_checkpoints`), best/ (the weights with the best eval top-1) and summary.json
    (host 0 writes the files; every host takes part in checkpoints).

    Returns:
      {"final_top1", "final_top5", "best_top1", "best_top5", "best_step", "images_per_sec",
       "steps", "wall_time_sec"}; accuracies in %.
    """
    wall_start = time.perf_counter()
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_data_mesh()
    experiment_config.validate_config(config, mesh.size, jax.process_count())
    is_writer = jax.process_index() == 0

    info = data.get_dataset_info(config.data)
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    total_steps = total_train_steps(config, steps_per_epoch)
    eval_every = config.eval_every_steps or steps_per_epoch
    model = models.build_model(
        config.model,
        info.num_classes,
        axis_name=DATA_AXIS,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    learning_rate_fn = create_learning_rate_fn(config.optimizer, steps_per_epoch, total_steps)
    optimizer = create_optimizer(config.optimizer, learning_rate_fn)
    state = create_train_state(model, optimizer, tuple(info.image_shape), config.seed, mesh)
    base_key = parallel.replicate(jax.random.key(config.seed), mesh)

    checkpointer = checkpointing.RunCheckpointer(workdir, keep=config.keep_checkpoints)
    meta = {"best_top1": -1.0, "best_top5": -1.0, "best_step": 0, "last_eval": None}
    if checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(_abstract(state))
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
    if start_step:
        logger.message(f"Resumed from the checkpoint at step {start_step} in {workdir}.")

    train_step = make_train_step(model, config.mix, optimizer, learning_rate_fn, mesh)
    eval_step = make_eval_step(model, mesh)
    batches = data.prefetch_to_mesh(
        data.make_train_iterator(
            config.data, config.batch_size, seed=config.seed, start_step=start_step
        ),
        mesh,
    )
    throughput = _Throughput(config.batch_size)
    step_metrics = []
    rate = 0.0
    for step in range(start_step + 1, total_steps + 1):
        state, metrics = train_step(state, next(batches), base_key)
        step_metrics.append(metrics)
        throughput.add_steps(1)
        if step % config.log_every_steps == 0 or step == total_steps:
            means = _mean_metrics(step_metrics)
            rate = throughput.close_interval()
            step_metrics = []
            loss, learning_rate = means["loss"], means["learning_rate"]
            logger.write(
                step, {"train_loss": loss, "learning_rate": learning_rate, "images_per_sec": rate}
            )
            postfix = {"loss": f"{loss:.4f}", "lr": f"{learning_rate:.4g}", "img/s": f"{rate:.0f}"}
            logger.advance(step, postfix)
        paused_at = throughput.pause()
        if step % eval_every == 0 or step == total_steps:
            result = evaluate(eval_step, state, config, mesh)
            meta["last_eval"] = {"step": step, **result}
            if result["top1"] > meta["best_top1"]:
                meta.update(best_top1=result["top1"], best_top5=result["top5"], best_step=step)
                checkpointer.save_best(step, state.params, state.batch_stats, meta["last_eval"])
            logger.write(step, {"eval_top1": result["top1"], "eval_top5": result["top5"]})
            logger.message(
                f"step {step}/{total_steps}: test top-1 {result['top1']:.2f}% "
                f"top-5 {result['top5']:.2f}% "
                f"(best {meta['best_top1']:.2f}% at step {meta['best_step']})"
            )
        if step % config.checkpoint_every_steps == 0 or step == total_steps:
            meta["images_per_sec"] = throughput.median(fallback=rate)
            checkpointer.save(step, state, meta)
        throughput.resume(paused_at)
    batches.close()  # stops the prefetch thread
    checkpointer.close()
    logger.close()

    last_eval = meta["last_eval"] or {"top1": float("nan"), "top5": float("nan")}
    summary = {
        "final_top1": last_eval["top1"],
        "final_top5": last_eval["top5"],
        "best_top1": meta["best_top1"],
        "best_top5": meta["best_top5"],
        "best_step": meta["best_step"],
        "images_per_sec": throughput.median(fallback=meta.get("images_per_sec", rate)),
        "steps": int(jax.device_get(state.step)),
        "wall_time_sec": time.perf_counter() - wall_start,
    }
    if is_writer:
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        logger.message("Summary: " + json.dumps(summary))
    return summary
