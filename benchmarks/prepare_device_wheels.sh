#!/usr/bin/env bash
# Prepares what a call of benchmarks/device_check.py on a lent GPU machine carries (docs/accelerators.md, "On a GPU"):
#   .whl/     the wheels that machine lacks (benchmarks/device_wheels.txt, for Python 3.12 on
#             manylinux x86_64), downloaded here with pip;
#   .device/  copies of ../shared/data/cifar10_jpg/CIFAR-10-images.tar.gz and ../shared/peers/
#             torch_official_step.py (../shared does not travel with the working tree).
# Both folders are ignored by git (.gitignore) and together stay well under the 64 MiB a call carries.
#
#   bash benchmarks/prepare_device_wheels.sh            # PYTHON=... and SHARED=... to override
#   WHEEL_DIR=DIR WHEELS_ONLY=1 bash benchmarks/prepare_device_wheels.sh   # only the wheels, in DIR
#                                                       # (.ci/rehearse_gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
WHEEL_DIR=${WHEEL_DIR:-.whl}
mapfile -t WHEELS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/device_wheels.txt | grep .)
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf "$WHEEL_DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$WHEEL_DIR" "${WHEELS[@]}"
if [ "$(ls "$WHEEL_DIR"/*.whl | wc -l)" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels in $WHEEL_DIR, got: $(ls "$WHEEL_DIR")" >&2
  exit 1
fi
[ -z "${WHEELS_ONLY:-}" ] || exit 0

mkdir -p .device
cp "$SHARED/data/cifar10_jpg/CIFAR-10-images.tar.gz" "$SHARED/peers/torch_official_step.py" .device/
du -sh .whl .device
echo "carry: [\".whl\", \".device\"]"
