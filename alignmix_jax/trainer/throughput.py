"""Images/s of a training run, and how its time splits between waiting for input and the rest."""

import statistics
import time


class Throughput:
    """Images/s over log intervals, and how an interval's time splits between waiting for input
    and the rest (the device step); the interval holding the first (compiling) step is dropped
    from the median.

    (clu's `periodic_actions.ReportProgress` would do this, but clu cannot be imported without
    TensorFlow, which training does not need.)
    """

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self.rates: list[float] = []
        self._start = time.perf_counter()
        self._steps = 0
        self._input_wait = 0.0
        self._first_interval = True

    def pause(self) -> float:
        """Time spent outside training (eval, checkpoints) is excluded via `resume(paused_at)`."""
        return time.perf_counter()

    def resume(self, paused_at: float) -> None:
        self._start += time.perf_counter() - paused_at

    def add_step(self, input_wait: float) -> None:
        """Counts a step whose batch took `input_wait` seconds to arrive."""
        self._steps += 1
        self._input_wait += input_wait

    def close_interval(self) -> dict[str, float]:
        """The interval that just ended (call after blocking on its results): images_per_sec,
        step_sec (wall time per step) and input_wait_sec (of which waiting for the batch)."""
        now = time.perf_counter()
        seconds = max(now - self._start, 1e-9)
        steps = max(self._steps, 1)
        interval = {
            "images_per_sec": self._steps * self.global_batch_size / seconds,
            "step_sec": seconds / steps,
            "input_wait_sec": self._input_wait / steps,
        }
        if not self._first_interval:
            self.rates.append(interval["images_per_sec"])
        self._first_interval = False
        self._start, self._steps, self._input_wait = now, 0, 0.0
        return interval

    def median(self, fallback: float) -> float:
        return statistics.median(self.rates) if self.rates else fallback
