"""The trainer on two hosts: two local processes, each with 4 simulated CPU devices, joined by
`jax.distributed` over loopback (gloo collectives), run the real CLI,
`python -m alignmix_jax.main --config experiments/quickstart.py:smoke --config.distributed=True`,
on one shared workdir, against the same run in one process with 8 devices.

Each child process runs the CLI under a spy that, whenever the trainer checkpoints, saves the
copy of the parameters held by each of its local devices; so the test sees all 8 device copies.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alignmix_jax import checkpointing, experiment_config, logging_utils, parallel

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/quickstart.py:smoke"
NUM_STEPS = 4  # the smoke config's num_train_steps; it evaluates at the last step
CHECKPOINT_STEPS = [2, 4]
DEADLINE_SEC = 300  # the whole launch; about 60 s on an idle 2-core machine
SPY_DIR_ENV = "ALIGNMIX_TEST_SPY_DIR"

# Runs the CLI module as `python -m` would, after wrapping RunCheckpointer.save so that each
# process writes params_host<process index>_step<step>.npz: {dotted name: (local devices, ...)}.
SPY_LAUNCHER = f"""
import os, pathlib, runpy
import jax
import numpy as np
from alignmix_jax import checkpointing

original_save = checkpointing.RunCheckpointer.save

def save(self, step, state, meta):
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    copies = {{
        ".".join(str(key.key) for key in path): np.stack(
            [np.asarray(shard.data) for shard in leaf.addressable_shards]
        )
        for path, leaf in leaves
    }}
    name = f"params_host{{jax.process_index()}}_step{{int(step)}}.npz"
    np.savez(pathlib.Path(os.environ["{SPY_DIR_ENV}"]) / name, **copies)
    original_save(self, step, state, meta)

checkpointing.RunCheckpointer.save = save
runpy.run_module("alignmix_jax.main", run_name="__main__", alter_sys=True)
"""


def _free_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    except OSError as error:
        pytest.skip(f"cannot bind a TCP port on 127.0.0.1 for the coordinator: {error}")


def _launch(workdir: pathlib.Path, method: str, devices: int, process_id=None, port=None, *extra):
    """Starts one CLI process; with `process_id`, one of 2 hosts coordinated on `port`."""
    spy_dir = workdir.parent / f"{workdir.name}_spy"
    spy_dir.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JAX_", "TPU_", "SLURM_", "OMPI_", "PMI_"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONPATH=str(REPO),
        **{SPY_DIR_ENV: str(spy_dir)},
    )
    command = [
        sys.executable,
        "-c",
        SPY_LAUNCHER,
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.mix.method={method}",
        "--config.progress_bar=False",
        f"--config.checkpoint_every_steps={CHECKPOINT_STEPS[0]}",
        *extra,
    ]
    if process_id is not None:
        command += [
            "--config.distributed=True",
            f"--config.distributed_coordinator=127.0.0.1:{port}",
            "--config.distributed_num_processes=2",
            f"--config.distributed_process_id={process_id}",
        ]
    log = open(workdir.parent / f"{workdir.name}_{process_id or 0}.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    return process, log


def _finish(launched: dict) -> dict[str, str]:
    """Waits for every process until the shared deadline; kills all on a failure or timeout.

    Returns {name: output}; fails the test with the output tails when one did not exit 0.
    """
    deadline = time.monotonic() + DEADLINE_SEC
    failed = None
    try:
        for name, (process, _) in launched.items():
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failed = f"{name} still running after {DEADLINE_SEC} s"
                break
            if process.returncode != 0:
                failed = f"{name} exited with {process.returncode}"
                break
    finally:
        for process, _ in launched.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = {}
    for name, (_, log) in launched.items():
        log.seek(0)
        outputs[name] = log.read()
        log.close()
    if failed is not None:
        tails = "\n".join(f"--- {name}:\n{text[-3000:]}" for name, text in outputs.items())
        pytest.fail(f"{failed}\n{tails}")
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs at once: one process x 8 devices ("single") and two processes x 4 devices
    ("hosts_none", "hosts_alignmixup"). Returns {run: (workdir, spy_dir, {process: output})}."""
    root = tmp_path_factory.mktemp("multihost")
    plan = {
        "single": ("none", None, "--config.tensorboard=False"),
        "hosts_none": ("none", _free_loopback_port()),
        "hosts_alignmixup": ("alignmixup", _free_loopback_port(), "--config.tensorboard=False"),
    }
    launched = {}
    for run, (method, port, *extra) in plan.items():
        workdir = root / run
        if port is None:
            launched[run] = _launch(workdir, method, 8, None, None, *extra)
            continue
        for process_id in (0, 1):
            launched[f"{run}/{process_id}"] = _launch(workdir, method, 4, process_id, port, *extra)
    outputs = _finish(launched)
    by_run = {run: {} for run in plan}
    for name, text in outputs.items():
        run, _, process = name.partition("/")
        by_run[run][process or "0"] = text
    return {run: (root / run, root / f"{run}_spy", by_run[run]) for run in plan}


