"""benchmarks/bench_input_imagenet.py at the smallest size: every pipeline runs to the end and the
JSON line carries what docs/benchmarks.md quotes (rates per core, ours over tf.data by cores).
Rates are not checked: speed targets live in the benchmark's output, not in tests."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_input_imagenet.py"
PIPELINES = ("ours", "tfdata", "previous")


def test_every_pipeline_runs_and_the_json_line_names_the_ratio():
    args = ["--images", "8", "--batch", "4", "--batches", "1", "--rounds", "1", "--cores", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(row["pipeline"], row["cores"]) for row in report["rows"]] == [
        (name, 1) for name in PIPELINES
    ]
    assert all(row["images_per_s"] > 0 and len(row["rounds"]) == 1 for row in report["rows"])
    rate = {row["pipeline"]: row["images_per_s"] for row in report["rows"]}
    assert report["ours_images_per_sec_per_core"] == rate["ours"]
    assert report["tfdata_images_per_sec_per_core"] == rate["tfdata"]
    assert report["ours_over_tfdata_by_cores"] == {"1": round(rate["ours"] / rate["tfdata"], 3)}
    assert "Ours over tf.data (medians, same run), by cores: " in result.stdout
