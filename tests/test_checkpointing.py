"""Checkpoints: a SIGKILLed, resumed run ends equal to an uninterrupted one; load_for_eval."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alignmix_jax import checkpointing, logging_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12
COMMAND = [
    sys.executable,
    "-m",
    "alignmix_jax.main",
    "--config=experiments/quickstart.py:smoke",
    f"--config.num_train_steps={NUM_STEPS}",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=6",
    "--config.log_every_steps=1",
    "--config.data.image_size=16",
    "--config.tensorboard=False",
    "--config.progress_bar=False",
]


def start_run(workdir: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, f"--workdir={workdir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished_checkpoints(workdir: pathlib.Path) -> list[int]:
    directory = workdir / checkpointing.CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs of an uninterrupted run and of a run SIGKILLed after its first checkpoint, then
    resumed by the same command; plus the resumed run's output."""
    root = tmp_path_factory.mktemp("kill_resume")
    plain_dir, killed_dir = root / "plain", root / "killed"
    plain = start_run(plain_dir)
    killed = start_run(killed_dir)
    deadline = time.monotonic() + 240
    while not finished_checkpoints(killed_dir):
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    killed.stdout.close()
    steps_at_kill = finished_checkpoints(killed_dir)
    assert steps_at_kill and steps_at_kill[-1] < NUM_STEPS, steps_at_kill
    output = subprocess.run(
        [*COMMAND, f"--workdir={killed_dir}"], cwd=REPO, capture_output=True, text=True
    )
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    plain_output = plain.communicate()[0]
    assert plain.returncode == 0, plain_output[-3000:]
    return {"plain": plain_dir, "killed": killed_dir, "resumed_output": output.stdout}


def test_killed_and_resumed_run_equals_uninterrupted_run(runs):
    assert "Resumed from the checkpoint at step" in runs["resumed_output"]
    _, _, plain = checkpointing.load_for_eval(runs["plain"], "last")
    _, _, resumed = checkpointing.load_for_eval(runs["killed"], "last")
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # The killed run's metrics past its last checkpoint were dropped and redone, identically.
    plain_losses = {
        r["step"]: r["train_loss"]
        for r in logging_utils.read_metrics(runs["plain"])
        if "train_loss" in r
    }
    resumed_records = [r for r in logging_utils.read_metrics(runs["killed"]) if "train_loss" in r]
    assert [r["step"] for r in resumed_records] == list(range(1, NUM_STEPS + 1))
    for record in resumed_records:
        assert record["train_loss"] == pytest.approx(plain_losses[record["step"]], abs=1e-6)
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    assert summary["steps"] == NUM_STEPS


def test_keeps_last_two_checkpoints_and_the_best(runs):
    assert finished_checkpoints(runs["plain"]) == [NUM_STEPS - 2, NUM_STEPS]
    summary = json.loads((runs["plain"] / "summary.json").read_text())
    best_steps = [e.name for e in (runs["plain"] / checkpointing.BEST_DIR).iterdir()]
    assert best_steps == [str(summary["best_step"])]
    assert summary["best_top1"] >= summary["final_top1"]
    config, model, variables = checkpointing.load_for_eval(runs["plain"], "best")
    assert config.num_train_steps == NUM_STEPS
    logits, _ = model.apply(variables, np.zeros((2, 16, 16, 1), np.float32))
    assert logits.shape == (2, 10)


def test_load_for_eval_errors_name_the_problem(runs, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        checkpointing.load_for_eval(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.json"):
        checkpointing.load_for_eval(tmp_path)
    with pytest.raises(ValueError, match="which="):
        checkpointing.load_for_eval(runs["plain"], "latest")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(runs["plain"], mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["model"]["base_width"] = 4
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model"):
        checkpointing.load_for_eval(mismatched, "last")
    shutil.rmtree(mismatched / checkpointing.BEST_DIR)
    with pytest.raises(ValueError, match="best/"):
        checkpointing.load_for_eval(mismatched, "best")


def test_config_json_round_trips(runs):
    config = checkpointing.load_config(runs["plain"])
    assert config.model.stage_sizes == (1, 1, 1, 1)
    assert config.mix.method == "alignmixup"
    assert os.path.exists(runs["plain"] / logging_utils.METRICS_FILE)
