"""The trainer on two hosts, stopped by a preemption and resumed, against one host of 8 devices.

Two local processes, each with 4 simulated CPU devices, joined by `jax.distributed` over loopback
(gloo collectives), run the real CLI (`cli_runs`) on one shared workdir: AlignMixup with global
partners, 8 steps, a checkpoint every step. Host 1 alone receives SIGTERM after step 2: JAX's
preemption service must stop both hosts after the same step, each writing its part of that
checkpoint, and the same command then resumes both to step 8. Which step that is depends on how far
host 0 has got when the notice reaches it (the service picks the step after the furthest host's),
so the tests read it from the hosts' output and require only that both name the same one. A spy
saves, at every checkpoint, the copy of the parameters held by each device, so the test sees all 8
copies of every step.

The reference is the same config trained in this process on one host of 8 devices
(`train.train_and_evaluate`), from the initial parameters and from them moved by one ulp: the
difference the ulp makes after each step is the float32 noise of that step (`float32_noise`).
Gloo sums in another order than the in-process collectives, so the two hosts may differ from the
reference by that noise and no more. `test_the_tolerance_rejects_real_defects` shows that a host
reading the wrong rows, a missing gradient mean or a skipped step move the parameters by orders of
magnitude more than the tolerance.
"""

import json
import pathlib
import re
import signal
import socket

import cli_runs
import float32_noise
import jax
import numpy as np
import pytest

from alignmix_jax import data
from alignmix_jax.trainer import checkpointing, experiment_config, logging_utils, parallel, train

CONFIG = "experiments/quickstart.py:smoke"
NUM_STEPS = 8
STOP_AFTER = 2  # host 1's SIGTERM; both hosts stop after a later step (3 on an idle machine)
DEADLINE_SEC = 600  # each launch; about 30 s on an idle 2-core machine
OVERRIDES = {
    "mix.method": "alignmixup",
    "mix.partner": "global",
    "num_train_steps": NUM_STEPS,
    "eval_every_steps": NUM_STEPS,
    "checkpoint_every_steps": 1,
    "progress_bar": False,
}


def _free_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    except OSError as error:
        pytest.skip(f"cannot bind a TCP port on 127.0.0.1 for the coordinator: {error}")


def _launch_two_hosts(root: pathlib.Path, workdir: pathlib.Path, spy_dir, name, **host1_hooks):
    port = _free_loopback_port()
    launched = {}
    for process_id in (0, 1):
        args = [
            f"--config={CONFIG}",
            f"--workdir={workdir}",
            *(f"--config.{field}={value}" for field, value in OVERRIDES.items()),
            "--config.distributed=True",
            f"--config.distributed_coordinator=127.0.0.1:{port}",
            "--config.distributed_num_processes=2",
            f"--config.distributed_process_id={process_id}",
        ]
        hooks = {cli_runs.SPY_DIR_ENV: str(spy_dir), **(host1_hooks if process_id else {})}
        launched[f"{name}/{process_id}"] = cli_runs.start(
            args, root / f"{name}_{process_id}.log", devices=4, **hooks
        )
    return launched


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The two-host run, stopped by SIGTERM on host 1 and resumed: {"workdir", "spy",
    "checkpoints_at_stop", "stopped", "resumed" (both {process: output}), "stopped_at" ({process:
    the steps its output says it stopped after})}."""
    root = tmp_path_factory.mktemp("multihost")
    workdir, spy = root / "run", root / "spy"
    spy.mkdir()
    stopped = cli_runs.finish(
        _launch_two_hosts(
            root, workdir, spy, "stopped", **{cli_runs.SIGNAL_ENV: f"SIGTERM:{STOP_AFTER}"}
        ),
        DEADLINE_SEC,
        expected_returncode=128 + signal.SIGTERM,
    )
    checkpoints_at_stop = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    resumed = cli_runs.finish(_launch_two_hosts(root, workdir, spy, "resumed"), DEADLINE_SEC)
    stopped = {name.split("/")[1]: text for name, text in stopped.items()}
    return {
        "workdir": workdir,
        "spy": spy,
        "checkpoints_at_stop": checkpoints_at_stop,
        "stopped": stopped,
        "resumed": {name.split("/")[1]: text for name, text in resumed.items()},
        "stopped_at": {
            process: [int(step) for step in re.findall(r"SIGTERM: stopped after step (\d+)", text)]
            for process, text in stopped.items()
        },
    }


def _stop_step(hosts) -> int:
    """The one step both hosts stopped after (asserted)."""
    assert hosts["stopped_at"]["0"] == hosts["stopped_at"]["1"], hosts["stopped_at"]
    assert len(hosts["stopped_at"]["0"]) == 1, hosts["stopped_at"]
    return hosts["stopped_at"]["0"][0]


def _config():
    config = experiment_config.load_config(str(cli_runs.REPO / CONFIG))
    config.update_from_flattened_dict({**OVERRIDES, "tensorboard": False})
    return config


def _train_in_process(workdir, monkeypatch, perturb=False, reorder_means=False):
    """Trains `_config()` here on 8 devices; returns {step: host params} of every checkpoint.
    `perturb`: from the initial parameters moved by one ulp; `reorder_means`: with the rounding
    of another summation order added to every mean over the devices (`float32_noise`)."""
    params_at = {}
    save = checkpointing.RunCheckpointer.save

    def spying_save(self, step, state, meta):
        params_at[int(step)] = jax.device_get(state.params)
        save(self, step, state, meta)

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing.RunCheckpointer, "save", spying_save)
        if perturb:
            create = train.create_train_state

            def perturbed_state(model, optimizer, image_shape, seed, mesh):
                state = jax.device_get(create(model, optimizer, image_shape, seed, mesh))
                state = state.replace(params=float32_noise.perturb_by_one_ulp(state.params))
                return parallel.replicate(state, mesh)

            patch.setattr(train, "create_train_state", perturbed_state)
        if reorder_means:
            patch.setattr(jax.lax, "pmean", float32_noise.pmean_in_another_order)
        train.train_and_evaluate(_config(), workdir)
    return params_at


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One host of 8 devices: {"workdir", "params" {step: params}, "tolerance" {step: float}}."""
    assert jax.device_count() == 8
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as monkeypatch:
        params = _train_in_process(root / "run", monkeypatch)
        noisy = _train_in_process(root / "perturbed", monkeypatch, perturb=True)
        reordered = _train_in_process(root / "reordered", monkeypatch, reorder_means=True)
    tolerance = {
        step: float32_noise.noise_tolerance(params[step], noisy[step], reordered[step])
        for step in params
    }
    return {"workdir": root / "run", "params": params, "tolerance": tolerance}


