"""A `jax.profiler` trace of chosen training steps (`config.profile_steps`)."""

import pathlib

import jax

PROFILE_DIR = "profile"


class Profile:
    """A `jax.profiler` trace of the steps `config.profile_steps` = (first, last) in
    `workdir/profile` (TensorBoard's profile plugin, and `perfetto_trace.json.gz` for Perfetto)."""

    def __init__(self, steps: tuple[int, int] | None, workdir: pathlib.Path, logger):
        self._steps, self._logger = steps, logger
        self.directory = workdir / PROFILE_DIR
        self._tracing = False

    def before(self, step: int) -> None:
        if self._steps is not None and step == self._steps[0]:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self._tracing = True

    def after(self, step: int, state) -> None:
        if self._tracing and step == self._steps[1]:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
            self._logger.message(f"Wrote a profile of steps {self._steps} in {self.directory}")
