"""A trained run rebuilt for evaluation: its config, its model and the weights of a checkpoint,
restored on this process's devices whatever device count saved them."""

import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from alignmix_jax.trainer import checkpointing, compilation_cache, parallel, run_config


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


def load_for_eval(workdir, checkpoint: str = "best") -> TrainedRun:
    """Loads a trained run for evaluation -> `TrainedRun(config, model, variables, step)`.

    The checkpoint restores on this process's devices whatever the device count of the run that
    saved it (e.g. a run trained on 8 GPUs evaluated on a 1-CPU laptop). The compilations that
    follow use the run's `compilation_cache_dir` (see `compilation_cache`).

    Args:
      workdir: run directory written by `train.train_and_evaluate`.
      checkpoint: "best" (best eval top-1) or "last" (newest training checkpoint).

    Returns:
      config: the run's ConfigDict; model: the flax module built without `axis_name`;
      variables: {"params": ..., "batch_stats": ...}, each array replicated on every device of
      `parallel.make_data_mesh()`; step: the training step of the loaded checkpoint.
    """
    from alignmix_jax import data, models

    if checkpoint not in checkpointing.CHECKPOINT_WHICH:
        raise ValueError(
            f"checkpoint={checkpoint!r} is invalid; expected one of "
            f"{checkpointing.CHECKPOINT_WHICH}"
        )
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ValueError(
            f"workdir={str(workdir)!r} does not exist; expected a training run directory"
        )
    config = run_config.read(workdir)
    compilation_cache.use_compilation_cache(config.get("compilation_cache_dir"))
    directory = workdir / (
        checkpointing.BEST_DIR if checkpoint == "best" else checkpointing.CHECKPOINT_DIR
    )
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
