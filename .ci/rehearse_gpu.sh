#!/usr/bin/env bash
# Rehearses the GPU machine's call (docs/accelerators.md, "On a GPU") on this CPU, so that the first run
# there is not the first time this combination runs: a fresh Python 3.12 environment holding what the GPU
# image holds (benchmarks/gpu_image.txt: jax 0.11.2, numpy 2.5.2, flax, ...; no TensorFlow, no
# tensorflow-datasets), the wheels that call carries (benchmarks/prepare_device_wheels.sh, from
# benchmarks/device_wheels.txt) installed as the machine's instructions say (--no-deps --target,
# PYTHONPATH), then benchmarks/device_check.py --tiny to the end, on a small JPEG image folder.
# Needs Python 3.12 on x86_64 Linux: python3.12 on PATH, pyenv's 3.12, or GPU_PYTHON=...; without
# it the rehearsal is skipped with a loud line, except under REQUIRE_GPU_REHEARSAL=1 (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
is_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
if [ -z "${GPU_PYTHON:-}" ]; then
  for candidate in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12; do
    if is_312 "$candidate"; then GPU_PYTHON=$candidate; break; fi
  done
fi
if [ -z "${GPU_PYTHON:-}" ] || ! is_312 "$GPU_PYTHON"; then
  echo "rehearse_gpu: NOT RUN: needs Python 3.12, the GPU machine's (jax 0.11.2 and numpy 2.5.2" \
    "need it): put python3.12 on PATH or set GPU_PYTHON" >&2
  # CI (.ci/run sets REQUIRE_GPU_REHEARSAL=1) must rehearse; elsewhere a loud skip.
  [ "${REQUIRE_GPU_REHEARSAL:-0}" = 1 ] && exit 1
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VENV=$WORK/venv
seconds() { echo $(( $(date +%s) - $1 )); }

start=$(date +%s)
"$GPU_PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r benchmarks/gpu_image.txt
"$VENV/bin/python" - <<'PY'
import importlib.util
absent = ["tensorflow", "tensorflow_datasets", "ott", "jaxopt", "ml_collections", "grain",
          "array_record", "portpicker"]
present = [name for name in absent if importlib.util.find_spec(name) is not None]
assert not present, f"the GPU image does not hold {present}"
PY
image_s=$(seconds "$start")

start=$(date +%s)
WHEEL_DIR=$WORK/whl WHEELS_ONLY=1 PYTHON=$VENV/bin/python bash benchmarks/prepare_device_wheels.sh
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$WORK/site" "$WORK"/whl/*.whl
wheels_s=$(seconds "$start")

# A small CIFAR-10-like JPEG folder for the training part: {train,test}/{dark,light}/*.jpg.
"$VENV/bin/python" - "$WORK/images" <<'PY'
import pathlib, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 40), ("test", 10)):
    for label, name in enumerate(("dark", "light")):
        folder = pathlib.Path(sys.argv[1], split, name)
        folder.mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 100, (32, 32, 3)) + 150 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{k}.jpg")
PY

start=$(date +%s)
PYTHONPATH=$WORK/site:$REPO PYTHONUNBUFFERED=1 "$VENV/bin/python" benchmarks/device_check.py \
  --tiny --out "$WORK/out" --data "$WORK/images" > "$WORK/check.log" 2>&1 \
  || { tail -50 "$WORK/check.log" >&2; echo "rehearse_gpu: device_check.py --tiny failed" >&2; exit 1; }
check_s=$(seconds "$start")
"$VENV/bin/python" - "$WORK/out/device_check.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
statuses = {name: part["status"] for name, part in report["parts"].items()}
expected = {"environment": "ok", "numerics": "ok", "align_mix": "ok", "train_step": "ok",
            "peer": "skipped", "training": "ok"}
reasons = {name: part.get("reason") for name, part in report["parts"].items()}
assert statuses == expected, (statuses, reasons)
versions = report["parts"]["environment"]["versions"]
assert (versions["jax"], versions["numpy"], report["parts"]["environment"]["python"][:4]) == (
    "0.11.2", "2.5.2", "3.12"), versions
print("rehearse_gpu: device_check --tiny ran every part:", statuses)
PY
echo "rehearse_gpu: Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'):" \
  "image ${image_s} s, carried wheels ${wheels_s} s, device_check --tiny ${check_s} s"
