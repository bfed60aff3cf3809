"""AlignMixup (Venkataramanan et al., CVPR 2022) and the mixup family, as one training forward pass.

For a batch (x, y) on each device, with one key shared by every device:

  1. lam ~ Beta(alpha, alpha): one per batch (the paper), or one per example (`lam_mode="example"`).
  2. The partner of each example: the batch under a random permutation, `perm`. `partner="global"`
     permutes the global batch (the partner's image or features are gathered from its device), so a
     run on N devices mixes exactly the pairs a run on one device would; `partner="device"` permutes
     each device's shard, as `DataParallel` in the reference ImageNet code does.
  3. The mixing, by the method, a function registered by name in `METHODS` that says where the
     batch may be mixed (its `Point`s: a stage and a mixing op) and which point mixes this step:
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
       (random / around the partner's most salient point); resizemix: x[perm] shrunk into a random
       box of x; lam becomes the kept area.
     - none: logits = f(x), lam = 1.
  4. The loss (`mixing.mixed_cross_entropy`): lam CE(logits, y) + (1 - lam) CE(logits, y[perm]),
     optionally against label-smoothed targets.

The model runs in segments between the method's points, so nothing is computed twice, and the
conditionals hold only the cheap mixing, never a network segment. An aligned point also reports
what the alignment did (`DIAGNOSTICS`). Adding a method: `docs/adding_a_method.md`.
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp

from alignmix_jax.core import mixing, ot
from alignmix_jax.core.mixing import mixup, sample_lam

DIAGNOSTICS = ("aligned", "plan_marginal_l1", "plan_row_max", "plan_column_coverage",
               "feature_norm", "pooled_gap_to_linear")
"""Scalars of `MixedForward.diagnostics`. aligned: 1 on a step that ran aligned mixing, else 0 (and
so are the others); plan_marginal_l1: the L1 error of the plan's non-exact (column) marginal;
plan_row_max: the mean over rows of max_j R_ij (1: a permutation, 1/s: uniform);
plan_column_coverage: the fraction of the partner's positions that are some row's argmax;
feature_norm: the mean L2 norm of the aligned map's positions (before mixing);
pooled_gap_to_linear: `ot.pooled_relative_gap` of the aligned mix against the linear mix of the
same pair and lam, how much of the alignment survives a global average pool."""

KEY_NAMES = ("lam", "perm", "coin", "direction", "stage", "example")
"""The named draws of a step's key, in the order `step_keys` splits it (fixed: a run's draws)."""


def step_keys(key: jax.Array) -> dict[str, jax.Array]:
    """A step's key split into one key per named draw (`KEY_NAMES`): {"lam": key, ...}."""
    return dict(zip(KEY_NAMES, jax.random.split(key, len(KEY_NAMES)), strict=True))


def _ot_defaults() -> dict[str, Any]:
    parameters = inspect.signature(ot.align_mix).parameters
    return {field.name: parameters[field.name].default
            for field in dataclasses.fields(SinkhornOptions)}


