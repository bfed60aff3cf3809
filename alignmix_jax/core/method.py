"""AlignMixup (Venkataramanan et al., CVPR 2022) and the mixup family, as one training forward pass.

For a batch (x, y) on each device, with one key shared by every device:

  1. lam ~ Beta(alpha, alpha): one per batch (the paper), or one per example (`lam_mode="example"`).
  2. The partner of each example: the batch under a random permutation, `perm`. `partner="global"`
     permutes the global batch (the partner's image or features are gathered from its device), so a
     run on N devices mixes exactly the pairs a run on one device would; `partner="device"` permutes
     each device's shard, as `DataParallel` in the reference ImageNet code does.
  3. The mixing, by `method`:
     - alignmixup: a coin, input with probability `input_prob`, picks
         input mixup:   x~ = lam x + (1 - lam) x[perm],   logits = f(x~)  (BatchNorm sees x~);
         aligned mixup: A = encoder(x) (BatchNorm sees the clean x), A' = A[perm], P the entropic
                        OT plan between A's and A''s positions (`ot.align_mix`), R = r P, and a
                        second, fair, coin picks the direction:
                          0: A~ = lam A + (1 - lam) R A'      (A' moved onto A's positions)
                          1: A~ = lam R^T A + (1 - lam) A'    (A moved onto A''s positions)
                        logits = head(A~).
     - alignmix: always aligned mixup, at `stage` (default the last map).
     - input_mixup: always input mixup. manifold_mixup: lam A_k + (1 - lam) A_k[perm] at a stage k
       drawn uniformly from `manifold_stages`. cutmix / saliencymix: a box of x[perm] pasted into x
       (random / around the partner's most salient point); lam becomes the kept area.
     - none: logits = f(x), lam = 1.
  4. The loss (`mixing.mixed_cross_entropy`): lam CE(logits, y) + (1 - lam) CE(logits, y[perm]),
     optionally against label-smoothed targets.

The model runs in segments between the candidate mixing points, so nothing is computed twice, and
the conditionals hold only the cheap mixing, never a network segment. An aligned branch also
reports what the alignment did (`DIAGNOSTICS`).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from alignmix_jax.core.mixing import cutmix, mixup, saliencymix, sample_lam
from alignmix_jax.core.ot import (
    align_mix_with_plan,
    mean_position_norm,
    plan_statistics,
    pooled_relative_gap,
)

DIAGNOSTICS = ("aligned", "plan_marginal_l1", "plan_row_max", "plan_column_coverage",
               "feature_norm", "pooled_gap_to_linear")
"""Scalars of `MixedForward.diagnostics`. aligned: 1 on a step that ran aligned mixing, else 0 (and
so are the others); plan_marginal_l1: the L1 error of the plan's non-exact (column) marginal;
plan_row_max: the mean over rows of max_j R_ij (1: a permutation, 1/s: uniform);
plan_column_coverage: the fraction of the partner's positions that are some row's argmax;
feature_norm: the mean L2 norm of the aligned map's positions (before mixing);
pooled_gap_to_linear: `ot.pooled_relative_gap` of the aligned mix against the linear mix of the
same pair and lam, how much of the alignment survives a global average pool."""


def _no_diagnostics() -> dict:
    return {name: jnp.zeros((), jnp.float32) for name in DIAGNOSTICS}


@flax.struct.dataclass
class MixedForward:
    """One device's mixed forward pass and its draws. logits `(b, K)` float32; batch_stats;
    partner_labels `(b,)`; lam `(b,)`, the weight of each example's own label; partner `(b,)`, each
    example's partner as a row of the global batch ("global") or of the shard ("device"); branch,
    the index in `mixing_points` of the point mixed (0 without one); direction, the draw of
    AlignMix's direction coin (acting only on an aligned branch); diagnostics (`DIAGNOSTICS`)."""

    logits: jax.Array
    batch_stats: Any
    partner_labels: jax.Array
    lam: jax.Array
    partner: jax.Array
    branch: jax.Array
    direction: jax.Array
    diagnostics: dict


def mixing_points(model, mix) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`(stages, kinds)`: the candidate mixing points of `mix.method` in model order, each
    "linear" (mixup) or "aligned" (AlignMix); empty for none, cutmix and saliencymix."""
    stage = model.resolve_stage(mix.stage)
    if mix.method == "manifold_mixup":
        names = {model.resolve_stage(name) for name in mix.manifold_stages}
        stages = tuple(sorted(names, key=model.stage_names.index))
        return stages, ("linear",) * len(stages)
    return {
        "input_mixup": (("input",), ("linear",)),
        "alignmix": ((stage,), ("aligned",)),
        "alignmixup": (("input", stage), ("linear", "aligned")),
    }.get(mix.method, ((), ()))


def _train_forward(model, params, batch_stats, inputs, start_at="input", stop_at=None):
    """Train-mode forward of the stages after `start_at` through `stop_at` (None: the head) ->
    (output, new batch_stats); BatchNorm statistics are synced over the model's axis."""
    (output, _), mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, inputs, train=True, start_at=start_at,
        stop_at=stop_at, mutable=["batch_stats"],
    )
    return output, mutated["batch_stats"]


