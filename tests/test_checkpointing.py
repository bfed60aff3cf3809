"""Checkpoints: runs killed (SIGKILL after a best-weights save and a later eval) or stopped (SIGTERM
between checkpoints), then resumed, end equal to an uninterrupted run, best weights included;
RunCheckpointer's best-weights pruning and meta snapshots; load_for_eval; a run saved on 8 devices
loads for evaluation on 1 device and resumes training on 4."""

import json
import logging
import pathlib
import shutil
import signal
import subprocess
import sys

import cli_hooks
import cli_runs
import jax
import numpy as np
import pytest
from helpers import smoke_config

from alignmix_jax.trainer import (
    checkpointing,
    metrics_log,
    parallel,
    run_config,
    run_summary,
    train,
    trained_run,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 16
CHECKPOINT_EVERY = 4
SIGTERM_STEP = 6  # between the checkpoints at 4 and 8
DEADLINE_SEC = 600
ARGS = [
    "--config=experiments/quickstart.py:smoke",
    f"--config.num_train_steps={NUM_STEPS}",
    f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
    "--config.keep_checkpoints=10",
    "--config.eval_every_steps=1",
    "--config.log_every_steps=1",
    "--config.data.image_size=16",
    "--config.tensorboard=False",
]


def finished_checkpoints(workdir: pathlib.Path, which: str = checkpointing.CHECKPOINT_DIR):
    directory = workdir / which
    if not directory.is_dir():
        return []
    return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run ("plain"); a run SIGKILLed after a best-weights save and a later eval
    ("killed"); a run sent SIGTERM after step SIGTERM_STEP ("stopped"); each interrupted run is
    then resumed by the same command. Returns the workdirs and the outputs."""
    root = tmp_path_factory.mktemp("interrupted")
    workdirs = {name: root / name for name in ("plain", "killed", "stopped")}
    launched = {
        "plain": cli_runs.start([*ARGS, f"--workdir={workdirs['plain']}"], root / "plain.log"),
        "killed": cli_runs.start(
            [*ARGS, f"--workdir={workdirs['killed']}"], root / "killed.log",
            **{cli_hooks.KILL_ENV: "1"},
        ),
        "stopped": cli_runs.start(
            [*ARGS, f"--workdir={workdirs['stopped']}"], root / "stopped.log",
            **{cli_hooks.SIGNAL_ENV: f"SIGTERM:{SIGTERM_STEP}"},
        ),
    }
    outputs = cli_runs.finish({"plain": launched.pop("plain")}, DEADLINE_SEC)
    outputs |= cli_runs.finish({"killed": launched.pop("killed")}, DEADLINE_SEC, -signal.SIGKILL)
    outputs |= cli_runs.finish(launched, DEADLINE_SEC, 128 + signal.SIGTERM)
    at_interruption = {
        name: {
            "checkpoints": finished_checkpoints(workdirs[name]),
            "best": finished_checkpoints(workdirs[name], checkpointing.BEST_DIR),
            "summary": (workdirs[name] / "summary.json").exists(),
        }
        for name in ("killed", "stopped")
    }
    resumed = {
        f"{name}_resumed": cli_runs.start(
            [*ARGS, f"--workdir={workdirs[name]}"], root / f"{name}_resumed.log"
        )
        for name in ("killed", "stopped")
    }
    outputs |= cli_runs.finish(resumed, DEADLINE_SEC)
    return {"workdirs": workdirs, "outputs": outputs, "at_interruption": at_interruption}


def checkpoint_meta(workdir: pathlib.Path, step: int) -> dict:
    meta = json.loads((workdir / checkpointing.CHECKPOINT_DIR / str(step) / "meta" /
                       "metadata").read_text())
    meta.pop("images_per_sec"), meta.pop("wall_time_sec")
    return meta


def best_weights(workdir):
    return trained_run.load_for_eval(workdir, "best").variables


@pytest.mark.parametrize("interrupted", ["killed", "stopped"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(runs, interrupted):
    plain, resumed = runs["workdirs"]["plain"], runs["workdirs"][interrupted]
    assert "Resumed from the checkpoint at step " in runs["outputs"][f"{interrupted}_resumed"]
    plain_last = trained_run.load_for_eval(plain, "last").variables
    resumed_last = trained_run.load_for_eval(resumed, "last").variables
    # One device, the same program and the same inputs: the same reduction order, so a resume is
    # exact to the bit (nothing here may differ by rounding).
    for a, b in zip(jax.tree.leaves(plain_last), jax.tree.leaves(resumed_last), strict=True):
        np.testing.assert_array_equal(a, b)
    # best/: the same step and weights; summary.json and every checkpoint's meta the same.
    assert finished_checkpoints(resumed, "best") == finished_checkpoints(plain, "best")
    for a, b in zip(jax.tree.leaves(best_weights(plain)), jax.tree.leaves(best_weights(resumed)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    summaries = [json.loads((w / "summary.json").read_text()) for w in (plain, resumed)]
    for summary in summaries:  # all but the timings
        for timing in ("images_per_sec", "wall_time_sec", "process_wall_time_sec",
                       "process_first_step_sec"):
            del summary[timing]
    assert summaries[0] == summaries[1]
    expected_steps = list(range(CHECKPOINT_EVERY, NUM_STEPS + 1, CHECKPOINT_EVERY))
    assert finished_checkpoints(plain) == expected_steps
    extra = [SIGTERM_STEP] if interrupted == "stopped" else []
    assert finished_checkpoints(resumed) == sorted(expected_steps + extra)
    for step in expected_steps:
        assert checkpoint_meta(resumed, step) == checkpoint_meta(plain, step), step
    # The killed or stopped run's metrics past its last checkpoint were dropped and redone.
    plain_losses = {
        r["step"]: r["train_loss"] for r in metrics_log.read_metrics(plain) if "train_loss" in r
    }
    records = [r for r in metrics_log.read_metrics(resumed) if "train_loss" in r]
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    for record in records:
        assert record["train_loss"] == plain_losses[record["step"]]


def test_a_log_file_starts_with_the_banner_and_gets_one_plain_line_per_logged_step(runs):
    """The runs log to a file (no terminal), with the default progress_bar=True: no tqdm bar."""
    output = runs["outputs"]["plain"]
    lines = output.splitlines()
    start = [line.startswith("New run in ") for line in lines].index(True)
    banner = lines[start : start + 5]
    assert banner == [
        f"New run in {runs['workdirs']['plain']}",
        "Data: digits from scikit-learn's bundled copy; 1437 training and 360 eval images, "
        "16x16x1, 10 classes",
        banner[2],  # the parameter count
        "Devices: 1 x cpu on 1 host(s); batch 16 (16 per device)",
        f"Steps: {NUM_STEPS}, 0.18 epochs of 89 steps",
    ]
    assert banner[2].startswith("Model: preact_resnet18, 0.0") and banner[2].endswith(
        " M parameters, computing in float32; method alignmixup"
    )
    resumed = runs["outputs"]["stopped_resumed"]
    assert f"Resumed from the checkpoint at step 6 in {runs['workdirs']['stopped']}\n" in resumed
    assert "\r" not in output
    lines = [line for line in output.splitlines() if line.startswith("step ") and "loss" in line]
    assert [line.split(":")[0] for line in lines] == [
        f"step {step}/{NUM_STEPS}" for step in range(1, NUM_STEPS + 1)
    ]
    assert all(", lr " in line and ", images/s " in line and ", ETA " in line for line in lines)


def test_the_kill_came_after_a_best_save_and_a_later_eval(runs):
    state = runs["at_interruption"]["killed"]
    assert "test hook: SIGKILL after the eval of step" in runs["outputs"]["killed"]
    killed_at = int(runs["outputs"]["killed"].split("eval of step ")[1].split()[0])
    assert state["checkpoints"] and state["best"]
    assert state["checkpoints"][-1] < state["best"][-1] < killed_at
    assert killed_at < NUM_STEPS


def test_sigterm_stops_after_the_step_with_a_checkpoint_there(runs):
    state = runs["at_interruption"]["stopped"]
    assert state["checkpoints"][-1] == SIGTERM_STEP
    output = runs["outputs"]["stopped"]
    assert f"SIGTERM: stopped after step {SIGTERM_STEP} and wrote its checkpoint" in output
    assert "rerun the same command to resume" in output
    assert not state["summary"]  # a stopped run is not a finished one (sweeps rely on it)


def test_keeps_the_best_and_the_checkpoints_asked_for(runs):
    plain = runs["workdirs"]["plain"]
    summary = json.loads((plain / "summary.json").read_text())
    assert finished_checkpoints(plain, "best") == [summary["best_step"]]
    assert summary["best_top1"] >= summary["final_top1"]
    config, model, variables, _ = trained_run.load_for_eval(plain, "best")
    assert config.num_train_steps == NUM_STEPS
    logits, _ = model.apply(variables, np.zeros((2, 16, 16, 1), np.float32))
    assert logits.shape == (2, 10)


def test_load_for_eval_errors_name_the_problem(runs, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        trained_run.load_for_eval(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.json"):
        trained_run.load_for_eval(tmp_path)
    with pytest.raises(ValueError, match="checkpoint=.latest. is invalid"):
        trained_run.load_for_eval(runs["workdirs"]["plain"], "latest")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(runs["workdirs"]["plain"], mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["model"]["base_width"] = 4
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the model"):
        trained_run.load_for_eval(mismatched, "last")
    shutil.rmtree(mismatched / checkpointing.BEST_DIR)
    with pytest.raises(ValueError, match="best/"):
        trained_run.load_for_eval(mismatched, "best")


def test_config_json_round_trips(runs):
    config = run_config.read(runs["workdirs"]["plain"])
    assert config.model.stage_sizes == (1, 1, 1, 1)
    assert config.mix.method == "alignmixup"
    assert (runs["workdirs"]["plain"] / metrics_log.METRICS_FILE).exists()


SAVED_STEP = 5
RESUMED_DEVICES = 4
LOAD_ON_ONE_DEVICE = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 1)
import numpy as np
from alignmix_jax.trainer import checkpointing, trained_run
assert jax.device_count() == 1, jax.devices()
workdir, out = sys.argv[1], sys.argv[2]
arrays = {}
for which in checkpointing.CHECKPOINT_WHICH:
    variables = trained_run.load_for_eval(workdir, which).variables
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        assert len(leaf.sharding.device_set) == 1, leaf.sharding
        arrays[which + jax.tree_util.keystr(path)] = np.asarray(leaf)
np.savez(out, **arrays)
"""


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
    config = smoke_config(SAVED_STEP + 1)
    mesh = parallel.make_data_mesh()
    assert mesh.size == 8
    state = train.build_training(config, mesh).initial_state()
    state = state.replace(
        step=state.step + SAVED_STEP,
        params=jax.tree.map(lambda leaf: leaf + 0.25, state.params),
        batch_stats=jax.tree.map(lambda leaf: leaf * 1.5 + 0.5, state.batch_stats),
    )
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(state))
    run_config.save(config, workdir)
    checkpointer = checkpointing.RunCheckpointer(workdir)
    meta = run_summary.new_run_record()
    run_summary.record_eval(meta, SAVED_STEP, {"test": {"top1": 10.0, "top5": 50.0}}, keep=10)
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