@dataclasses.dataclass(frozen=True)
class SinkhornOptions:
    """The alignment's Sinkhorn options, the keywords of `ot.align_mix`; the defaults are
    `ot.align_mix`'s own (epsilon 0.1, 100 updates, no early stopping, cost scale 1), the one
    place the config, the pictures and the benchmarks take them from."""

    epsilon: float
    num_iters: int
    threshold: float | None
    scale_cost: float | str

    @classmethod
    def default(cls) -> "SinkhornOptions":
        """`ot.align_mix`'s defaults."""
        return cls(**_ot_defaults())

    @classmethod
    def from_config(cls, mix) -> "SinkhornOptions":
        """The options of a config's `mix` section (a mapping), the defaults where absent."""
        mix = mix or {}
        return cls(**{name: mix.get(name, value) for name, value in _ot_defaults().items()})

    def as_kwargs(self) -> dict[str, Any]:
        """{"epsilon": ..., "num_iters": ..., "threshold": ..., "scale_cost": ...}."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """What the forward reads of `config.mix`, built once (`from_config`) for one model: the
    method's name, alpha, `stage` and `manifold_stages` as the model's stage names (the latter
    without repeats, in model order), direction ("random", "0" or "1"), input_prob, partner,
    coins, lam_mode and the Sinkhorn options."""

    method: str
    alpha: float
    stage: str
    manifold_stages: tuple[str, ...]
    direction: str
    input_prob: float
    partner: str
    coins: str
    lam_mode: str
    sinkhorn: SinkhornOptions

    @classmethod
    def from_config(cls, mix, model) -> "MixSpec":
        """The spec of a (validated) `config.mix` for `model` (its `stage_names`)."""
        manifold = {model.resolve_stage(stage) for stage in mix.manifold_stages}
        return cls(
            method=mix.method, alpha=mix.alpha, stage=model.resolve_stage(mix.stage),
            manifold_stages=tuple(sorted(manifold, key=model.stage_names.index)),
            direction=str(mix.direction), input_prob=mix.input_prob, partner=mix.partner,
            coins=mix.coins, lam_mode=mix.lam_mode, sinkhorn=SinkhornOptions.from_config(mix),
        )


def _no_diagnostics() -> dict:
    return {name: jnp.zeros((), jnp.float32) for name in DIAGNOSTICS}


class Draws:
    """One device's draws of a step, each from its own named key (`step_keys`).

    partner `(b,)`: each example's partner, a row of the global batch under a permutation
    (partner "global") or of the shard ("device"); lam `(b,)` float32: Beta(alpha, alpha), one per
    batch or (lam_mode "example") one per example of the global batch, sliced; direction: the int32
    direction of AlignMix (a fair coin, or the spec's fixed one); example_keys `(b,)`: one key per
    example of the global batch, sliced (box places, sizes, ties); `coin(p)` and `index(n)`: the
    method's coin and uniform choice.
    """

    def __init__(self, spec: MixSpec, key, local: int, device, devices: int):
        self._spec, self._keys, self._device, self._devices = spec, step_keys(key), device, devices
        keys = self._keys

        def local_rows(per_example):  # this device's rows of a draw for the global batch
            return jax.lax.dynamic_slice_in_dim(per_example, device * local, local)

        if spec.partner == "global":
            self.partner = local_rows(jax.random.permutation(keys["perm"], local * devices))
        else:
            self.partner = jax.random.permutation(jax.random.fold_in(keys["perm"], device), local)
        if spec.lam_mode == "example":
            self.lam = local_rows(sample_lam(keys["lam"], spec.alpha, (local * devices,)))
        else:
            self.lam = jnp.broadcast_to(sample_lam(keys["lam"], spec.alpha), (local,))
        self.example_keys = local_rows(jax.random.split(keys["example"], local * devices))
        if spec.direction == "random":
            self.direction = self._shared(
                lambda k, shape: jax.random.bernoulli(k, 0.5, shape), keys["direction"])
        else:
            self.direction = jnp.asarray(int(spec.direction), jnp.int32)

    def _shared(self, draw, key) -> jax.Array:
        """One int32 draw for all devices, or (coins "device") this device's of one each."""
        if self._spec.coins == "device":
            return draw(key, (self._devices,))[self._device].astype(jnp.int32)
        return draw(key, ()).astype(jnp.int32)

    def coin(self, probability: float) -> jax.Array:
        """int32 1 with `probability`, else 0 (the "coin" key)."""
        return self._shared(
            lambda k, shape: jax.random.bernoulli(k, probability, shape), self._keys["coin"])

    def index(self, count: int) -> jax.Array:
        """int32 uniform in [0, count) (the "stage" key)."""
        return self._shared(
            lambda k, shape: jax.random.randint(k, shape, 0, count), self._keys["stage"])


MixOp = Callable[[jax.Array, jax.Array, MixSpec, Draws], tuple[jax.Array, jax.Array, dict]]
"""`op(features (b, ...), partner_features (b, ...), spec, draws) -> (mixed, lam (b,),
diagnostics)`: how a point mixes; lam the weight of each example's own label."""


class Point(NamedTuple):
    """A candidate mixing point: `stage` ("input" or a model stage) and its `MixOp`."""

    stage: str
    mix: MixOp


class Mixing(NamedTuple):
    """A method's plan for a step: its candidate `points` and `choice`, the index of the one that
    mixes (an int32, possibly traced; 0 with one point)."""

    points: tuple[Point, ...]
    choice: Any = 0


Method = Callable[[MixSpec, Draws], Mixing]
METHOD_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Registers `method(spec, draws) -> Mixing` under its function name."""
    METHOD_REGISTRY[method.__name__] = method
    return method


# The mixing ops.

def linear(features, partner, spec, draws):
    """Mixup: lam A + (1 - lam) A'."""
    del spec
    return mixup(features, partner, draws.lam), draws.lam, _no_diagnostics()


def aligned(features, partner, spec, draws):
    """AlignMix: `ot.align_mix` with the draws' direction and the spec's Sinkhorn options."""
    mixed, plan = ot.align_mix_with_plan(
        features, partner, draws.lam, direction=draws.direction, **spec.sinkhorn.as_kwargs()
    )
    statistics = ot.plan_statistics(plan)
    return mixed, draws.lam, {
        "aligned": jnp.ones((), jnp.float32),
        "plan_marginal_l1": statistics["column_marginal_l1"],
        "plan_row_max": statistics["row_max"],
        "plan_column_coverage": statistics["column_coverage"],
        "feature_norm": ot.mean_position_norm(features),
        "pooled_gap_to_linear": ot.pooled_relative_gap(mixed, mixup(features, partner, draws.lam)),
    }


def pasted(paste) -> MixOp:
    """The op of a pasting function `paste(example_keys, x, x_partner, lam) -> (mixed, lam)`."""

    def op(images, partner, spec, draws):
        del spec
        mixed, lam = paste(draws.example_keys, images, partner, draws.lam)
        return mixed, lam, _no_diagnostics()

    return op


# The methods, one function each: where the batch may be mixed, and which point mixes.

@register
def none(spec, draws):
    """No mixing: logits = f(x), lam = 1."""
    return Mixing(())


@register
def input_mixup(spec, draws):
    """Input mixup: x~ = lam x + (1 - lam) x[perm]."""
    return Mixing((Point("input", linear),))


@register
def manifold_mixup(spec, draws):
    """Manifold mixup: lam A_k + (1 - lam) A_k[perm] at a stage k drawn uniformly from
    `manifold_stages`."""
    points = tuple(Point(stage, linear) for stage in spec.manifold_stages)
    return Mixing(points, draws.index(len(points)))


@register
def cutmix(spec, draws):
    """CutMix: a random box of x[perm] pasted into x; lam the kept area."""
    return Mixing((Point("input", pasted(mixing.cutmix)),))


@register
def saliencymix(spec, draws):
    """SaliencyMix: the box around x[perm]'s most salient point pasted into x; lam the kept
    area."""
    return Mixing((Point("input", pasted(mixing.saliencymix)),))


@register
def alignmix(spec, draws):
    """AlignMix: aligned mixup of the map at `stage` (default the last)."""
    return Mixing((Point(spec.stage, aligned),))


@register
def alignmixup(spec, draws):
    """AlignMixup, the paper's policy: a coin picks input mixup (probability `input_prob`) or
    aligned mixup at `stage`."""
    return Mixing((Point("input", linear), Point(spec.stage, aligned)),
                  draws.coin(1.0 - spec.input_prob))




RESIZEMIX_SCALE = (0.1, 0.8)
"""ResizeMix's range of tau, the pasted side over the image's (the paper's)."""


def resize_paste(example_keys, images, partners, scale=RESIZEMIX_SCALE):
    """ResizeMix's paste: each partner, shrunk (bilinear, antialiased) to `floor(tau * side)`
    of the image's sides with tau ~ U(scale), into a box placed uniformly inside the image.

    `example_keys` `(B,)`; `images`, `partners` `(B, H, W, C)` float -> (mixed `(B, H, W, C)` in
    `images`' dtype, lam `(B,)` float32 the fraction of each image's pixels kept).
    """
    _, height, width, channels = images.shape

    def one(key, image, partner):
        tau_key, top_key, left_key = jax.random.split(key, 3)
        tau = jax.random.uniform(tau_key, (), jnp.float32, *scale)
        rows = jnp.clip(jnp.floor(tau * height), 1, height).astype(jnp.int32)
        cols = jnp.clip(jnp.floor(tau * width), 1, width).astype(jnp.int32)
        top = jax.random.randint(top_key, (), 0, height - rows + 1)
        left = jax.random.randint(left_key, (), 0, width - cols + 1)
        shrunk = jax.image.scale_and_translate(
            partner.astype(jnp.float32), (height, width, channels), (0, 1),
            jnp.stack([rows / height, cols / width]).astype(jnp.float32),
            jnp.stack([top, left]).astype(jnp.float32), method="linear",
        )
        in_rows = (jnp.arange(height) >= top) & (jnp.arange(height) < top + rows)
        in_cols = (jnp.arange(width) >= left) & (jnp.arange(width) < left + cols)
        inside = in_rows[:, None, None] & in_cols[None, :, None]
        kept = 1.0 - (rows * cols).astype(jnp.float32) / (height * width)
        return jnp.where(inside, shrunk.astype(image.dtype), image), kept

    return jax.vmap(one)(example_keys, images, partners)


def _resized(images, partner, spec, draws):
    mixed, lam = resize_paste(draws.example_keys, images, partner)
    return mixed, lam, _no_diagnostics()


@register
def resizemix(spec, draws):
    """ResizeMix (Qin et al. 2020): x[perm] shrunk to a side tau ~ U(0.1, 0.8) of x's and pasted
    into a random box of x; lam the kept area."""
    return Mixing((Point("input", _resized),))


METHODS = tuple(METHOD_REGISTRY)
"""The registered methods' names, in registration order."""


def methods_markdown() -> str:
    """The registered methods as a Markdown list: `name`: the first paragraph of its docstring."""
    lines = []
    for name, method in METHOD_REGISTRY.items():
        summary = " ".join(inspect.getdoc(method).split("\n\n")[0].split())
        lines.append(f"- `{name}`: {summary}")
    return "\n".join(lines) + "\n"


@flax.struct.dataclass
class MixedForward:
    """One device's mixed forward pass and its draws. logits `(b, K)` float32; batch_stats;
    partner_labels `(b,)`; lam `(b,)`, the weight of each example's own label; partner `(b,)`, each
    example's partner as a row of the global batch ("global") or of the shard ("device"); point,
    the index among the method's points of the one that mixed (0 without points, -1 when mixing
    was off); direction, the draw of AlignMix's direction coin (acting only on an aligned point);
    diagnostics (`DIAGNOSTICS`)."""

    logits: jax.Array
    batch_stats: Any
    partner_labels: jax.Array
    lam: jax.Array
    partner: jax.Array
    point: jax.Array
    direction: jax.Array
    diagnostics: dict


def _train_forward(model, params, batch_stats, inputs, start_at="input", stop_at=None):
    """Train-mode forward of the stages after `start_at` through `stop_at` (None: the head) ->
    (output, new batch_stats); BatchNorm statistics are synced over the model's axis."""
    (output, _), mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, inputs, train=True, start_at=start_at,
        stop_at=stop_at, mutable=["batch_stats"],
    )
    return output, mutated["batch_stats"]


