"""Real command-line runs in child processes, with test hooks, for the tests that need one (a run
killed, signalled or spread over two processes).

`command(*args)` runs `python -m alignmix_jax.main *args` through a launcher that installs the hooks
asked for by environment variables:
  SPY_DIR_ENV: after each training checkpoint, every local device's copy of the parameters goes to
    `params_host<process>_step<step>.npz` ({dotted name: (local devices, ...)}) in that folder.
  KILL_ENV: SIGKILL the process after an eval that follows a best-weights save made after a
    training checkpoint and is not itself a new best (pending saves are finished first).
  SIGNAL_ENV: "SIGTERM:5" sends that signal to the process itself right after step 5 is dispatched.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SPY_DIR_ENV = "ALIGNMIX_TEST_SPY_DIR"
KILL_ENV = "ALIGNMIX_TEST_KILL_AFTER_LATER_EVAL"
SIGNAL_ENV = "ALIGNMIX_TEST_SIGNAL_AT_STEP"

LAUNCHER = f"""
import os, pathlib, runpy, signal
import jax
import numpy as np
from alignmix_jax.trainer import checkpointing, train

if os.environ.get("{SPY_DIR_ENV}"):
    original_save = checkpointing.RunCheckpointer.save

    def save(self, step, state, meta):
        leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
        copies = {{
            ".".join(str(key.key) for key in path): np.stack(
                [np.asarray(shard.data) for shard in leaf.addressable_shards]
            )
            for path, leaf in leaves
        }}
        name = f"params_host{{jax.process_index()}}_step{{int(step)}}.npz"
        np.savez(pathlib.Path(os.environ["{SPY_DIR_ENV}"]) / name, **copies)
        original_save(self, step, state, meta)

    checkpointing.RunCheckpointer.save = save

if os.environ.get("{KILL_ENV}"):
    original_evaluate = train._evaluate_and_keep_best

    def evaluate_then_maybe_kill(eval_step, state, step, config, mesh, meta, checkpointer, *rest):
        original_evaluate(eval_step, state, step, config, mesh, meta, checkpointer, *rest)
        last_checkpoint = checkpointer.latest_step()
        if last_checkpoint is not None and last_checkpoint < meta["best_step"] < step:
            checkpointer._best.wait_until_finished()
            checkpointer._last.wait_until_finished()
            print(f"test hook: SIGKILL after the eval of step {{step}}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    train._evaluate_and_keep_best = evaluate_then_maybe_kill

if os.environ.get("{SIGNAL_ENV}"):
    signal_name, at_step = os.environ["{SIGNAL_ENV}"].split(":")
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

runpy.run_module("alignmix_jax.main", run_name="__main__", alter_sys=True)
"""


def command(*args: str) -> list[str]:
    """The argv of a CLI run through the hooking launcher."""
    return [sys.executable, "-c", LAUNCHER, *args]


def environment(devices: int = 1, **hooks: str) -> dict:
    """The child's environment: CPU with `devices` simulated devices, no cluster auto-detection,
    the suite's compilation cache (see conftest), the repository importable, and the given hook
    variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JAX_", "TPU_", "SLURM_", "OMPI_", "PMI_"))
        or key.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONPATH=str(REPO),
        **hooks,
    )
    return env


def start(args, log_path: pathlib.Path, devices: int = 1, **hooks: str):
    """Starts one CLI run; returns (process, log file)."""
    log = open(log_path, "w+")  # noqa: SIM115 (closed by `finish`)
    process = subprocess.Popen(
        command(*args), cwd=REPO, env=environment(devices, **hooks), stdout=log,
        stderr=subprocess.STDOUT, text=True,
    )
    return process, log


def finish(launched: dict, deadline_sec: float, expected_returncode: int = 0) -> dict[str, str]:
    """Waits for every process of `launched` ({name: (process, log)}) until the shared deadline;
    kills all on a failure or a timeout. Returns {name: output}; fails the test with the output
    tails when one did not exit with `expected_returncode`."""
    deadline = time.monotonic() + deadline_sec
    failed = None
    try:
        for name, (process, _) in launched.items():
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failed = f"{name} still running after {deadline_sec} s"
                break
            if process.returncode != expected_returncode:
                failed = f"{name} exited with {process.returncode}, not {expected_returncode}"
                break
    finally:
        for process, _ in launched.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = {}
    for name, (_, log) in launched.items():
        log.seek(0)
        outputs[name] = log.read()
        log.close()
    if failed is not None:
        tails = "\n".join(f"--- {name}:\n{text[-3000:]}" for name, text in outputs.items())
        pytest.fail(f"{failed}\n{tails}")
    return outputs


def run(args, log_path: pathlib.Path, deadline_sec: float, expected_returncode: int = 0,
        devices: int = 1, **hooks: str) -> str:
    """One CLI run to its end; returns its output."""
    launched = {"run": start(args, log_path, devices, **hooks)}
    return finish(launched, deadline_sec, expected_returncode)["run"]
