"""Real command-line runs in child processes, with test hooks, for the tests that need one (a run
killed, signalled or spread over two processes).

`command(*args)` runs `python -m alignmix_jax.main *args` through `cli_hooks`, which installs the
hooks its environment variables ask for (a spy on checkpoints, a kill, a signal).
"""

import os
import pathlib
import subprocess
import sys
import time

import cli_hooks
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def command(*args: str) -> list[str]:
    """The argv of a CLI run through the hooking launcher."""
    return [sys.executable, cli_hooks.__file__, *args]


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
