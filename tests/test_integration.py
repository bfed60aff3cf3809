"""End-to-end training: the quickstart smoke on 8 devices; a command-line run that profiles steps
and fills its compilation cache; a short real Fashion-MNIST run."""

import json
import os
import pathlib

import cli_runs
import jax
import pytest
from conftest import QUICK_COMPILE_FLAGS
from helpers import smoke_config
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alignmix_jax.trainer import (
    compilation_cache,
    metrics_log,
    parallel,
    profiling,
    train,
)

FASHION_MNIST_STEPS = 120
FASHION_MNIST_MIN_TOP1 = 65.0


def test_quickstart_smoke_trains_on_eight_devices_and_writes_its_workdir(tmp_path):
    config = smoke_config(tensorboard=True)
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == config.num_train_steps == 4
    assert set(summary) >= {"final_top1", "final_top5", "best_top1", "best_step", "images_per_sec"}
    assert 0.0 <= summary["final_top1"] <= summary["best_top1"] <= 100.0
    assert summary["final_top5"] >= summary["final_top1"]
    assert summary["images_per_sec"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    records = metrics_log.read_metrics(tmp_path)
    assert [r["step"] for r in records if "train_loss" in r] == [2, 4]
    assert [r["eval_top1"] for r in records if "eval_top1" in r] == [summary["final_top1"]]
    for record in (r for r in records if "train_loss" in r):
        assert record["learning_rate"] > 0 and record["images_per_sec"] > 0
        assert record["step_sec"] > record["input_wait_sec"] >= 0.0  # the device step is the rest
        assert record["images_per_sec_per_device"] == pytest.approx(record["images_per_sec"] / 8)
        assert "device_peak_memory_gib" not in record  # the CPU reports no memory statistics
    events = event_accumulator.EventAccumulator(str(tmp_path / metrics_log.TENSORBOARD_DIR))
    events.Reload()

    def scalars(tag):  # TF2 summaries store scalars as tensor events: {step: value}
        return {
            event.step: float(tensor_util.make_ndarray(event.tensor_proto))
            for event in events.Tensors(tag)
        }

    train_losses = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    assert scalars("train_loss") == pytest.approx(train_losses)
    assert scalars("eval_top1") == pytest.approx({4: summary["final_top1"]})
    assert json.loads((tmp_path / "config.json").read_text())["mix"]["method"] == "alignmixup"
    # The logged learning rate is the rate of the logged step (cosine decay over 4 steps).
    learning_rate_fn = train.build_training(config, parallel.make_data_mesh()).learning_rate_fn
    logged = {r["step"]: r["learning_rate"] for r in records if "train_loss" in r}
    assert logged == pytest.approx({step: float(learning_rate_fn(step - 1)) for step in (2, 4)})
    # Rerunning the finished run resumes at its end and reports the same result; its wall time
    # adds to the run's, and it writes no event file.
    rerun = train.train_and_evaluate(config, tmp_path)
    assert rerun["final_top1"] == summary["final_top1"]
    assert summary["wall_time_sec"] == summary["process_wall_time_sec"]
    assert rerun["wall_time_sec"] > rerun["process_wall_time_sec"] + 0.5 * summary["wall_time_sec"]
    assert len(list((tmp_path / metrics_log.TENSORBOARD_DIR).iterdir())) == 1


def test_a_run_profiles_its_steps_and_fills_its_compilation_cache(tmp_path):
    cache, workdir = tmp_path / "xla", tmp_path / "run"
    output = cli_runs.run(
        ["--config=experiments/quickstart.py:smoke", f"--workdir={workdir}",
         "--config.data.image_size=16", "--config.profile_steps=(2, 3)",
         f"--config.compilation_cache_dir={cache}"],
        tmp_path / "run.log", deadline_sec=300,
    )
    assert f"Compilation cache: {cache}\n" in output
    assert list(cache.glob("jit_per_device_step-*"))  # the train step, for the next process
    (session,) = (workdir / profiling.PROFILE_DIR / "plugins" / "profile").iterdir()
    assert list(session.glob("*.xplane.pb")) and (session / "perfetto_trace.json.gz").exists()
    summary = json.loads((workdir / train.SUMMARY_FILE).read_text())
    assert 0 < summary["process_first_step_sec"] < summary["process_wall_time_sec"]


def test_the_compilation_cache_setting(monkeypatch):
    """None keeps JAX's own directory (here the suite's), "" turns the cache off, a path moves it;
    each change resets JAX's cache, which reads its settings once."""
    suite_cache = jax.config.jax_compilation_cache_dir
    resets = []
    monkeypatch.setattr(compilation_cache.compilation_cache, "reset_cache",
                        lambda: resets.append(jax.config.jax_compilation_cache_dir))
    try:
        assert compilation_cache.use_compilation_cache(None) == suite_cache and not resets
        assert compilation_cache.use_compilation_cache("") is None
        assert not jax.config.jax_enable_compilation_cache
        assert compilation_cache.use_compilation_cache("~/elsewhere") == str(
            pathlib.Path.home() / "elsewhere"
        )
        assert jax.config.jax_enable_compilation_cache and len(resets) == 2
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", suite_cache)


@pytest.mark.slow
def test_fashion_mnist_short_run_reaches_stated_accuracy(shared_data, tmp_path):
    """A real dataset learned (69.9-70.0% measured): the shipped Fashion-MNIST config at width 8,
    as a command-line run compiled with XLA's usual optimisations (the suite's quick compiles
    make its 120 steps five times slower), on one device: on 8 simulated devices its hundreds of
    collectives were where XLA's 40 s collective abort struck under load; 8 devices are checked
    step by step elsewhere."""
    workdir = tmp_path / "run"
    cli_runs.run(
        ["--config=experiments/fashion_mnist_preactresnet18.py", f"--workdir={workdir}",
         f"--config.data.manual_dir={shared_data / 'fashion_mnist'}",
         "--config.model.base_width=8", f"--config.num_train_steps={FASHION_MNIST_STEPS}",
         f"--config.eval_every_steps={FASHION_MNIST_STEPS}", "--config.tensorboard=False",
         "--config.progress_bar=False"],
        tmp_path / "run.log", deadline_sec=600,
        XLA_FLAGS=os.environ["XLA_FLAGS"].replace(QUICK_COMPILE_FLAGS, ""),
    )
    summary = json.loads((workdir / train.SUMMARY_FILE).read_text())
    assert summary["steps"] == FASHION_MNIST_STEPS
    assert summary["final_top1"] >= FASHION_MNIST_MIN_TOP1, summary
