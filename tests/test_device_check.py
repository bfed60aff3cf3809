"""benchmarks/device_check.py --tiny: every part runs on a CPU and reports what it measured.

The real check runs on a GPU machine (see docs/accelerators.md, "On a GPU"); here the same code runs
at small shapes, so that the one prepared call there does not fail on a path never run before.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys
import threading
import time

from test_without_tensorflow import write_image_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"
PEER = REPO.parent / "shared" / "peers" / "torch_official_step.py"
PARTS = ("environment", "numerics", "align_mix", "train_step", "peer", "training")
TIMEOUT_S = 900


def write_jpeg_folder(root: pathlib.Path) -> None:
    """The CIFAR-10 JPEG layout in small: `{train,test}/{dark,light}/*.jpg`, 32x32 RGB."""
    write_image_folder(root, 32, {"train": 40, "test": 10}, "jpg")


def run_check(out: pathlib.Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    report = json.loads((out / "device_check.json").read_text())
    return result, report, (out / "device_check.md").read_text()


def test_tiny_check_runs_every_part_and_reports_it(tmp_path):
    write_jpeg_folder(tmp_path / "images")
    peer = ["--peer", str(PEER)] if PEER.exists() else []
    result, report, markdown = run_check(
        tmp_path / "out", "--data", str(tmp_path / "images"), *peer
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parts = report["parts"]
    assert tuple(parts) == PARTS
    statuses = {name: part["status"] for name, part in parts.items()}
    peer_runs = PEER.exists() and importlib.util.find_spec("torch") is not None
    assert statuses == {**dict.fromkeys(PARTS, "ok"), "peer": "ok" if peer_runs else "skipped"}
    if peer_runs:
        runs = {(r["mode"], r["amp"], r["channels_last"]) for r in parts["peer"]["runs"]}
        assert len(runs) == 8  # none and alignmixup, fp32 and bf16, with and without channels_last
    else:  # the reason names what is missing: torch, or the peer script (no ../shared here)
        assert any(word in parts["peer"]["reason"] for word in ("torch", "--peer"))
    assert parts["environment"]["versions"]["jax"] and parts["environment"]["platform"] == "cpu"
    # On the CPU, both precisions agree with the float64 reference within the tolerances.
    for dtype in ("float32", "bfloat16"):
        case = parts["numerics"]["cases"][dtype]
        assert case["within_tolerance"] and case["row_marginal_error"] < 1e-5, case
    row = parts["align_mix"]["shapes"]["cifar_preactresnet18"]
    assert min(row["fixed_ms"], row["early_stop_ms"], row["floor_ms"]) > 0
    (step,) = parts["train_step"]["rows"]
    assert step["none"]["mean"] > 0 and step["alignmixup"]["mean"] > 0
    assert 0 < step["sinkhorn_share"] < 1
    training = parts["training"]
    assert [e["epoch"] for e in training["epoch_top1"]] == list(range(1, training["epochs"] + 1))
    assert all(0 <= e["top1"] <= 100 for e in training["epoch_top1"])
    assert training["summary"]["final_top1"] == training["epoch_top1"][-1]["top1"]
    assert report["targets"]["numerics_float32"]["met"]
    for heading in ("## Numerics", "## align_mix", "## Train step", "## Training", "## Targets"):
        assert heading in markdown


def test_parts_past_the_global_budget_are_skipped_and_reported(tmp_path):
    # A budget spent before the first part starts, whatever this machine's speed (0.01 s let a
    # fast environment part finish in time for numerics to start).
    result, report, markdown = run_check(
        tmp_path, "--budget_s", "1e-9", "--parts", "environment,numerics,training"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parts = report["parts"]
    for name in ("numerics", "training"):
        assert parts[name]["status"] == "skipped" and "budget" in parts[name]["reason"]
    assert "align_mix" not in parts  # not selected
    assert "| numerics | skipped |" in markdown


def test_an_overrunning_part_is_abandoned_and_the_report_still_written(tmp_path):
    write_jpeg_folder(tmp_path / "images")
    result, report, markdown = run_check(
        tmp_path / "out",
        *("--budget_s", "1", "--grace_s", "1", "--parts", "environment,training"),
        *("--data", str(tmp_path / "images")),
    )
    assert result.returncode == 3, result.stderr[-3000:]  # a part was abandoned
    assert report["parts"]["environment"]["status"] == "ok"
    training = report["parts"]["training"]
    assert training["status"] == "timed_out" and training["seconds"] < 10, training
    assert "| training | timed_out |" in markdown


def test_a_part_past_its_budget_is_abandoned_and_the_next_one_runs(tmp_path, monkeypatch):
    """In process: a part that hangs is recorded with what it finished, and the next part runs;
    the finished peer runs are kept when a later run fails."""
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec.loader.exec_module(check)
    settings = check.TINY
    args = check.parse_args(["--out", str(tmp_path), "--tiny", "--grace_s", "0.2"])
    hang = threading.Event()

    def stuck(settings, args, clock):
        hang.wait(30)

    clock = check.Clock(time.monotonic() + 0.1)
    assert check.run_part(stuck, settings, args, clock, 0.2) is None
    assert time.monotonic() - clock.start < 5
    error = check.run_part(lambda *a: 1 / 0, settings, args, clock, 0.2)
    assert isinstance(error, ZeroDivisionError)
    hang.set()

    report = check.Report(tmp_path, True, 10.0)
    calls = []

    def fake_peer(command, **kwargs):
        calls.append(command)
        if len(calls) == 3:
            return subprocess.CompletedProcess(command, 1, "", "CUDA error")
        line = "peer=torch mode=none device=cpu amp=none batch=16 img_per_s=10 med_ms=1.6 "
        return subprocess.CompletedProcess(command, 0, line + "align_frac=0.00\n", "")

    monkeypatch.setattr(check.subprocess, "run", fake_peer)
    args.peer = SCRIPT
    outcome = check.run_part(
        lambda s, a, c: check.run_peer(s, a, c, report), settings, args,
        check.Clock(time.monotonic() + 60), 1.0,
    )
    assert isinstance(outcome, RuntimeError) and "CUDA error" in str(outcome)
    kept = report.progress["peer"]()["runs"]
    assert [run["channels_last"] for run in kept] == [False, False]
    assert "--channels_last" in calls[2] and "--channels_last" not in calls[1]
    written = json.loads((tmp_path / "device_check.json").read_text())
    assert len(written["parts"]["peer"]["runs"]) == 2  # written as each run finished


def test_bad_arguments_name_the_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--parts", "numerics,bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 2 and "--parts: unknown ['bogus']" in result.stderr