def make_mixed_forward(model, mix, axis_name: str | None = None):
    """The per-device mixed forward of `mix` (a config's `mix` section):
    `forward(params, batch_stats, images (b, H, W, C), labels (b,), key) -> MixedForward`.

    Inside `jax.shard_map`, `axis_name` is the data axis and `key` must be the same on every
    device: it draws lam, the coins, the stage and (partner "global") the permutation, which pick
    `lax.cond` branches on every device alike. Per-example draws (lam, CutMix boxes) are made for
    the whole global batch and sliced, so they do not depend on the number of devices. With
    `mix.coins = "device"` (which needs `partner = "device"`: no collective inside a branch) the
    coins and the stage are drawn once per device, each device taking its own, as each
    `DataParallel` replica of the reference draws its own; on one device that is the shared draw.
    """
    stages, kinds = mixing_points(model, mix)
    ot_options = dict(epsilon=mix.epsilon, num_iters=mix.num_iters, threshold=mix.threshold,
                      scale_cost=mix.scale_cost)

    def forward(params, batch_stats, images, labels, key) -> MixedForward:
        local = images.shape[0]
        devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
        lam_key, perm_key, coin_key, direction_key, stage_key, box_key = jax.random.split(key, 6)

        def local_rows(per_example):  # this device's rows of a draw for the global batch
            return jax.lax.dynamic_slice_in_dim(per_example, device * local, local)

        def partner_of(features):
            if mix.partner == "global" and axis_name is not None:
                features = jax.lax.all_gather(features, axis_name, tiled=True)
            return features[partner]

        if mix.partner == "global":
            partner = local_rows(jax.random.permutation(perm_key, local * devices))
        else:
            partner = jax.random.permutation(jax.random.fold_in(perm_key, device), local)
        zero = jnp.zeros((), jnp.int32)
        if mix.method == "none":
            logits, batch_stats = _train_forward(model, params, batch_stats, images)
            return MixedForward(logits, batch_stats, labels, jnp.ones((local,), jnp.float32),
                                jnp.arange(local), zero, zero, _no_diagnostics())
        if mix.lam_mode == "example":
            lam = local_rows(sample_lam(lam_key, mix.alpha, (local * devices,)))
        else:
            lam = jnp.broadcast_to(sample_lam(lam_key, mix.alpha), (local,))
        partner_labels = partner_of(labels)
        if mix.method in ("cutmix", "saliencymix"):
            paste = cutmix if mix.method == "cutmix" else saliencymix
            box_keys = local_rows(jax.random.split(box_key, local * devices))
            mixed, lam = paste(box_keys, images, partner_of(images), lam)
            logits, batch_stats = _train_forward(model, params, batch_stats, mixed)
            return MixedForward(logits, batch_stats, partner_labels, lam, partner, zero, zero,
                                _no_diagnostics())

        def coin(draw, coin_key):  # one draw for all devices, or this device's of one each
            if mix.coins == "device":
                return draw(coin_key, (devices,))[device]
            return draw(coin_key, ())

        if mix.direction == "random":
            direction = coin(
                lambda k, shape: jax.random.bernoulli(k, 0.5, shape), direction_key
            ).astype(jnp.int32)
        else:
            direction = jnp.asarray(int(mix.direction), jnp.int32)
        if mix.method == "alignmixup":
            branch = coin(
                lambda k, shape: jax.random.bernoulli(k, 1.0 - mix.input_prob, shape), coin_key
            ).astype(jnp.int32)
        else:
            branch = coin(lambda k, shape: jax.random.randint(k, shape, 0, len(stages)), stage_key)

        def linear(features):
            return mixup(features, partner_of(features), lam), _no_diagnostics()

        def aligned(features):
            partner_features = partner_of(features)
            mixed, plan = align_mix_with_plan(
                features, partner_features, lam, direction=direction, **ot_options
            )
            statistics = plan_statistics(plan)
            return mixed, {
                "aligned": jnp.ones((), jnp.float32),
                "plan_marginal_l1": statistics["column_marginal_l1"],
                "plan_row_max": statistics["row_max"],
                "plan_column_coverage": statistics["column_coverage"],
                "feature_norm": mean_position_norm(features),
                "pooled_gap_to_linear": pooled_relative_gap(
                    mixed, mixup(features, partner_features, lam)
                ),
            }

        hidden, position, diagnostics = images, "input", _no_diagnostics()
        for index, (stage, kind) in enumerate(zip(stages, kinds, strict=True)):
            if stage != position:
                hidden, batch_stats = _train_forward(
                    model, params, batch_stats, hidden, position, stage
                )
                position = stage

            def mix_here(features, mix_fn={"linear": linear, "aligned": aligned}[kind]):
                mixed, report = mix_fn(features)
                return mixed.astype(features.dtype), report

            def keep(features):
                return features, _no_diagnostics()

            if len(stages) == 1:
                hidden, report = mix_here(hidden)
            else:
                hidden, report = jax.lax.cond(branch == index, mix_here, keep, hidden)
            diagnostics = jax.tree.map(jnp.add, diagnostics, report)
        logits, batch_stats = _train_forward(model, params, batch_stats, hidden, position)
        return MixedForward(logits, batch_stats, partner_labels, lam, partner, branch, direction,
                            diagnostics)

    return forward
