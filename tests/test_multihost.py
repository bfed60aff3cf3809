"""The trainer on two hosts, stopped by a preemption and resumed, against one host of 8 devices.

Two local processes, each with 4 simulated CPU devices, joined by `jax.distributed` over loopback
(gloo collectives), run the real CLI (`cli_runs`) on one shared workdir: AlignMixup with global
partners, 8 steps, a checkpoint every step. Host 1 alone receives SIGTERM after step 2: JAX's
preemption service must stop both hosts after the same step, each writing its part of that
checkpoint, and the same command then resumes both to step 8. Which step that is depends on how far
host 0 has got when the notice reaches it (the service picks the step after the furthest host's),
so the tests read it from the hosts' output and require only that both name the same one. A spy
saves, at every checkpoint, every device's copy of the whole train state, so the test sees all 8
copies of every step.

The reference replays each step k in this process on one host of 8 devices, from exactly the state
the two hosts reached after step k - 1, on the batch of step k (a pure function of seed and step),
and the hosts' state after step k must agree with it within one step's float32 rounding
(`step_agreement`): gloo sums in another order than the in-process collectives, and one step from
the same state cannot amplify that beyond a fraction of its own update, on any CPU. Comparing the
two trajectories instead would let the aligned steps amplify the rounding without bound.
`test_the_tolerance_rejects_real_defects` shows that a host reading the wrong rows, a missing mean
over the devices or a skipped step land far outside that tolerance.
"""

import json
import pathlib
import re
import signal
import socket

import cli_hooks
import cli_runs
import jax
import numpy as np
import pytest
import step_agreement

from alignmix_jax import data
from alignmix_jax.trainer import experiment_config, metrics_log, parallel, train, trained_run

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
        hooks = {cli_hooks.SPY_DIR_ENV: str(spy_dir), **(host1_hooks if process_id else {})}
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
            root, workdir, spy, "stopped", **{cli_hooks.SIGNAL_ENV: f"SIGTERM:{STOP_AFTER}"}
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


