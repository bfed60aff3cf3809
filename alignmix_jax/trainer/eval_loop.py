"""Evaluation: the jitted eval step and the one loop over an eval split that training and
`analysis.report` share."""

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from alignmix_jax import data, models
from alignmix_jax.trainer import parallel

MODEL_INPUTS = ("image", "label", "mask")


def make_eval_step(
    model: models.StagedClassifier,
    extra_metrics: Callable | None = None,
    normalisation: data.Normalisation | None = None,
) -> Callable:
    """The jitted eval step `(variables, batch, key) -> (sums, per_example)` of every evaluation
    (the trainer's and `analysis.report`'s).

    `variables` {"params", "batch_stats"} replicated; `batch` {"image": (B, H, W, C), "label":
    (B,), "mask": (B,)} sharded over `data` (jit partitions the step; eval-mode BatchNorm has no
    collective), its images made model input by `data.model_input(batch, normalisation)` as in the
    train step; `key` for what `extra_metrics` draws. `sums`: {"count", "correct1", "correct5"},
    sums over the examples with mask 1 (top-5 is top-min(5, K)), and the sums `extra_metrics` adds;
    `per_example`: `extra_metrics`'s per-example outputs ({} without it).
    `extra_metrics(variables, logits_fn, logits, intermediates, batch, key) -> (sums,
    per_example)`, with `logits_fn(images) -> logits` the eval-mode model and `batch["image"]` the
    model input, computes further metrics in the same step.
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
        if extra_metrics is None:
            return sums, {}
        extra_sums, per_example = extra_metrics(
            variables, logits_fn, logits, intermediates, batch, key
        )
        return {**sums, **extra_sums}, per_example

    return jax.jit(step)


def run_eval_pass(
    eval_step: Callable,
    variables: dict,
    host_batches: Iterable[dict],
    mesh: jax.sharding.Mesh,
    *,
    key: jax.Array | None = None,
    max_batches: int | None = None,
    per_batch: Callable[[dict, dict], None] | None = None,
) -> dict[str, np.ndarray]:
    """One pass of `eval_step` (`make_eval_step`) over host-local batches -> the summed `sums`,
    on the host.

    `variables` replicated on `mesh`; `host_batches` yields {"image": (b, H, W, C), "label": (b,),
    "mask": (b,), ...} with b = this host's share of the eval batch; batch i draws with
    `fold_in(key, i)` (None: no key). `per_batch(host_batch, per_example)` sees each batch and the
    step's per-example outputs (global arrays). Stops after `max_batches` when given; a pass that
    yields no batch is a ValueError.
    """
    totals = None
    for index, host_batch in enumerate(host_batches):
        if max_batches is not None and index >= max_batches:
            break
        batch = parallel.shard_host_batch({name: host_batch[name] for name in MODEL_INPUTS}, mesh)
        batch_key = None if key is None else jax.random.fold_in(key, index)
        sums, per_example = eval_step(variables, batch, batch_key)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if per_batch is not None:
            per_batch(host_batch, per_example)
    if totals is None:
        raise ValueError("host_batches yielded no batch: expected a non-empty eval split")
    return jax.device_get(totals)


def accuracy(totals: dict) -> dict[str, float]:
    """{"top1", "top5"} in % from a pass's totals."""
    count = max(float(totals["count"]), 1.0)
    return {
        "top1": 100.0 * float(totals["correct1"]) / count,
        "top5": 100.0 * float(totals["correct5"]) / count,
    }
