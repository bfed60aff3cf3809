"""Metric writers of a training run: JSON lines, TensorBoard event files and a tqdm progress bar.

The event files are written with the `tensorboard` package's protos and record format alone:
training never imports TensorFlow, installed or not.

Only host 0 writes; every other host gets a writer that does nothing, so the training loop never
branches on the host index.
"""

import itertools
import json
import os
import pathlib
import socket
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
    """Writes metric records to `metrics.jsonl` and TensorBoard, and drives the progress bar.

    Args:
      workdir: run directory.
      total_steps: length of the progress bar.
      initial_step: step the run starts (or resumes) from.
      is_writer: False on hosts other than 0: nothing is written or shown.
      tensorboard: also write TensorBoard event files under `workdir/tensorboard`.
      progress_bar: show a tqdm bar with loss, lr, images/s and ETA.
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
        self._tensorboard = None
        self._bar = None
        if not is_writer:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            self._tensorboard = EventFile(pathlib.Path(workdir) / TENSORBOARD_DIR)
        if progress_bar:
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
        if self._tensorboard is not None:
            scalars = {name: value for name, value in record.items() if name != "step"}
            self._tensorboard.add_event(_scalar_event(step, scalars))
            self._tensorboard.flush()

    def advance(self, step: int, postfix: dict[str, str] | None = None) -> None:
        """Moves the progress bar to `step` and shows `postfix` (e.g. loss, lr, img/s)."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

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