def test_load_for_eval_replicates_on_the_current_mesh_without_warnings(eight_device_run, caplog):
    with caplog.at_level(logging.WARNING):
        variables = trained_run.load_for_eval(eight_device_run["workdir"], "last").variables
    assert not [record.getMessage() for record in caplog.records]  # e.g. orbax's read_only notes
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
    records = [r for r in metrics_log.read_metrics(workdir) if "train_loss" in r]
    assert [r["step"] for r in records] == [SAVED_STEP + 1]
    assert np.isfinite(records[0]["train_loss"])
    after = trained_run.load_for_eval(workdir, "last").variables
    after_params, saved_params = jax.tree.leaves(after["params"]), jax.tree.leaves(saved.params)
    assert not all(np.array_equal(a, b) for a, b in zip(after_params, saved_params, strict=True))


def shifted(state, offset: float, step: int):
    """`state` at `step` with every parameter moved by `offset`, on one device."""
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    moved = state.replace(
        step=np.int32(step), params=jax.tree.map(lambda leaf: leaf + offset, state.params)
    )
    return parallel.replicate(moved, mesh)


def test_best_weights_follow_the_lineage_of_a_resumed_run(eight_device_run, tmp_path):
    """A run checkpoints at step 2 (best so far: step 2), finds a new best at step 5 and is killed
    before its next checkpoint. Resumed from step 2, it goes another way and finds its best at step
    4: best/ must end with step 4's weights, not the abandoned run's step 5."""
    state = eight_device_run["state"]
    first = checkpointing.RunCheckpointer(tmp_path)
    first.save_best(2, shifted(state, 2.0, 2).params, state.batch_stats, {"top1": 20.0})
    first.save(2, shifted(state, 2.0, 2), {"best_top1": 20.0, "best_step": 2})
    first.save_best(5, shifted(state, 5.0, 5).params, state.batch_stats, {"top1": 50.0})
    first.close()  # killed: no checkpoint records the best at step 5
    assert first.best_steps() == [2, 5]

    resumed = checkpointing.RunCheckpointer(tmp_path)
    _, meta = resumed.restore(train.abstract_state(shifted(state, 0.0, 2)))
    assert meta["best_step"] == 2
    assert resumed.best_steps() == [2]  # the abandoned lineage's best is gone
    resumed.save_best(4, shifted(state, 4.0, 4).params, state.batch_stats, {"top1": 40.0})
    assert resumed.best_steps() == [2, 4]  # the previous best stays until a checkpoint records 4
    resumed.save(6, shifted(state, 6.0, 6), {"best_top1": 40.0, "best_step": 4})
    resumed.close()
    assert resumed.best_steps() == [4]
    run_config.save(eight_device_run["config"], tmp_path)
    best = trained_run.load_for_eval(tmp_path, "best").variables["params"]
    expected = jax.tree.map(lambda leaf: leaf + 4.0, state.params)
    for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)


def test_meta_is_saved_as_it_was_when_saved(eight_device_run, tmp_path):
    """The caller's meta changes at the next eval while orbax may still be writing."""
    state = shifted(eight_device_run["state"], 0.0, 3)
    checkpointer = checkpointing.RunCheckpointer(tmp_path)
    meta = {"best_top1": 30.0, "best_step": 3, "last_eval": {"step": 3, "top1": 30.0}}
    checkpointer.save(3, state, meta)
    meta["last_eval"]["step"], meta["best_step"] = 99, 99  # what the loop does next
    checkpointer.close()
    saved = json.loads((tmp_path / "checkpoints" / "3" / "meta" / "metadata").read_text())
    assert saved == {"best_top1": 30.0, "best_step": 3, "last_eval": {"step": 3, "top1": 30.0}}


def test_a_step_orbax_skips_is_an_error(eight_device_run, tmp_path):
    state = eight_device_run["state"]
    checkpointer = checkpointing.RunCheckpointer(tmp_path)
    checkpointer.save(4, shifted(state, 0.0, 4), {"best_step": 0})
    with pytest.raises(RuntimeError, match="orbax did not save step 3"):
        checkpointer.save(3, shifted(state, 0.0, 3), {"best_step": 0})
    checkpointer.close()