def _keep(features, lam):
    return features, lam, _no_diagnostics()


def make_mixed_forward(model, mix, axis_name: str | None = None):
    """The per-device mixed forward of `mix` (a config's `mix` section, or a `MixSpec`):
    `forward(params, batch_stats, images (b, H, W, C), labels (b,), key, mixing=None)
    -> MixedForward`. `mixing`: None mixes; a (traced) bool scalar, the same on every device,
    turns the mixing off where False: the step is then method none's, in the same program.

    Inside `jax.shard_map`, `axis_name` is the data axis and `key` must be the same on every
    device: it draws lam, the coins, the stage and (partner "global") the permutation, which pick
    `lax.cond` branches on every device alike. Per-example draws (lam, CutMix boxes) are made for
    the whole global batch and sliced, so they do not depend on the number of devices. With
    `mix.coins = "device"` (which needs `partner = "device"`: no collective inside a branch) the
    coins and the stage are drawn once per device, each device taking its own, as each
    `DataParallel` replica of the reference draws its own; on one device that is the shared draw.
    """
    spec = mix if isinstance(mix, MixSpec) else MixSpec.from_config(mix, model)
    method = METHOD_REGISTRY[spec.method]

    def forward(params, batch_stats, images, labels, key, mixing=None) -> MixedForward:
        local = images.shape[0]
        devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
        draws = Draws(spec, key, local, device, devices)
        partner = draws.partner

        def partner_of(features):
            if spec.partner == "global" and axis_name is not None:
                features = jax.lax.all_gather(features, axis_name, tiled=True)
            return features[partner]

        plan = method(spec, draws)
        own = jnp.arange(local)
        if not plan.points:
            logits, batch_stats = _train_forward(model, params, batch_stats, images)
            return MixedForward(logits, batch_stats, labels, jnp.ones((local,), jnp.float32), own,
                                jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                _no_diagnostics())
        choice = jnp.asarray(plan.choice, jnp.int32)
        if mixing is not None:
            choice = jnp.where(mixing, choice, -1)
        conditional = len(plan.points) > 1 or mixing is not None
        order = sorted(range(len(plan.points)), key=lambda index: model.stage_names.index(
            model.resolve_stage(plan.points[index].stage)))
        hidden, position, lam, diagnostics = images, "input", draws.lam, _no_diagnostics()
        for index in order:
            stage, op = model.resolve_stage(plan.points[index].stage), plan.points[index].mix
            if stage != position:
                hidden, batch_stats = _train_forward(
                    model, params, batch_stats, hidden, position, stage)
                position = stage
            mix_here = _mixing_branch(op, spec, draws, partner_of)
            if conditional:
                hidden, lam, report = jax.lax.cond(choice == index, mix_here, _keep, hidden, lam)
            else:
                hidden, lam, report = mix_here(hidden, lam)
            diagnostics = jax.tree.map(jnp.add, diagnostics, report)
        logits, batch_stats = _train_forward(model, params, batch_stats, hidden, position)
        partner_labels = partner_of(labels)
        if mixing is not None:
            lam = jnp.where(mixing, lam, 1.0)
            partner = jnp.where(mixing, partner, own)
            partner_labels = jnp.where(mixing, partner_labels, labels)
        return MixedForward(logits, batch_stats, partner_labels, lam, partner, choice,
                            draws.direction, diagnostics)

    return forward


def _mixing_branch(op: MixOp, spec: MixSpec, draws: Draws, partner_of):
    """`(features, lam) -> (mixed features in their dtype, lam, diagnostics)` of one point."""

    def mix_here(features, lam):
        del lam  # the op's lam replaces the drawn one
        mixed, lam, report = op(features, partner_of(features), spec, draws)
        return mixed.astype(features.dtype), lam, report

    return mix_here
