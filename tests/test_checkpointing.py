"""Checkpoints: a SIGKILLed, resumed run ends equal to an uninterrupted one; load_for_eval; a run
saved on 8 devices loads for evaluation on 1 device and resumes training on 4."""

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

from alignmix_jax import (
    checkpointing,
    data,
    experiment_config,
    logging_utils,
    models,
    parallel,
    train,
)

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


SAVED_STEP = 5
RESUMED_DEVICES = 4
LOAD_ON_ONE_DEVICE = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 1)
import numpy as np
from alignmix_jax import checkpointing
assert jax.device_count() == 1, jax.devices()
workdir, out = sys.argv[1], sys.argv[2]
arrays = {}
for which in checkpointing.CHECKPOINT_WHICH:
    _, _, variables = checkpointing.load_for_eval(workdir, which)
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        assert len(leaf.sharding.device_set) == 1, leaf.sharding
        arrays[which + jax.tree_util.keystr(path)] = np.asarray(leaf)
np.savez(out, **arrays)
"""


def smoke_config():
    config = experiment_config.load_config(str(REPO / "experiments" / "quickstart.py") + ":smoke")
    config.data.image_size = 16
    config.num_train_steps = SAVED_STEP + 1
    config.eval_every_steps = SAVED_STEP + 1
    config.checkpoint_every_steps = 1
    config.log_every_steps = 1
    config.tensorboard = False
    config.progress_bar = False
    return config


def flat_arrays(tree, prefix: str = "") -> dict[str, np.ndarray]:
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory):
    """A workdir whose training and best checkpoints hold a state replicated on an 8-device mesh
    at step SAVED_STEP (params moved away from the init), written by RunCheckpointer; plus that
    state."""
    workdir = tmp_path_factory.mktemp("eight_devices") / "run"
    config = smoke_config()
    mesh = parallel.make_data_mesh()
    assert mesh.size == 8
    info = data.get_dataset_info(config.data)
    model = models.build_model(config.model, info.num_classes, axis_name=parallel.DATA_AXIS)
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)
    learning_rate_fn = train.create_learning_rate_fn(
        config.optimizer, steps_per_epoch, config.num_train_steps
    )
    optimizer = train.create_optimizer(config.optimizer, learning_rate_fn)
    state = train.create_train_state(model, optimizer, tuple(info.image_shape), 0, mesh)
    state = state.replace(
        step=state.step + SAVED_STEP,
        params=jax.tree.map(lambda leaf: leaf + 0.25, state.params),
        batch_stats=jax.tree.map(lambda leaf: leaf * 1.5 + 0.5, state.batch_stats),
    )
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(state))
    checkpointing.save_config(config, workdir)
    checkpointer = checkpointing.RunCheckpointer(workdir)
    meta = {"best_top1": 10.0, "best_top5": 50.0, "best_step": SAVED_STEP, "last_eval": None}
    checkpointer.save(SAVED_STEP, state, meta)
    checkpointer.save_best(SAVED_STEP, state.params, state.batch_stats, {"top1": 10.0})
    checkpointer.close()
    return {"workdir": workdir, "config": config, "state": jax.device_get(state)}


def test_run_saved_on_8_devices_loads_for_eval_on_1_device(eight_device_run, tmp_path):
    state = eight_device_run["state"]
    saved = flat_arrays({"params": state.params, "batch_stats": state.batch_stats})
    out = tmp_path / "variables.npz"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ON_ONE_DEVICE, str(eight_device_run["workdir"]), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = np.load(out)
    for which in checkpointing.CHECKPOINT_WHICH:
        for name, value in saved.items():
            np.testing.assert_array_equal(loaded[which + name], value)
    assert len(loaded.files) == 2 * len(saved)


def test_load_for_eval_replicates_on_the_current_mesh(eight_device_run):
    _, _, variables = checkpointing.load_for_eval(eight_device_run["workdir"], "last")
    state = eight_device_run["state"]
    expected = flat_arrays({"params": state.params, "batch_stats": state.batch_stats})
    assert flat_arrays(variables).keys() == expected.keys()
    for name, value in flat_arrays(variables).items():
        np.testing.assert_array_equal(value, expected[name])
    for leaf in jax.tree.leaves(variables):
        assert leaf.sharding.is_equivalent_to(
            parallel.replicated_sharding(parallel.make_data_mesh()), leaf.ndim
        )


def test_restore_needs_shardings(eight_device_run):
    checkpointer = checkpointing.RunCheckpointer(eight_device_run["workdir"])
    unsharded = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), eight_device_run["state"]
    )
    with pytest.raises(ValueError, match="abstract_state has leaves without a sharding"):
        checkpointer.restore(unsharded)
    checkpointer.close()


def test_run_trained_on_8_devices_resumes_on_4(eight_device_run, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    shutil.copytree(eight_device_run["workdir"], workdir)
    make_data_mesh = parallel.make_data_mesh
    monkeypatch.setattr(
        parallel, "make_data_mesh", lambda: make_data_mesh(jax.devices()[:RESUMED_DEVICES])
    )
    first_states, first_device_counts = [], []
    make_train_step = train.make_train_step

    def recording_make_train_step(*args, **kwargs):
        step_fn = make_train_step(*args, **kwargs)

        def recording_step(state, batch, key):
            if not first_states:  # a host copy: the step donates `state`
                first_states.append(jax.device_get(state))
                first_device_counts.extend(
                    len(leaf.sharding.device_set) for leaf in jax.tree.leaves(state)
                )
            return step_fn(state, batch, key)

        return recording_step

    monkeypatch.setattr(train, "make_train_step", recording_make_train_step)
    summary = train.train_and_evaluate(eight_device_run["config"], workdir)

    (resumed,) = first_states
    saved = eight_device_run["state"]
    assert int(resumed.step) == SAVED_STEP
    resumed_arrays = flat_arrays(resumed)
    for name, value in flat_arrays(saved).items():
        np.testing.assert_array_equal(resumed_arrays[name], value)
    assert set(first_device_counts) == {RESUMED_DEVICES}
    assert summary["steps"] == SAVED_STEP + 1
    assert finished_checkpoints(workdir) == [SAVED_STEP, SAVED_STEP + 1]
    records = [r for r in logging_utils.read_metrics(workdir) if "train_loss" in r]
    assert [r["step"] for r in records] == [SAVED_STEP + 1]
    assert np.isfinite(records[0]["train_loss"])
    _, _, after = checkpointing.load_for_eval(workdir, "last")
    after_params, saved_params = jax.tree.leaves(after["params"]), jax.tree.leaves(saved.params)
    assert not all(np.array_equal(a, b) for a, b in zip(after_params, saved_params, strict=True))
