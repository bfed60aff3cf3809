"""MetricLogger: metrics.jsonl and the TensorBoard events hold the same records; host 0 writes."""

import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alignmix_jax.trainer import metrics_log

# Values exact in float32 (TensorBoard stores float32), so the read-back compares exactly.
RECORDS = {
    2: {"train_loss": 2.25, "learning_rate": 0.125},
    4: {"train_loss": 1.5, "eval_top1": 37.5},
}


def read_scalars(workdir) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under `workdir/tensorboard`: {tag: {step: value}}."""
    events = event_accumulator.EventAccumulator(str(workdir / metrics_log.TENSORBOARD_DIR))
    events.Reload()
    return {
        tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
        for tag in events.Tags()["tensors"]
    }


def write_records(workdir, **options):
    logger = metrics_log.MetricLogger(workdir, total_steps=4, progress_bar=False, **options)
    for step, metrics in RECORDS.items():
        logger.write(step, metrics)
    logger.close()


def test_event_files_hold_the_records_of_metrics_jsonl(tmp_path):
    write_records(tmp_path)
    records = metrics_log.read_metrics(tmp_path)
    assert records == [{"step": step, **metrics} for step, metrics in RECORDS.items()]
    expected = {}
    for step, metrics in RECORDS.items():
        for tag, value in metrics.items():
            expected.setdefault(tag, {})[step] = value
    assert read_scalars(tmp_path) == expected


def test_resumed_run_appends_a_new_event_file_and_truncates_lost_records(tmp_path):
    write_records(tmp_path)
    metrics_log.truncate_metrics(tmp_path, last_step=2)
    assert [r["step"] for r in metrics_log.read_metrics(tmp_path)] == [2]
    logger = metrics_log.MetricLogger(tmp_path, 4, initial_step=2, progress_bar=False)
    logger.write(4, {"train_loss": 1.25})
    logger.close()
    assert [r["train_loss"] for r in metrics_log.read_metrics(tmp_path)] == [2.25, 1.25]
    assert len(list((tmp_path / metrics_log.TENSORBOARD_DIR).iterdir())) == 2
    # A process that writes no record (the rerun of a finished run) adds no event file.
    metrics_log.MetricLogger(tmp_path, 4, initial_step=4, progress_bar=False).close()
    assert len(list((tmp_path / metrics_log.TENSORBOARD_DIR).iterdir())) == 2


def test_without_a_terminal_each_logged_step_is_one_plain_line(tmp_path, capsys):
    """stdout is not a terminal here (pytest captures it): no tqdm bar even when one is asked for,
    one line per step with the ETA at the pace so far instead."""
    logger = metrics_log.MetricLogger(tmp_path, 10, initial_step=2, progress_bar=True)
    logger._last_advance = (2, metrics_log.time.perf_counter() - 8.0)  # 4 s per step so far
    logger.advance(4, {"loss": "2.2500", "lr": "0.1"})
    logger.close()
    assert capsys.readouterr().out == "step 4/10: loss 2.2500, lr 0.1, ETA 0:00:24\n"


def test_other_hosts_and_disabled_tensorboard_write_nothing(tmp_path):
    write_records(tmp_path / "host1", is_writer=False)
    assert not (tmp_path / "host1").exists()
    write_records(tmp_path / "plain", tensorboard=False)
    assert len(metrics_log.read_metrics(tmp_path / "plain")) == len(RECORDS)
    assert not (tmp_path / "plain" / metrics_log.TENSORBOARD_DIR).exists()


def test_writing_events_never_imports_tensorflow_even_when_installed(tmp_path):
    """tensorboard's own writers open files through `tf.io.gfile` (importing TensorFlow when it
    is installed, seconds and gigabytes); the logger must not."""
    code = (
        "import sys\n"
        "from alignmix_jax.trainer import metrics_log, train\n"
        f"logger = metrics_log.MetricLogger({str(tmp_path)!r}, 1, progress_bar=False)\n"
        "logger.write(1, {'train_loss': 1.0})\n"
        "logger.close()\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'tensorflow'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[]"
    assert read_scalars(tmp_path) == {"train_loss": {1: 1.0}}
