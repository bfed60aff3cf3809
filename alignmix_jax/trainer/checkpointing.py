"""Checkpoints of a training run (orbax, atomic) and loading a trained workdir for evaluation.

Layout of a workdir:
  config.json              the experiment config of the run
  checkpoints/<step>/      last `keep` training checkpoints: items `model` (params, batch_stats),
                           `optimizer` (step, opt_state) and `meta` (JSON: best top-1 so far, ...)
  best/<step>/             the weights with the best eval top-1: items `model` and `meta`
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed run
leaves either a whole checkpoint or none.
"""

import copy
import json
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from alignmix_jax.trainer import compilation_cache, parallel

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
CHECKPOINT_WHICH = ("best", "last")


def save_config(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
    """Writes `config` as `workdir/config.json` (atomically) and returns its path."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    temporary.replace(path)
    return path


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {key: _lists_to_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(item) for item in value)
    return value


def load_config(workdir) -> ml_collections.ConfigDict:
    """Reads `workdir/config.json` back into a ConfigDict (JSON lists become tuples)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise ValueError(
            f"workdir={str(workdir)!r} has no {CONFIG_FILE}; expected a training run directory"
        )
    return ml_collections.ConfigDict(_lists_to_tuples(json.loads(path.read_text())))


CONFIG_CHANGES_FILE = "config_changes.jsonl"
# Fields that say where and how a run executes, or describe it, not what it computes: they may
# change on resume.
RUNTIME_FIELDS = frozenset({
    "progress_bar", "tensorboard", "stop_on_divergence", "paper_top1", "keep_checkpoints",
    "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "eval_batch_size",
    "distributed", "distributed_coordinator", "distributed_num_processes", "distributed_process_id",
    "data.data_dir", "data.manual_dir", "data.path", "data.cache_dir", "smoke_replaced_data",
    "compilation_cache_dir", "profile_steps",
})


class ConfigChangedError(ValueError):
    """A run was resumed with a config that differs from the one it was trained with."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, config: dict) -> dict[str, tuple]:
    """`{dotted field: (saved value, new value)}` for every field that differs between two config
    dicts, leaving out `RUNTIME_FIELDS`; a field absent on one side shows as "<absent>"."""
    old, new = _flatten(_lists_to_tuples(saved)), _flatten(_lists_to_tuples(config))
    absent = "<absent>"
    return {
        field: (old.get(field, absent), new.get(field, absent))
        for field in sorted(old.keys() | new.keys())
        if field not in RUNTIME_FIELDS and old.get(field, absent) != new.get(field, absent)
    }


def check_resumed_config(
    config: ml_collections.ConfigDict, workdir, step: int, accept: bool, is_writer: bool
) -> dict[str, tuple]:
    """Compares `config` with the `config.json` of the run resumed at `step` in `workdir`.

    Raises ConfigChangedError listing the changed fields (old -> new) unless `accept`; accepted
    changes are appended to `workdir/config_changes.jsonl` as {"step", "changes"} (by the writer
    host). Returns the changes.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return {}
    changes = config_changes(json.loads(path.read_text()), config.to_dict())
    if not changes:
        return {}
    listed = "; ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in changes.items())
    if not accept:
        raise ConfigChangedError(
            f"workdir={str(workdir)!r} holds a run trained to step {step} with another config "
            f"({listed}). Resume with the same config, use a new workdir, or pass "
            "--accept_config_changes to go on with the new one (the change is recorded in "
            f"{CONFIG_CHANGES_FILE})"
        )
    if is_writer:
        record = {"step": step, "changes": {f: list(values) for f, values in changes.items()}}
        with (pathlib.Path(workdir) / CONFIG_CHANGES_FILE).open("a") as file:
            file.write(json.dumps(record, default=str) + "\n")
    return changes


def _manager(directory: pathlib.Path, max_to_keep, async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _check_saved(saved: bool, step: int, directory: pathlib.Path) -> None:
    """orbax's `save` returns False, without an error, when it skips a step; never let it pass."""
    if not saved:
        raise RuntimeError(
            f"orbax did not save step {step} in {directory}: it holds this or a later step "
            f"already ({sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())})"
        )


class RunCheckpointer:
    """The training checkpoints (last `keep`) and the best-weights checkpoints of one workdir.

    `best/` always holds the weights of the best eval of the run's own lineage: a new best is
    written at once, and the previous one is deleted only when a training checkpoint that records
    the new best is on disk. Restoring a training checkpoint deletes the best weights that came
    after it (from a run that was killed and is now resumed from an earlier step), so the best of
    the resumed run replaces them. `meta` is saved as a snapshot: the caller may go on changing it.

    Args:
      workdir: run directory.
      keep: how many of the latest training checkpoints to keep.
      async_save: write in a background thread after the device-to-host copy.
    """

    def __init__(self, workdir, keep: int = 2, async_save: bool = True):
        self.workdir = pathlib.Path(workdir)
        self._last_dir = self.workdir / CHECKPOINT_DIR
        self._best_dir = self.workdir / BEST_DIR
        self._last = _manager(self._last_dir, keep, async_save)
        self._best = _manager(self._best_dir, None, async_save)
        self._recorded_best_step = None  # best_step of the newest submitted training checkpoint

    def latest_step(self) -> int | None:
        """Step of the newest complete training checkpoint, or None."""
        return self._last.latest_step()

    def best_steps(self) -> list[int]:
        """Steps of the best-weights checkpoints on disk (one, or two while a new best is not yet
        recorded in a training checkpoint)."""
        return sorted(self._best.all_steps())

    def _prune_best(self, keep_from: int | None = None, drop_after: int | None = None) -> None:
        """Deletes best-weights checkpoints before `keep_from` and after `drop_after`."""
        for step in self.best_steps():
            if (keep_from is not None and step < keep_from) or (
                drop_after is not None and step > drop_after
            ):
                self._best.delete(step)

    def _prune_recorded_best(self) -> None:
        """Once the newest training checkpoint is on disk, keeps no best older than its best."""
        self._last.wait_until_finished()
        if self._recorded_best_step is not None:
            self._prune_best(keep_from=self._recorded_best_step)

    def save(self, step: int, state, meta: dict) -> None:
        """Saves a training state (fields params, batch_stats, step, opt_state) and a snapshot of
        the JSON `meta` (which records "best_step")."""
        self._prune_recorded_best()
        snapshot = copy.deepcopy(meta)
        saved = self._last.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(
                    {"params": state.params, "batch_stats": state.batch_stats}
                ),
                optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
                meta=ocp.args.JsonSave(snapshot),
            ),
        )
        _check_saved(saved, step, self._last_dir)
        self._recorded_best_step = snapshot.get("best_step")

    def restore(self, abstract_state, step: int | None = None):
        """Restores the training checkpoint at `step` (default latest) -> (state, meta).

        `abstract_state` is a state of `jax.ShapeDtypeStruct`s with shardings; the restored arrays
        take these shardings, so a run saved on one device count resumes on another (the
        target's mesh, not the saved one, decides where the arrays go). Best weights saved after
        `step` (by the run that went on past it) are deleted.
        """
        _check_has_shardings(abstract_state)
        step = self.latest_step() if step is None else step
        restored = self._last.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(
                    {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
                ),
                optimizer=ocp.args.StandardRestore(
                    {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
                ),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = abstract_state.replace(
            params=restored.model["params"],
            batch_stats=restored.model["batch_stats"],
            step=restored.optimizer["step"],
            opt_state=restored.optimizer["opt_state"],
        )
        meta = dict(restored.meta)
        self._recorded_best_step = meta.get("best_step")
        self._prune_best(keep_from=self._recorded_best_step, drop_after=step)
        return state, meta

    def save_best(self, step: int, params, batch_stats, meta: dict) -> None:
        """Saves the weights with the best eval top-1 so far. A run resumed after a kill may
        redo the eval of a best checkpoint it already wrote; that (identical) one is replaced."""
        if step in self._best.all_steps():
            self._best.delete(step)
        saved = self._best.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave({"params": params, "batch_stats": batch_stats}),
                meta=ocp.args.JsonSave(copy.deepcopy(meta)),
            ),
        )
        _check_saved(saved, step, self._best_dir)

    def close(self) -> None:
        """Waits for pending saves, prunes superseded best weights and releases the managers."""
        self._prune_recorded_best()
        self._best.wait_until_finished()
        self._last.close()
        self._best.close()


