"""benchmarks/device_check.py --tiny: every part runs on a CPU and reports what it measured.

The real check runs on a GPU machine (see README, "On a GPU"); here the same code runs at small
shapes, so that the one prepared call there does not fail on a path never run before.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

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
        assert len(parts["peer"]["runs"]) == 4  # none and alignmixup, fp32 and bf16
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
    result, report, markdown = run_check(
        tmp_path, "--budget_s", "0.01", "--parts", "environment,numerics,training"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parts = report["parts"]
    for name in ("numerics", "training"):
        assert parts[name]["status"] == "skipped" and "budget" in parts[name]["reason"]
    assert "align_mix" not in parts  # not selected
    assert "| numerics | skipped |" in markdown


def test_watchdog_ends_an_overrunning_part_and_still_writes_the_report(tmp_path):
    write_jpeg_folder(tmp_path / "images")
    result, report, markdown = run_check(
        tmp_path / "out",
        *("--budget_s", "1", "--watchdog_grace_s", "1", "--parts", "environment,training"),
        *("--data", str(tmp_path / "images")),
    )
    assert result.returncode == 3, result.stderr[-3000:]  # the watchdog's exit status
    assert report["parts"]["environment"]["status"] == "ok"
    assert report["parts"]["training"]["status"] == "timed_out"
    assert "| training | timed_out |" in markdown


def test_bad_arguments_name_the_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--parts", "numerics,bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 2 and "--parts: unknown ['bogus']" in result.stderr
