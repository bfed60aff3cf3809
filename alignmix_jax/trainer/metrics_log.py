"""Metric writers of a training run: JSON lines, TensorBoard event files, and on the console a tqdm
progress bar (stdout a terminal) or one plain line per logged step (a log file, as a batch job).

The event files are written with the `tensorboard` package's protos and record format alone:
training never imports TensorFlow, installed or not.

Only host 0 writes; every other host gets a writer that does nothing, so the training loop never
branches on the host index.
"""

import datetime
import itertools
import json
import os
import pathlib
import socket
import sys
import time

import tqdm
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.record_writer import RecordWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_EVENT_FILE_NUMBERS = itertools.count()


def read_metrics(workdir) -> list[dict]:
    """Every record of `workdir/metrics.jsonl`, in order ([] when the file does not exist)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    with path.open() as file:
        return [json.loads(line) for line in file if line.strip()]


class EventFile:
    """A new TensorBoard event file in `logdir`, written with plain file I/O.

    (tensorboard's own `EventFileWriter` opens files through `tf.io.gfile`, which imports
    TensorFlow whenever it is installed.)
    """

    def __init__(self, logdir):
        os.makedirs(logdir, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_EVENT_FILE_NUMBERS)}"
        )
        self._file = open(os.path.join(logdir, name), "wb")  # closed by close()
        self._records = RecordWriter(self._file)
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _scalar_event(step: int, scalars: dict[str, float]) -> event_pb2.Event:
    """One TensorBoard event holding `scalars` at `step`, stored as TF2 scalar summaries (0-d
    float32 tensors under the "scalars" plugin), built without TensorFlow."""
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
        summary.value.extend(scalar_summary.scalar_pb(tag, value).value)
    return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)


def truncate_metrics(workdir, last_step: int) -> None:
    """Drops records with `step > last_step` (work lost by a killed run that is now resumed)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return
    kept = [record for record in read_metrics(workdir) if record["step"] <= last_step]
    temporary = path.with_suffix(".tmp")
    with temporary.open("w") as file:
        file.writelines(json.dumps(record) + "\n" for record in kept)
    temporary.replace(path)


class MetricLogger:
    """Writes metric records to `metrics.jsonl` and TensorBoard, and shows the progress.

    Args:
      workdir: run directory.
      total_steps: the last step of the run.
      initial_step: step the run starts (or resumes) from.
      is_writer: False on hosts other than 0: nothing is written or shown.
      tensorboard: also write TensorBoard event files under `workdir/tensorboard` (a new file at
        the first record of each process, none for a process that writes no record).
      progress_bar: show a tqdm bar when stdout is a terminal. Otherwise (a log file, or
        progress_bar False) each `advance` prints one line: step, the values shown and the ETA.
    """

    def __init__(
        self,
        workdir,
        total_steps: int,
        initial_step: int = 0,
        *,
        is_writer: bool = True,
        tensorboard: bool = True,
        progress_bar: bool = True,
    ):
        self._is_writer = is_writer
        self._path = pathlib.Path(workdir) / METRICS_FILE
        self._tensorboard_dir = pathlib.Path(workdir) / TENSORBOARD_DIR if tensorboard else None
        self._tensorboard = None
        self._bar = None
        self._total_steps = total_steps
        self._last_advance = (initial_step, time.perf_counter())
        if not is_writer:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if progress_bar and sys.stdout.isatty():
            self._bar = tqdm.tqdm(
                total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True
            )

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one record `{"step": step, **metrics}` to metrics.jsonl and TensorBoard."""
        if not self._is_writer:
            return
        record = {"step": int(step), **{name: float(value) for name, value in metrics.items()}}
        with self._path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self._tensorboard_dir is not None:
            if self._tensorboard is None:
                self._tensorboard = EventFile(self._tensorboard_dir)
            scalars = {name: value for name, value in record.items() if name != "step"}
            self._tensorboard.add_event(_scalar_event(step, scalars))
            self._tensorboard.flush()

    def advance(self, step: int, shown: dict[str, str]) -> None:
        """Moves the progress bar to `step` showing `shown` (e.g. {"loss": "2.3012"}), or prints
        `step 30/100: loss 2.3012, ..., ETA 0:01:05` (the ETA at the pace since the last call)."""
        if not self._is_writer:
            return
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(step - self._bar.n)
            return
        last_step, last_time = self._last_advance
        now = time.perf_counter()
        self._last_advance = (step, now)
        seconds_per_step = (now - last_time) / max(step - last_step, 1)
        eta = datetime.timedelta(seconds=round(seconds_per_step * (self._total_steps - step)))
        values = "".join(f"{name} {value}, " for name, value in shown.items())
        print(f"step {step}/{self._total_steps}: {values}ETA {eta}", flush=True)

    def message(self, text: str) -> None:
        """Prints a line on host 0 without breaking the progress bar."""
        if not self._is_writer:
            return
        if self._bar is None:
            print(text, flush=True)
        else:
            self._bar.write(text)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the progress bar."""
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._bar is not None:
            self._bar.close()
