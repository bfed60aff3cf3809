"""Runs `python -m alignmix_jax.main ARGS...` with the test hooks its environment asks for.

    python tests/cli_hooks.py --config=... --workdir=...      (through `cli_runs.command`)

  SPY_DIR_ENV: at each training checkpoint, every local device's copy of every leaf of the train
    state goes to `state_host<process>_step<step>.npz` in that folder (`save_device_copies`).
  KILL_ENV: SIGKILL the process after an eval that follows a best-weights save made after a
    training checkpoint and is not itself a new best (pending saves are finished first).
  SIGNAL_ENV: "SIGTERM:5" sends that signal to the process itself right after step 5 is dispatched.
"""

import os
import pathlib
import runpy
import signal
import sys

import jax
import numpy as np

SPY_DIR_ENV = "ALIGNMIX_TEST_SPY_DIR"
KILL_ENV = "ALIGNMIX_TEST_KILL_AFTER_LATER_EVAL"
SIGNAL_ENV = "ALIGNMIX_TEST_SIGNAL_AT_STEP"


def spy_file(spy_dir, host: int, step: int) -> pathlib.Path:
    """Where the spy keeps `host`'s device copies of the state after `step`."""
    return pathlib.Path(spy_dir) / f"state_host{host}_step{step}.npz"


def save_device_copies(state, step: int, spy_dir) -> None:
    """Writes {`jax.tree_util.keystr` of each leaf: (local devices, ...) copies} of `state`."""
    copies = {
        jax.tree_util.keystr(path): np.stack(
            [np.asarray(shard.data) for shard in leaf.addressable_shards]
        )
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }
    np.savez(spy_file(spy_dir, jax.process_index(), step), **copies)


def install_hooks(environ) -> None:
    """Patches the trainer with the hooks `environ` asks for."""
    from alignmix_jax.trainer import checkpointing, train

    if environ.get(SPY_DIR_ENV):
        original_save = checkpointing.RunCheckpointer.save

        def save(self, step, state, run_record):
            save_device_copies(state, int(step), environ[SPY_DIR_ENV])
            original_save(self, step, state, run_record)

        checkpointing.RunCheckpointer.save = save

    if environ.get(KILL_ENV):
        original_evaluate = train._Evaluator.__call__

        def evaluate_then_maybe_kill(self, state, step, run_record):
            original_evaluate(self, state, step, run_record)
            checkpointer = self.checkpointer
            last_checkpoint = checkpointer.latest_step()
            if last_checkpoint is not None and last_checkpoint < run_record["best_step"] < step:
                checkpointer._best.wait_until_finished()
                checkpointer._last.wait_until_finished()
                print(f"test hook: SIGKILL after the eval of step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        train._Evaluator.__call__ = evaluate_then_maybe_kill

    if environ.get(SIGNAL_ENV):
        signal_name, at_step = environ[SIGNAL_ENV].split(":")
        original_make_train_step = train.make_train_step

        def make_train_step(*args, **kwargs):
            step_fn = original_make_train_step(*args, **kwargs)

            def signalling_step(state, batch, key):
                step = int(jax.device_get(state.step)) + 1
                result = step_fn(state, batch, key)
                if step == int(at_step):
                    os.kill(os.getpid(), signal.Signals[signal_name])
                return result

            return signalling_step

        train.make_train_step = make_train_step


if __name__ == "__main__":
    install_hooks(os.environ)
    sys.argv[0] = "alignmix_jax.main"
    runpy.run_module("alignmix_jax.main", run_name="__main__", alter_sys=True)
