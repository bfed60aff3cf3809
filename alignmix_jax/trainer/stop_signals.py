"""Stopping a run cleanly on SIGTERM or SIGINT: after the current step, with a checkpoint there,
on every host at the same step."""

import os
import pathlib
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

from alignmix_jax.trainer import checkpointing


class RunInterrupted(Exception):
    """The run stopped on SIGTERM or SIGINT after writing a checkpoint at `step`; rerunning the
    same command resumes it. `signal_name` is e.g. "SIGTERM"."""

    def __init__(self, signal_name: str, step: int, workdir):
        self.signal_name, self.step = signal_name, step
        super().__init__(
            f"{signal_name}: stopped after step {step} and wrote its checkpoint in "
            f"{pathlib.Path(workdir) / checkpointing.CHECKPOINT_DIR}; rerun the same command "
            "to resume"
        )


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop after the current step (a context manager).

    One process: the handlers set a flag, read after each step; a second SIGINT (Ctrl-C again)
    raises KeyboardInterrupt at once, without a checkpoint. Several processes: SIGTERM goes to
    JAX's preemption service (started by `jax.distributed.initialize`), which agrees on one step at
    which every process stops (`multihost_utils.reached_preemption_sync_point`); SIGINT is passed
    on to it as SIGTERM.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        multi_process = jax.process_count() > 1
        for signum in self.SIGNALS:
            if multi_process and signum == signal.SIGTERM:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if jax.process_count() > 1:
            self.received = signal.Signals(signum).name
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"{self.received}: stopping after this step with a checkpoint"
            + (" (Ctrl-C again to stop at once without one)" if signum == signal.SIGINT else ""),
            file=sys.stderr,
            flush=True,
        )

    def should_stop(self, step: int) -> bool:
        """Whether every process stops after `step`; call once per step on every process."""
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        return self.received is not None

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
