"""Stopping a run whose loss or parameters became NaN or infinite, before anything non-finite is
saved, with what to do next."""

import pathlib

import numpy as np

from alignmix_jax.trainer import checkpointing


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became NaN or infinite; nothing from that step on was saved."""


def raise_if_diverged(
    step_metrics: dict, first_step: int, workdir, last_checkpoint: int | None
) -> None:
    """Raises TrainingDivergedError naming the first step of `step_metrics` ({name: (steps,)}
    host arrays of the steps from `first_step` on) whose loss or parameters are not finite."""
    bad = np.flatnonzero(~np.asarray(step_metrics["finite"], bool))
    if not bad.size:
        return
    index = int(bad[0])
    where = (
        f"step {last_checkpoint} in {pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR}"
        if last_checkpoint is not None
        else "none: no checkpoint was written yet"
    )
    raise TrainingDivergedError(
        f"training diverged at step {first_step + index}: loss {step_metrics['loss'][index]}, "
        f"learning rate {step_metrics['learning_rate'][index]:.6g} (the loss or a parameter is "
        f"NaN or infinite). Nothing from that step on was saved; the last good checkpoint is "
        f"{where}. Lower --config.optimizer.learning_rate and rerun (with "
        "--accept_config_changes to resume), or set --config.stop_on_divergence=False to train "
        "on regardless."
    )