def _hosts_state(spy_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """Asserts that all 8 device copies (4 per host) of every leaf of the train state after
    `step` are bitwise equal and finite; returns one copy {keystr of the leaf: array}."""
    copies = []
    for host in (0, 1):
        path = cli_hooks.spy_file(spy_dir, host, step)
        assert path.exists(), f"host {host} never checkpointed step {step}"
        with np.load(path) as saved:
            copies.append(dict(saved))
    assert copies[0].keys() == copies[1].keys()
    state = {}
    for name in copies[0]:
        leaf = np.concatenate([copies[0][name], copies[1][name]])
        assert leaf.shape[0] == 8, name
        assert np.all(np.isfinite(leaf)), name
        for device in range(1, 8):
            np.testing.assert_array_equal(leaf[device], leaf[0], err_msg=name)
        state[name] = leaf[0]
    return state


class OneHost:
    """Replays single steps of `_config()` in this process on one host of 8 devices."""

    def __init__(self):
        assert jax.device_count() == 8
        self.config = _config()
        self.mesh = parallel.make_data_mesh()
        self.training = train.build_training(self.config, self.mesh)
        initial = self.training.initial_state()
        self.treedef = jax.tree_util.tree_structure(initial)
        self.initial = step_agreement.leaves(initial)
        self.names = list(self.initial)  # in the order of the tree's leaves

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The global batch of step `step` (1-based), as one host reads it."""
        config = self.config
        stream = data.make_train_iterator(
            config.data, config.batch_size, seed=config.seed, start_step=step - 1
        )
        return next(stream)

    def step(self, before: dict, step: int, batch: dict | None = None, training=None):
        """(the state after step `step` from the state `before`, both {keystr: array}; the step's
        metrics), with the run's batch of that step (or `batch`) and `training`'s steps."""
        training = training or self.training
        state = jax.tree_util.tree_unflatten(self.treedef, [before[name] for name in self.names])
        batch = parallel.shard_host_batch(self.batch(step) if batch is None else batch, self.mesh)
        after, metrics = training.train_step(
            parallel.replicate(state, self.mesh), batch, training.base_key
        )
        return step_agreement.leaves(after), jax.device_get(metrics)


@pytest.fixture(scope="module")
def replay(hosts):
    """{"one_host": OneHost, "before" {k: hosts' state after k - 1}, "after" {k: hosts' state
    after k}, "expected" {k: one host's step k from before[k]}, "loss" {k: its loss}}."""
    one_host = OneHost()
    states = {0: one_host.initial}
    states.update({step: _hosts_state(hosts["spy"], step) for step in range(1, NUM_STEPS + 1)})
    expected, loss = {}, {}
    for step in range(1, NUM_STEPS + 1):
        expected[step], metrics = one_host.step(states[step - 1], step)
        loss[step] = float(metrics["loss"])
    return {
        "one_host": one_host,
        "before": {step: states[step - 1] for step in expected},
        "after": {step: states[step] for step in expected},
        "expected": expected,
        "loss": loss,
    }


def test_both_hosts_stop_after_the_same_step_with_a_checkpoint(hosts):
    stopped_at = _stop_step(hosts)
    assert STOP_AFTER < stopped_at < NUM_STEPS
    assert hosts["checkpoints_at_stop"] == [stopped_at - 1, stopped_at]  # keep_checkpoints = 2
    assert "SIGTERM caught" in hosts["stopped"]["1"]  # only host 1 was signalled
    assert "SIGTERM caught" not in hosts["stopped"]["0"]
    assert f"Resumed from the checkpoint at step {stopped_at}" in hosts["resumed"]["0"]


def test_each_step_of_two_hosts_is_the_step_of_one_host_of_eight_devices(replay):
    for step in range(1, NUM_STEPS + 1):
        step_agreement.assert_same_step(
            replay["before"][step], replay["after"][step], replay["expected"][step],
            f"step {step}",
        )


def test_two_hosts_log_the_losses_of_one_host(hosts, replay):
    """Each logged train loss is the mean over the steps since the previous log; every step's loss
    agrees with the one-host replay of that step (one step's rounding: `UPDATE_RTOL`)."""
    logged = {
        record["step"]: record["train_loss"]
        for record in metrics_log.read_metrics(hosts["workdir"])
        if "train_loss" in record
    }
    # log_every_steps = 2, and the stopped hosts also logged the step they stopped after.
    assert sorted(logged) == sorted({*range(2, NUM_STEPS + 1, 2), _stop_step(hosts)})
    previous = 0
    for step in sorted(logged):
        window = [replay["loss"][k] for k in range(previous + 1, step + 1)]
        assert logged[step] == pytest.approx(np.mean(window), rel=step_agreement.UPDATE_RTOL)
        previous = step


def test_the_tolerance_rejects_real_defects(replay, monkeypatch):
    """A host reading the other host's rows, a missing mean over the devices, a skipped step: each
    lands more than `DEFECT_MARGIN` one-step tolerances from the step (step 3, the first after the
    learning rate and the momentum have built up)."""
    one_host, step = replay["one_host"], 3
    before, expected = replay["before"][step], replay["expected"][step]
    skipped = {**before, ".step": expected[".step"]}  # counted, but no update: the floats say it
    step_agreement.assert_defect_rejected(before, skipped, expected, "skipped step")

    batch = one_host.batch(step)
    half = len(batch["label"]) // 2
    wrong_rows = {name: np.concatenate([value[:half]] * 2) for name, value in batch.items()}
    after, _ = one_host.step(before, step, batch=wrong_rows)
    step_agreement.assert_defect_rejected(before, after, expected, "wrong rows")

    # No mean over the devices: each device steps with its own gradient and statistics.
    monkeypatch.setattr(jax.lax, "pmean", lambda values, axis_name, **kwargs: values)
    unaveraged = train.build_training(one_host.config, one_host.mesh)
    after, _ = one_host.step(before, step, training=unaveraged)
    step_agreement.assert_defect_rejected(before, after, expected, "no device mean")


def test_two_hosts_write_a_checkpoint_one_host_reads(hosts):
    """The checkpoint the two hosts wrote, read on one host, is exactly their last state."""
    two_hosts = trained_run.load_for_eval(hosts["workdir"], checkpoint="last")
    assert two_hosts.step == NUM_STEPS
    spied = _hosts_state(hosts["spy"], NUM_STEPS)
    read = step_agreement.leaves(two_hosts.variables)
    assert len(read) == sum(name.startswith((".params", ".batch_stats")) for name in spied)
    for name, value in read.items():  # "['params']['stem']..." is the state's ".params['stem']..."
        collection, rest = name.removeprefix("['").split("']", 1)
        np.testing.assert_array_equal(value, spied[f".{collection}{rest}"], err_msg=name)
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
    records = metrics_log.read_metrics(hosts["workdir"])
    keys = [(record["step"], tuple(sorted(record))) for record in records]
    assert len(keys) == len(set(keys)), records  # no record written twice
    event_files = list((hosts["workdir"] / metrics_log.TENSORBOARD_DIR).iterdir())
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