def _device_copies(spy_dir: pathlib.Path, host: int, step: int = NUM_STEPS) -> dict:
    """{parameter name: (local devices, ...)} of `host` at `step`."""
    path = spy_dir / f"params_host{host}_step{step}.npz"
    assert path.exists(), f"host {host} never checkpointed step {step}"
    with np.load(path) as saved:
        return dict(saved)


def _assert_replicas_identical(spy_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Asserts that all 8 device copies (4 per host) of every parameter are bitwise equal and
    finite; returns one copy {name: array}."""
    host0, host1 = _device_copies(spy_dir, 0), _device_copies(spy_dir, 1)
    assert host0.keys() == host1.keys()
    for name in host0:
        copies = np.concatenate([host0[name], host1[name]])
        assert copies.shape[0] == 8, name
        assert np.all(np.isfinite(copies)), name
        for device in range(1, 8):
            np.testing.assert_array_equal(copies[device], copies[0], err_msg=name)
    return {name: copies[0] for name, copies in host0.items()}


def test_two_hosts_train_like_one_host_of_eight_devices(runs):
    single_dir, single_spy, _ = runs["single"]
    hosts_dir, hosts_spy, _ = runs["hosts_none"]
    single = _device_copies(single_spy, 0)
    assert all(copies.shape[0] == 8 for copies in single.values())
    hosts = _assert_replicas_identical(hosts_spy)
    assert hosts.keys() == single.keys()
    for name, value in hosts.items():
        np.testing.assert_allclose(value, single[name][0], rtol=1e-5, atol=1e-5, err_msg=name)
    halfway = _device_copies(hosts_spy, 0, step=NUM_STEPS // 2)
    assert any(not np.array_equal(halfway[name][0], value) for name, value in hosts.items())

    single_records = logging_utils.read_metrics(single_dir)
    host_records = logging_utils.read_metrics(hosts_dir)
    assert [record["step"] for record in host_records] == [2, 4, 4]
    for single_record, host_record in zip(single_records, host_records, strict=True):
        assert single_record.keys() == host_record.keys()
        for name in single_record.keys() - {"images_per_sec"}:
            assert host_record[name] == pytest.approx(single_record[name], rel=1e-5, abs=1e-5)


def test_two_hosts_write_a_checkpoint_one_host_reads(runs):
    single_dir = runs["single"][0]
    hosts_dir = runs["hosts_none"][0]
    single_variables = checkpointing.load_for_eval(single_dir, which="last").variables
    host_variables = checkpointing.load_for_eval(hosts_dir, which="last").variables
    single_leaves = dict(_flatten(single_variables))
    host_leaves = dict(_flatten(host_variables))
    assert host_leaves.keys() == single_leaves.keys()
    for name, value in host_leaves.items():
        np.testing.assert_allclose(
            np.asarray(value),
            np.asarray(single_leaves[name]),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )
    saved_steps = sorted(int(path.name) for path in (hosts_dir / "checkpoints").iterdir())
    assert saved_steps == CHECKPOINT_STEPS
    assert sorted(path.name for path in (hosts_dir / "best").iterdir()) == [str(NUM_STEPS)]


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_two_hosts_agree_with_alignmixup(runs):
    hosts_dir, hosts_spy, _ = runs["hosts_alignmixup"]
    _assert_replicas_identical(hosts_spy)
    records = logging_utils.read_metrics(hosts_dir)
    losses = [record["train_loss"] for record in records if "train_loss" in record]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_only_host_zero_writes_logs(runs):
    hosts_dir, _, outputs = runs["hosts_none"]
    assert "Summary:" in outputs["0"]
    assert "Summary:" not in outputs["1"] and "test top-1" not in outputs["1"]
    summary = json.loads((hosts_dir / "summary.json").read_text())
    assert summary["steps"] == NUM_STEPS
    assert json.loads((hosts_dir / "config.json").read_text())["distributed"] is True
    records = logging_utils.read_metrics(hosts_dir)
    keys = [(record["step"], tuple(sorted(record))) for record in records]
    assert len(keys) == len(set(keys)) == 3, records
    event_files = list((hosts_dir / logging_utils.TENSORBOARD_DIR).iterdir())
    assert len(event_files) == 1, event_files


@pytest.mark.parametrize(
    ("num_processes", "process_id", "message"),
    [
        (0, None, "config.distributed_num_processes = 0"),
        (2, 2, r"config.distributed_process_id = 2 is invalid; expected an integer in \[0, 2\)"),
        (None, -1, "config.distributed_process_id = -1"),
    ],
)
def test_bad_distributed_fields_fail_naming_the_field(num_processes, process_id, message):
    config = experiment_config.load_config(str(REPO / CONFIG))
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