def _shapes(tree) -> dict:
    return {
        jax.tree_util.keystr(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _check_model_matches(expected, saved, directory: pathlib.Path) -> None:
    expected_shapes, saved_shapes = _shapes(expected), _shapes(saved)
    if expected_shapes == saved_shapes:
        return
    missing = sorted(set(expected_shapes) - set(saved_shapes))
    unexpected = sorted(set(saved_shapes) - set(expected_shapes))
    different = sorted(
        name
        for name in set(expected_shapes) & set(saved_shapes)
        if expected_shapes[name] != saved_shapes[name]
    )
    raise ValueError(
        f"checkpoint {str(directory)!r} does not match the model of config.json: "
        f"missing {missing[:5]}, unexpected {unexpected[:5]}, different shapes {different[:5]}"
    )


def _check_has_shardings(abstract_state) -> None:
    unsharded = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        if getattr(leaf, "sharding", None) is None
    ]
    if unsharded:
        raise ValueError(
            f"abstract_state has leaves without a sharding: {unsharded[:5]}; expected "
            "jax.ShapeDtypeStruct(..., sharding=...) or jax.Array leaves on the current mesh"
        )


def _replicated_target(saved_metadata, mesh: jax.sharding.Mesh):
    """Restore target: every saved array (shape, dtype) as a `jax.ShapeDtypeStruct` replicated
    on `mesh`, so that a checkpoint restores on any device count, whatever mesh it was saved on.
    """
    sharding = parallel.replicated_sharding(mesh)
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        saved_metadata,
    )


