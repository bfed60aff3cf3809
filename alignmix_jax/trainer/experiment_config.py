"""The experiment config: its defaults (`default_config`), `:smoke` shrinking and validation.

`validate_config` runs before anything heavy. Every error is a `ValueError` that names the field as
`config.<path>`, the value it holds and the values it may take, so that a typo on the command line
fails in a second instead of after compilation.
"""

import ast
import copy
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from alignmix_jax.core import ot
from alignmix_jax.core.method import METHODS, SinkhornOptions
from alignmix_jax.models import BATCH_NORM_ALL_DEVICES
from alignmix_jax.models.common import LAST_STAGE

DIRECTIONS = ("random", "0", "1")
PARTNER_MODES = ("global", "device")
COIN_MODES = ("shared", "device")
LAM_MODES = ("batch", "example")
MODEL_NAMES = ("preact_resnet18", "wide_resnet", "resnet50")
DATASET_NAMES = (
    "cifar10",
    "cifar100",
    "fashion_mnist",
    "imagenet2012",
    "caltech_birds2011",
    "tiny_imagenet",
    "image_folder",
    "digits",
)
SCHEDULES = ("piecewise", "cosine", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")


def load_config_module(spec: str, required: Sequence[str] = ("get_config",)):
    """`path.py[:argument]` -> (the config file loaded as a module, argument or None). The
    file may import the config files beside it (`from lowdata_cifar10 import ...`).

    Raises ValueError when the file does not exist or lacks a function named in `required`.
    """
    path, _, argument = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config={spec!r}: no config file at {path!r}")
    module_spec = importlib.util.spec_from_file_location("_experiment_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    for name in required:
        if not callable(getattr(module, name, None)):
            raise ValueError(f"config={spec!r}: the file defines no {name}()")
    return module, argument or None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path.py[:argument]` -> the file's `get_config(argument)` (or `get_config()`)."""
    module, argument = load_config_module(spec)
    return module.get_config(argument) if argument else module.get_config()


def _parse(text: str, field_type: type | None, field: str, current=None):
    """A command-line string as a value of `field_type` (None: a literal, or else the text);
    `current`, the field's value, is the example an error shows for a tuple."""
    if field_type is str:
        return text
    if field_type is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config.{field} expects a bool (true/false), got {text!r}")
    if field_type in (int, float):
        try:
            return field_type(text) if field_type is float else int(text)
        except ValueError:
            expected = field_type.__name__
            raise ValueError(f"config.{field} expects {expected}, got {text!r}") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if field_type in (tuple, list):
            example = tuple(current) if current else "(0.5, 0.25) or ('a', 'b')"
            raise ValueError(
                f"config.{field} expects a tuple literal such as {example}, got {text!r}"
            ) from None
        return text
    return tuple(value) if isinstance(value, list) else value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | None, frozen=()
) -> ml_collections.ConfigDict:
    """A copy of `config` with `{"dotted.field": value}` overrides: the one way every command and
    the sweeps change a config. Strings (from the command line, `--config.mix.epsilon=0.5`) are
    parsed to the field's type (placeholders included); other values are set as they are.

    Raises ValueError naming `config.<field>`: a field that does not exist (with the fields that
    do at that level), a value of the wrong type, or a field under one of the `frozen` prefixes
    (e.g. "model": the checkpoint fixes the model).
    """
    config = copy.deepcopy(config)
    for dotted, value in (overrides or {}).items():
        if any(dotted == prefix or dotted.startswith(prefix + ".") for prefix in frozen):
            raise ValueError(f"config.{dotted} cannot be changed here (the run fixes it)")
        *parents, leaf = dotted.split(".")
        node, walked = config, "config"
        for name in (*parents, leaf):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ValueError(
                    f"--config.{dotted}: {walked} has no field {name!r}; expected one of {fields}"
                )
            parent, node, walked = node, node[name], f"{walked}.{name}"
        if isinstance(value, str):
            value = _parse(value, parent.get_ref(leaf).get_type(), dotted, parent[leaf])
        try:
            parent[leaf] = value
        except TypeError as error:
            raise ValueError(f"config.{dotted} = {value!r}: {error}") from None
    return config


def default_config(dataset: str = "cifar10", **data_overrides) -> ml_collections.ConfigDict:
    """Every field of an experiment, set to the CIFAR PreActResNet-18 AlignMixup recipe.

    `dataset` and `data_overrides` go to `data.default_data_config` (whose unset fields can be
    set on the command line, e.g. `--config.data.manual_dir=DIR`).
    """
    from alignmix_jax import data

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(
        {"name": "preact_resnet18", "stage_sizes": (2, 2, 2, 2), "base_width": 64,
         "batch_norm_group": BATCH_NORM_ALL_DEVICES}
    )
    config.data = data.default_data_config(dataset, **data_overrides)
    config.mix = ml_collections.ConfigDict()
    config.mix.method = "alignmixup"
    config.mix.alpha = 2.0
    sinkhorn = SinkhornOptions.default()  # the Sinkhorn defaults: `ot.align_mix`'s
    config.mix.epsilon = sinkhorn.epsilon
    config.mix.num_iters = sinkhorn.num_iters
    config.mix.threshold = config_dict.FieldReference(sinkhorn.threshold, field_type=float)
    config.mix.scale_cost = sinkhorn.scale_cost
    config.mix.stage = LAST_STAGE
    config.mix.direction = "random"
    config.mix.input_prob = 0.5
    config.mix.manifold_stages = ("input", "stage1", "stage2")
    # "global": partners drawn from the whole global batch (the single-GPU reference; results do
    # not depend on the device count); "device": from each device's shard (DataParallel).
    config.mix.partner = "global"
    # "shared": one input/aligned coin, direction and manifold stage per step for every device;
    # "device": each device draws its own (needs partner "device"), as DataParallel replicas do.
    config.mix.coins = "shared"
    config.mix.lam_mode = "batch"  # "batch": one lam per batch (the paper); "example": one each
    config.mix.label_smoothing = 0.0  # share of the mixed target spread over all classes
    # Train without mixing after this epoch (None: mix to the end).
    config.mix.off_after_epoch = config_dict.placeholder(float)
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries_epochs = (500, 1000, 1500)
    config.optimizer.decay_factor = 0.1
    config.optimizer.warmup_epochs = 0.0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_epochs = 2000
    config.num_train_steps = -1
    config.eval_every_steps = 0
    config.log_every_steps = 50
    config.summary_last_evals = 10  # the summary reports the median top-1 of the last this many
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 2
    # Stop at the first NaN or infinite loss or parameter, before anything non-finite is saved.
    config.stop_on_divergence = True
    config.compute_dtype = "float32"
    config.distributed = False
    # Multi-host set-up for `jax.distributed.initialize` when `distributed`; unset: auto-detected
    # (Slurm, Open MPI, Cloud TPU, Kubernetes).
    config.distributed_coordinator = config_dict.placeholder(str)
    config.distributed_num_processes = config_dict.placeholder(int)
    config.distributed_process_id = config_dict.placeholder(int)
    config.tensorboard = True
    config.progress_bar = True
    # The persistent XLA compilation cache (None: $JAX_COMPILATION_CACHE_DIR if set, else
    # ~/.cache/alignmix_jax/xla; "": off): a rerun or a resume does not compile again.
    config.compilation_cache_dir = config_dict.placeholder(str)
    # (first, last): a jax.profiler trace of these steps in workdir/profile (None: no trace).
    config.profile_steps = config_dict.placeholder(tuple)
    # The dataset a `:smoke` config replaced by digits (None: not replaced); the banner names it.
    config.smoke_replaced_data = config_dict.placeholder(str)
    # The paper's best test top-1 (%) for this config's row (None: no paper row). The experiment
    # file is the one place a figure is written; evaluation reports read it from here.
    config.paper_top1 = config_dict.placeholder(float)
    return config


def smoke_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks `config` to a CPU check of a few seconds: the same method and model family with
    tiny widths, 4 steps at 32x32, batch 16. An image-folder config keeps its own pipeline and
    its data fields, on a generated archive (`image_folder.smoke_archive`, at most 8 training
    images per class); any other dataset is replaced by the bundled digits (no download), and
    named in `smoke_replaced_data`: the run's banner says what it skips."""
    from alignmix_jax import data
    from alignmix_jax.data import image_folder

    if config.data.name == "image_folder":
        config.data.path = image_folder.smoke_archive(config.data.cache_dir)
        config.data.image_size = 32
        if config.data.train_examples_per_class is not None:
            config.data.train_examples_per_class = min(config.data.train_examples_per_class, 8)
    else:
        if config.data.name != "digits":
            config.smoke_replaced_data = config.data.name
        config.data = data.default_data_config("digits", image_size=32)
    if config.model.name == "wide_resnet":
        config.model.depth, config.model.widen_factor = 10, 1
    else:
        config.model.stage_sizes, config.model.base_width = (1,) * len(config.model.stage_sizes), 8
    config.batch_size = 16
    config.eval_batch_size = 64
    config.num_train_steps = 4
    config.eval_every_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    config.compute_dtype = "float32"
    return config


CONFIG_ARGUMENTS = (None, "", "smoke")
ABLATION_BASES = {
    None: "quickstart.py",
    "smoke": "quickstart.py:smoke",
    "cifar10": "cifar10_preactresnet18.py",
}


def ablation_base_config(ablation_file: str, argument: str | None) -> ml_collections.ConfigDict:
    """Base config of `experiments/ablations/<name>.py`: the quickstart (argument None), its
    smoke ("smoke") or the CIFAR-10 PreActResNet-18 row ("cifar10"), read from the experiments
    folder above the file."""
    if argument not in ABLATION_BASES:
        raise ValueError(
            f"config argument {argument!r} is invalid; expected none, 'smoke' or 'cifar10'"
        )
    experiments = os.path.dirname(os.path.dirname(os.path.abspath(ablation_file)))
    return load_config(os.path.join(experiments, ABLATION_BASES[argument]))


def apply_config_argument(
    config: ml_collections.ConfigDict, argument: str | None
) -> ml_collections.ConfigDict:
    """`get_config(argument)` of the experiment files: None -> `config`, "smoke" -> shrunk."""
    if argument not in CONFIG_ARGUMENTS:
        raise ValueError(f"config argument {argument!r} is invalid; expected none or 'smoke'")
    return smoke_config(config) if argument == "smoke" else config


def _fail(field: str, value, expected: str) -> None:
    raise ValueError(f"config.{field} = {value!r} is invalid; expected {expected}.")


def _require_choice(field: str, value, choices: Sequence) -> None:
    if value not in choices:
        _fail(field, value, "one of " + ", ".join(repr(choice) for choice in choices))


def _require_positive(field: str, value, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        _fail(field, value, "a positive " + ("integer" if integer else "number"))


def model_stage_names(model_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The `stage_names` of the model `model_config` builds; bad model kwargs -> ValueError."""
    from alignmix_jax import models

    try:
        model = models.build_model(model_config, num_classes=10)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"config.model = {model_config.to_dict()!r} does not build a model: {error}"
        ) from error
    return tuple(model.stage_names)


def validate_mix_config(mix: ml_collections.ConfigDict, stage_names: Sequence[str]) -> None:
    """Checks `config.mix` against the allowed methods and ranges and the model's `stage_names`."""
    _require_choice("mix.method", mix.method, METHODS)
    _require_positive("mix.alpha", mix.alpha)
    try:  # the op's own check of its Sinkhorn options, named as config fields
        ot.validated_options(**SinkhornOptions.from_config(mix).as_kwargs())
    except ValueError as error:
        raise ValueError(f"config.mix.{error}") from None
    _require_choice("mix.direction", str(mix.direction), DIRECTIONS)
    _require_choice("mix.partner", mix.partner, PARTNER_MODES)
    _require_choice("mix.coins", mix.coins, COIN_MODES)
    if mix.coins == "device" and mix.partner != "device":
        _fail("mix.coins", mix.coins, "'shared' with mix.partner 'global' (global partners are "
              "gathered inside the branch the coins pick, which every device must take alike)")
    _require_choice("mix.lam_mode", mix.lam_mode, LAM_MODES)
    smoothing = mix.label_smoothing
    if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not (
        0.0 <= smoothing < 1.0
    ):
        _fail("mix.label_smoothing", smoothing, "a number in [0, 1)")
    if mix.off_after_epoch is not None and mix.off_after_epoch < 0:
        _fail("mix.off_after_epoch", mix.off_after_epoch, "None or a number of epochs >= 0")
    if isinstance(mix.input_prob, bool) or not 0.0 <= mix.input_prob <= 1.0:
        _fail("mix.input_prob", mix.input_prob, "a probability in [0, 1]")
    _require_choice("mix.stage", mix.stage, (LAST_STAGE, *stage_names))
    if not mix.manifold_stages:
        _fail("mix.manifold_stages", mix.manifold_stages, "a non-empty tuple of stage names")
    for stage in mix.manifold_stages:
        if stage != LAST_STAGE and stage not in stage_names:
            _fail(
                "mix.manifold_stages",
                tuple(mix.manifold_stages),
                "stage names among " + ", ".join(repr(name) for name in (LAST_STAGE, *stage_names)),
            )


def validate_optimizer_config(optimizer: ml_collections.ConfigDict) -> None:
    """Checks `config.optimizer`: learning rate, momentum, weight decay and the schedule."""
    _require_positive("optimizer.learning_rate", optimizer.learning_rate)
    if not 0.0 <= optimizer.momentum < 1.0:
        _fail("optimizer.momentum", optimizer.momentum, "a number in [0, 1)")
    if optimizer.weight_decay < 0.0:
        _fail("optimizer.weight_decay", optimizer.weight_decay, "a number >= 0")
    _require_choice("optimizer.schedule", optimizer.schedule, SCHEDULES)
    if optimizer.schedule == "piecewise":
        if list(optimizer.boundaries_epochs) != sorted(optimizer.boundaries_epochs):
            _fail("optimizer.boundaries_epochs", optimizer.boundaries_epochs, "increasing epochs")
        _require_positive("optimizer.decay_factor", optimizer.decay_factor)
    if optimizer.warmup_epochs < 0:
        _fail("optimizer.warmup_epochs", optimizer.warmup_epochs, "a number of epochs >= 0")


def validate_distributed_config(config: ml_collections.ConfigDict) -> None:
    """Checks the optional multi-host fields: `distributed_num_processes` positive and
    `distributed_process_id` in [0, distributed_num_processes) when they are set."""
    num_processes, process_id = config.distributed_num_processes, config.distributed_process_id
    if num_processes is not None:
        _require_positive("distributed_num_processes", num_processes, integer=True)
    if process_id is not None:
        upper = "distributed_num_processes" if num_processes is None else num_processes
        if isinstance(process_id, bool) or not isinstance(process_id, int) or process_id < 0:
            _fail("distributed_process_id", process_id, f"an integer in [0, {upper})")
        if num_processes is not None and process_id >= num_processes:
            _fail("distributed_process_id", process_id, f"an integer in [0, {upper})")


def validate_config(
    config: ml_collections.ConfigDict,
    num_devices: int,
    num_processes: int = 1,
    stage_names: Sequence[str] | None = None,
) -> None:
    """Raises ValueError naming the first bad field of an experiment config.

    Args:
      config: the experiment config (see `experiments/*.py`).
      num_devices: devices of the data mesh; `config.batch_size` must be divisible by it.
      num_processes: hosts feeding the mesh; `config.batch_size` must be divisible by it.
      stage_names: the model's stage names; built from `config.model` when omitted.
    """
    _require_choice("model.name", config.model.name, MODEL_NAMES)
    _require_choice("data.name", config.data.name, DATASET_NAMES)
    _require_choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPES)
    _require_positive("batch_size", config.batch_size, integer=True)
    for devices, what in ((num_devices, "devices"), (num_processes, "processes")):
        if config.batch_size % devices:
            _fail("batch_size", config.batch_size, f"a multiple of the {devices} {what}")
    _require_positive("eval_batch_size", config.eval_batch_size, integer=True)
    if config.eval_batch_size % num_devices:
        _fail("eval_batch_size", config.eval_batch_size, f"a multiple of the {num_devices} devices")
    if config.num_train_steps <= 0:
        _require_positive("num_epochs", config.num_epochs)
    _require_positive("checkpoint_every_steps", config.checkpoint_every_steps, integer=True)
    _require_positive("log_every_steps", config.log_every_steps, integer=True)
    _require_positive("summary_last_evals", config.summary_last_evals, integer=True)
    if config.eval_every_steps < 0:
        _fail("eval_every_steps", config.eval_every_steps, "0 (every epoch) or a positive integer")
    profile_steps = config.get("profile_steps")
    if profile_steps is not None and not (
        len(profile_steps) == 2
        and all(isinstance(step, int) and not isinstance(step, bool) for step in profile_steps)
        and 1 <= profile_steps[0] <= profile_steps[1]
    ):
        _fail("profile_steps", profile_steps, "None or (first, last) steps, 1 <= first <= last")
    validate_optimizer_config(config.optimizer)
    if stage_names is None:
        stage_names = model_stage_names(config.model)
    validate_mix_config(config.mix, stage_names)
