"""Checkpoints of a training run (orbax, atomic) and loading a trained workdir for evaluation.

Layout of a workdir:
  config.json              the experiment config of the run
  checkpoints/<step>/      last `keep` training checkpoints: items `model` (params, batch_stats),
                           `optimizer` (step, opt_state) and `meta` (JSON: best top-1 so far, ...)
  best/<step>/             the weights with the best eval top-1: items `model` and `meta`
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed run
leaves either a whole checkpoint or none.
"""

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from alignmix_jax import parallel

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


def _manager(directory: pathlib.Path, max_to_keep: int, async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


class RunCheckpointer:
    """The training checkpoints (last `keep`) and the best-weights checkpoint of one workdir.

    Args:
      workdir: run directory.
      keep: how many of the latest training checkpoints to keep.
      async_save: write in a background thread after the device-to-host copy.
    """

    def __init__(self, workdir, keep: int = 2, async_save: bool = True):
        self.workdir = pathlib.Path(workdir)
        self._last = _manager(self.workdir / CHECKPOINT_DIR, keep, async_save)
        self._best = _manager(self.workdir / BEST_DIR, 1, async_save)

    def latest_step(self) -> int | None:
        """Step of the newest complete training checkpoint, or None."""
        return self._last.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Saves a training state (fields params, batch_stats, step, opt_state) and JSON `meta`."""
        self._last.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(
                    {"params": state.params, "batch_stats": state.batch_stats}
                ),
                optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore(self, abstract_state, step: int | None = None):
        """Restores the training checkpoint at `step` (default latest) -> (state, meta).

        `abstract_state` is a state of `jax.ShapeDtypeStruct`s with shardings; the restored arrays
        take these shardings, so a run saved on one device count resumes on another (the
        target's mesh, not the saved one, decides where the arrays go).
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
        return state, dict(restored.meta)

    def save_best(self, step: int, params, batch_stats, meta: dict) -> None:
        """Saves the weights with the best eval top-1 so far (replacing the previous best).

        A run resumed after a kill may redo the eval of a best checkpoint it already wrote; that
        (identical) checkpoint is replaced.
        """
        if step in self._best.all_steps():
            self._best.delete(step)
        self._best.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave({"params": params, "batch_stats": batch_stats}),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        self._last.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
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


def load_for_eval(workdir, which: str = "best"):
    """Loads a trained run for evaluation -> (config, model, variables).

    The checkpoint restores on this process's devices whatever the device count of the run that
    saved it (e.g. a run trained on 8 GPUs evaluated on a 1-CPU laptop).

    Args:
      workdir: run directory written by `train.train_and_evaluate`.
      which: "best" (best eval top-1) or "last" (newest training checkpoint).

    Returns:
      config: the run's ConfigDict; model: the flax module built without `axis_name`;
      variables: {"params": ..., "batch_stats": ...}, each array replicated on every device of
      `parallel.make_data_mesh()`.
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
    directory = workdir / (BEST_DIR if which == "best" else CHECKPOINT_DIR)
    if not directory.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} has no {directory.name}/ checkpoint directory")
    manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={
            "model": ocp.StandardCheckpointHandler(),
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
    return config, model, variables