def _device_copies(spy_dir: pathlib.Path, host: int, step: int) -> dict:
    """{parameter name: (local devices, ...)} of `host` at `step`."""
    path = spy_dir / f"params_host{host}_step{step}.npz"
    assert path.exists(), f"host {host} never checkpointed step {step}"
    with np.load(path) as saved:
        return dict(saved)


def _hosts_params(spy_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Asserts that all 8 device copies (4 per host) of every parameter at `step` are bitwise
    equal and finite; returns one copy {dotted name: array}."""
    host0, host1 = _device_copies(spy_dir, 0, step), _device_copies(spy_dir, 1, step)
    assert host0.keys() == host1.keys()
    for name in host0:
        copies = np.concatenate([host0[name], host1[name]])
        assert copies.shape[0] == 8, name
        assert np.all(np.isfinite(copies)), name
        for device in range(1, 8):
            np.testing.assert_array_equal(copies[device], copies[0], err_msg=name)
    return {name: copies[0] for name, copies in host0.items()}


def _dotted(params) -> dict[str, np.ndarray]:
    return {
        ".".join(str(key.key) for key in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_both_hosts_stop_after_the_same_step_with_a_checkpoint(hosts):
    stopped_at = _stop_step(hosts)
    assert STOP_AFTER < stopped_at < NUM_STEPS
    assert hosts["checkpoints_at_stop"] == [stopped_at - 1, stopped_at]  # keep_checkpoints = 2
    assert "SIGTERM caught" in hosts["stopped"]["1"]  # only host 1 was signalled
    assert "SIGTERM caught" not in hosts["stopped"]["0"]
    assert f"Resumed from the checkpoint at step {stopped_at}" in hosts["resumed"]["0"]


def test_two_hosts_train_like_one_host_of_eight_devices(hosts, reference):
    for step in range(1, NUM_STEPS + 1):
        two_hosts = _hosts_params(hosts["spy"], step)
        one_host = _dotted(reference["params"][step])
        assert two_hosts.keys() == one_host.keys()
        difference = float32_noise.max_abs_difference(two_hosts, one_host)
        assert difference <= reference["tolerance"][step], (step, difference, reference)
    host_losses = {
        r["step"]: r["train_loss"]
        for r in logging_utils.read_metrics(hosts["workdir"])
        if "train_loss" in r
    }
    one_host_losses = {
        r["step"]: r["train_loss"]
        for r in logging_utils.read_metrics(reference["workdir"])
        if "train_loss" in r
    }
    # The stopped hosts also logged the step they stopped after.
    assert set(host_losses) == set(one_host_losses) | {_stop_step(hosts)}
    for step, loss in one_host_losses.items():
        assert host_losses[step] == pytest.approx(loss, rel=1e-4)


def test_the_tolerance_rejects_real_defects(hosts, reference, tmp_path, monkeypatch):
    """A host reading the other host's rows, a missing mean over the devices, one step skipped:
    each lands more than 100 times outside the tolerance of the comparison above after step 2
    (later, as the learning rate decays to 0 and the noise grows, the margin shrinks)."""
    expected = {step: _dotted(params) for step, params in reference["params"].items()}

    def assert_rejected(params_at: dict, defect: str) -> None:
        ratios = {
            step: float32_noise.max_abs_difference(_dotted(params_at[step]), expected[step])
            / reference["tolerance"][step]
            for step in range(2, NUM_STEPS + 1)
        }
        assert ratios[2] > 100, (defect, ratios)

    assert_rejected({step + 1: reference["params"][step] for step in expected}, "skipped step")

    make_iterator = data.make_train_iterator

    def host_one_reads_host_zeros_rows(*args, **kwargs):
        for batch in make_iterator(*args, **kwargs):
            half = len(batch["label"]) // 2
            yield {name: np.concatenate([value[:half]] * 2) for name, value in batch.items()}

    monkeypatch.setattr(data, "make_train_iterator", host_one_reads_host_zeros_rows)
    assert_rejected(_train_in_process(tmp_path / "wrong_rows", monkeypatch), "wrong rows")
    monkeypatch.undo()

    # No mean over the devices: each device steps with its own gradient and statistics.
    monkeypatch.setattr(jax.lax, "pmean", lambda values, axis_name, **kwargs: values)
    assert_rejected(_train_in_process(tmp_path / "unaveraged", monkeypatch), "no device mean")
    monkeypatch.undo()


def test_two_hosts_write_a_checkpoint_one_host_reads(hosts, reference):
    two_hosts = checkpointing.load_for_eval(hosts["workdir"], which="last")
    one_host = checkpointing.load_for_eval(reference["workdir"], which="last")
    assert two_hosts.step == one_host.step == NUM_STEPS
    difference = float32_noise.max_abs_difference(two_hosts.variables, one_host.variables)
    assert difference <= reference["tolerance"][NUM_STEPS]
    saved_steps = sorted(int(path.name) for path in (hosts["workdir"] / "checkpoints").iterdir())
    assert saved_steps == [NUM_STEPS - 1, NUM_STEPS]  # keep_checkpoints = 2
    assert [path.name for path in (hosts["workdir"] / "best").iterdir()] == [str(NUM_STEPS)]


def test_only_host_zero_writes_logs(hosts):
    for outputs in (hosts["stopped"], hosts["resumed"]):
        assert "test top-1" not in outputs["1"] and "Summary:" not in outputs["1"]
    assert "Summary:" in hosts["resumed"]["0"]
    summary = json.loads((hosts["workdir"] / "summary.json").read_text())
    assert summary["steps"] == NUM_STEPS
    assert json.loads((hosts["workdir"] / "config.json").read_text())["distributed"] is True
    records = logging_utils.read_metrics(hosts["workdir"])
    keys = [(record["step"], tuple(sorted(record))) for record in records]
    assert len(keys) == len(set(keys)), records  # no record written twice
    logged = sorted({*range(2, NUM_STEPS + 1, 2), _stop_step(hosts)})  # log_every_steps = 2
    assert [r["step"] for r in records if "train_loss" in r] == logged
    event_files = list((hosts["workdir"] / logging_utils.TENSORBOARD_DIR).iterdir())
    assert len(event_files) == 2, event_files  # one per launch of host 0


@pytest.mark.parametrize(
    ("num_processes", "process_id", "message"),
    [
        (0, None, "config.distributed_num_processes = 0"),
        (2, 2, r"config.distributed_process_id = 2 is invalid; expected an integer in \[0, 2\)"),
        (None, -1, "config.distributed_process_id = -1"),
    ],
)
def test_bad_distributed_fields_fail_naming_the_field(num_processes, process_id, message):
    config = experiment_config.load_config(str(cli_runs.REPO / CONFIG))
    config.distributed_num_processes = num_processes
    config.distributed_process_id = process_id
    with pytest.raises(ValueError, match=message):
        experiment_config.validate_distributed_config(config)


def test_replicate_keeps_keys_and_values_on_every_device():
    mesh = parallel.make_data_mesh()
    tree = {"key": jax.random.key(3), "weights": np.arange(6.0, dtype=np.float32).reshape(2, 3)}
    replicated = parallel.replicate(tree, mesh)
    assert replicated["weights"].sharding.is_fully_replicated
    assert len(replicated["weights"].addressable_shards) == mesh.size
    for shard in replicated["weights"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), tree["weights"])
    assert jax.dtypes.issubdtype(replicated["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(replicated["key"]), jax.random.key_data(tree["key"])
    )