class TrainedRun(NamedTuple):
    """A trained run loaded for evaluation (see `load_for_eval`)."""

    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    step: int


def load_for_eval(workdir, which: str = "best") -> TrainedRun:
    """Loads a trained run for evaluation -> `TrainedRun(config, model, variables, step)`.

    The checkpoint restores on this process's devices whatever the device count of the run that
    saved it (e.g. a run trained on 8 GPUs evaluated on a 1-CPU laptop). The compilations that
    follow use the run's `compilation_cache_dir` (see `compilation_cache`).

    Args:
      workdir: run directory written by `train.train_and_evaluate`.
      which: "best" (best eval top-1) or "last" (newest training checkpoint).

    Returns:
      config: the run's ConfigDict; model: the flax module built without `axis_name`;
      variables: {"params": ..., "batch_stats": ...}, each array replicated on every device of
      `parallel.make_data_mesh()`; step: the training step of the loaded checkpoint.
    """
    from alignmix_jax import data, models

    if which not in CHECKPOINT_WHICH:
        raise ValueError(f"which={which!r} is invalid; expected one of {CHECKPOINT_WHICH}")
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ValueError(
            f"workdir={str(workdir)!r} does not exist; expected a training run directory"
        )
    config = load_config(workdir)
    compilation_cache.use_compilation_cache(config.get("compilation_cache_dir"))
    directory = workdir / (BEST_DIR if which == "best" else CHECKPOINT_DIR)
    if not directory.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} has no {directory.name}/ checkpoint directory")
    manager = ocp.CheckpointManager(
        directory.absolute(),
        # Not `read_only=True`: orbax warns about each option that setting overrides. This manager
        # only restores; `create=False` keeps it from making the directory.
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={  # every item a training checkpoint holds, or orbax warns of the others
            "model": ocp.StandardCheckpointHandler(),
            "optimizer": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"{str(directory)!r} holds no complete checkpoint")
        info = data.get_dataset_info(config.data)
        model = models.build_model(config.model, info.num_classes)
        expected = jax.eval_shape(
            lambda: model.init(
                jax.random.key(0),
                jax.numpy.zeros((1, *info.image_shape), jax.numpy.float32),
                train=False,
            )
        )
        saved = manager.item_metadata(step).model.tree
        _check_model_matches(dict(expected), saved, directory / str(step))
        target = _replicated_target(saved, parallel.make_data_mesh())
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target))
        ).model
    finally:
        manager.close()
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    return TrainedRun(config, model, variables, int(step))
