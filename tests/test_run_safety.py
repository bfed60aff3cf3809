"""What a run does when things go wrong: a diverging loss, a resume with another config, a workdir
that cannot be written, a signal; and what it logs and reports: mixing switched off after an epoch,
the alignment, a validation split."""

import json
import math
import os
import signal

import jax
import numpy as np
import pytest
from helpers import smoke_config

from alignmix_jax import data
from alignmix_jax.core import method
from alignmix_jax.trainer import (
    checkpointing,
    divergence,
    metrics_log,
    run_config,
    run_directory,
    stop_signals,
    train,
    trained_run,
)

DIGITS_STEPS_PER_EPOCH = 1437 // 16


def test_a_diverging_run_stops_at_the_step_before_saving_it(tmp_path):
    config = smoke_config(6, **{"optimizer.learning_rate": 1e8, "optimizer.schedule": "constant"})
    with pytest.raises(divergence.TrainingDivergedError) as raised:
        train.train_and_evaluate(config, tmp_path)
    message = str(raised.value)
    step = int(message.split("training diverged at step ")[1].split(":")[0])
    assert 1 <= step <= 6
    assert "learning rate 1e+08" in message and "loss nan" in message.lower()
    checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == list(range(1, step))  # nothing from the diverged step on
    if checkpoints:
        assert f"the last good checkpoint is step {checkpoints[-1]} in" in message
        variables = trained_run.load_for_eval(tmp_path, "last").variables
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))
    else:
        assert "no checkpoint was written yet" in message
    assert not (tmp_path / train.SUMMARY_FILE).exists()


def test_the_divergence_check_can_be_turned_off(tmp_path):
    config = smoke_config(4, **{"optimizer.learning_rate": 1e8, "stop_on_divergence": False})
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == 4
    losses = [r["train_loss"] for r in metrics_log.read_metrics(tmp_path) if "train_loss" in r]
    assert not all(math.isfinite(loss) for loss in losses)


def test_resuming_with_another_config_is_refused_unless_accepted(tmp_path):
    train.train_and_evaluate(smoke_config(2), tmp_path)
    changed = smoke_config(4, **{"optimizer.learning_rate": 0.05, "progress_bar": True})
    changed.eval_every_steps = 2  # where and how often: not a change of the run
    with pytest.raises(run_config.ConfigChangedError) as raised:
        train.train_and_evaluate(changed, tmp_path)
    message = str(raised.value)
    assert "trained to step 2" in message and "--accept_config_changes" in message
    assert "num_train_steps: 2 -> 4" in message
    assert "optimizer.learning_rate: 0.1 -> 0.05" in message
    assert "progress_bar" not in message and "eval_every_steps" not in message
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 2

    summary = train.train_and_evaluate(changed, tmp_path, accept_config_changes=True)
    assert summary["steps"] == 4
    (record,) = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").open()]
    assert record == {
        "step": 2,
        "changes": {"num_train_steps": [2, 4], "optimizer.learning_rate": [0.1, 0.05]},
    }
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.05


def test_a_workdir_that_cannot_be_written_is_named(tmp_path):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    with pytest.raises(ValueError, match=r"workdir='.*file' is a file; expected a directory"):
        run_directory.prepare(in_the_way)
    with pytest.raises(ValueError, match=r"workdir='.*file/run' cannot be written: "):
        run_directory.prepare(in_the_way / "run")
    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        with pytest.raises(ValueError, match="cannot be written: Permission denied"):
            run_directory.prepare(read_only)
    assert run_directory.prepare(tmp_path / "new" / "run").is_dir()


def test_mixing_stops_after_its_epoch_and_the_alignment_is_logged(tmp_path):
    off_after = 4
    config = smoke_config(8, **{"mix.off_after_epoch": off_after / DIGITS_STEPS_PER_EPOCH})
    config.tensorboard = True
    train.train_and_evaluate(config, tmp_path)
    records = [r for r in metrics_log.read_metrics(tmp_path) if "train_loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))
    for record in records:
        if record["step"] > off_after:
            assert record["lam"] == 1.0 and record["aligned_fraction"] == 0.0
        assert record["aligned_fraction"] in (0.0, 1.0)  # one step per record
        if record["aligned_fraction"] == 1.0:
            assert 0.0 <= record["plan_marginal_l1"] <= 2.0
            assert 1.0 / 64 <= record["plan_row_max"] <= 1.0 + 1e-6  # the 8x8 map: 64 positions
            assert 1.0 / 64 <= record["plan_column_coverage"] <= 1.0
            assert record["feature_norm"] > 0.0
        else:
            assert not set(method.DIAGNOSTICS[1:]) & set(record)
    assert any(r["lam"] < 1.0 for r in records[:off_after])
    assert any(r["aligned_fraction"] == 1.0 for r in records[:off_after])


def test_sigint_and_sigterm_ask_the_loop_to_stop_after_the_step():
    for signum in (signal.SIGINT, signal.SIGTERM):
        with stop_signals.StopSignals() as signals:
            assert not signals.should_stop(1)
            os.kill(os.getpid(), signum)
            assert signals.should_stop(2) and signals.received == signal.Signals(signum).name
        assert signal.getsignal(signum) is not signals._handle  # the previous handler is back
    with stop_signals.StopSignals(), pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: stop at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_dataset_that_cannot_be_prepared_leaves_no_workdir(tmp_path):
    config = smoke_config(1)
    config.data = data.default_data_config("image_folder", path=str(tmp_path / "missing"))
    with pytest.raises(data.DataUnavailableError, match="data.path: .*missing' does not exist"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_validation_split_selects_the_best_weights_and_is_summarised(tmp_path):
    config = smoke_config(6, **{
        "data.train_split": "train[:1200](stratified)",
        "data.validation_split": "train[1200:](stratified)",
        "eval_every_steps": 2,
    })
    summary = train.train_and_evaluate(config, tmp_path)
    records = [r for r in metrics_log.read_metrics(tmp_path) if "eval_top1" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    validation = [r["validation_top1"] for r in records]
    test = [r["eval_top1"] for r in records]
    best = max(range(3), key=lambda k: (validation[k], -k))  # the first of equal bests
    assert summary["selected_on"] == "validation"
    assert summary["validation"]["best_top1"] == validation[best]
    assert summary["validation"]["best_step"] == records[best]["step"]
    assert summary["test_top1_at_best_validation"] == test[best]
    assert summary["best_top1"] == max(test) and summary["final_top1"] == test[-1]
    assert summary["median_last_top1"] == sorted(test)[1]
    best_dirs = [int(p.name) for p in (tmp_path / checkpointing.BEST_DIR).iterdir()]
    assert best_dirs == [records[best]["step"]]  # best/ holds the validation-selected weights
