"""The checkpoints of a training run (orbax, atomic).

Layout of a workdir:
  checkpoints/<step>/      last `keep` training checkpoints: items `model` (params, batch_stats),
                           `optimizer` (step, opt_state) and `meta` (JSON: best top-1 so far, ...)
  best/<step>/             the weights with the best eval top-1: items `model` and `meta`
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed run
leaves either a whole checkpoint or none. (`run_config` keeps the run's `config.json`,
`trained_run` loads a checkpoint for evaluation.)
"""

import copy
import pathlib

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
CHECKPOINT_WHICH = ("best", "last")


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
    the resumed run replaces them. The run record is saved as a snapshot: the caller may go on
    changing it.

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

    def save(self, step: int, state, run_record: dict) -> None:
        """Saves a training state (fields params, batch_stats, step, opt_state) and a snapshot of
        the JSON `run_record` (`run_summary`; it records "best_step"), as the item `meta`.

        A best-weights save still in flight is finished first: orbax names the hosts' barrier of
        an async save by its step alone, so two managers saving one step at once on several hosts
        collide ("Barrier _async_write_complete.<step> is already ongoing")."""
        self._best.wait_until_finished()
        self._prune_recorded_best()
        snapshot = copy.deepcopy(run_record)
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
        """Restores the training checkpoint at `step` (default latest) -> (state, run_record).

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
        run_record = dict(restored.meta)
        self._recorded_best_step = run_record.get("best_step")
        self._prune_best(keep_from=self._recorded_best_step, drop_after=step)
        return state, run_record

    def save_best(self, step: int, params, batch_stats, eval_results: dict) -> None:
        """Saves the weights with the best eval top-1 so far, with `eval_results` ({"step", split:
        {"top1", "top5"}}) as the item `meta`. A run resumed after a kill may
        redo the eval of a best checkpoint it already wrote; that (identical) one is replaced."""
        if step in self._best.all_steps():
            self._best.delete(step)
        saved = self._best.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave({"params": params, "batch_stats": batch_stats}),
                meta=ocp.args.JsonSave(copy.deepcopy(eval_results)),
            ),
        )
        _check_saved(saved, step, self._best_dir)

    def close(self) -> None:
        """Waits for pending saves, prunes superseded best weights and releases the managers."""
        self._prune_recorded_best()
        self._best.wait_until_finished()
        self._last.close()
        self._best.close()


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
