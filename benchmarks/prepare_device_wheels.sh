#!/usr/bin/env bash
# Prepares what a call of benchmarks/device_check.py on a lent GPU machine carries (README, "On a GPU"):
#   .whl/     the wheels that machine lacks (Python 3.12, manylinux x86_64), downloaded here with pip;
#   .device/  copies of ../shared/data/cifar10_jpg/CIFAR-10-images.tar.gz and ../shared/peers/
#             torch_official_step.py (../shared does not travel with the working tree).
# Both folders are ignored by git (.gitignore) and together stay well under the 64 MiB a call carries.
#
#   bash benchmarks/prepare_device_wheels.sh            # PYTHON=... and SHARED=... to override
#
# The machine has jax 0.11.2 with its CUDA 13 plugin, flax, optax, orbax-checkpoint, chex, numpy,
# scipy, scikit-learn, matplotlib, pillow, tqdm, tensorboard, absl-py, etils, cloudpickle, protobuf,
# psutil, pyyaml, lineax and equinox. Missing, with what needs them:
#   ott-jax (Sinkhorn) -> jaxopt;  ml-collections (configs);
#   grain (input pipelines) -> array-record, portpicker.
# (tensorflow-datasets is not needed: the check reads CIFAR-10 as an image folder.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
WHEELS=(
  ott-jax==0.6.0
  jaxopt==0.8.5
  ml-collections==1.1.0
  grain==0.2.18
  array-record==0.8.6
  portpicker==1.6.0
)
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
if [ "$(ls .whl/*.whl | wc -l)" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels in .whl, got: $(ls .whl)" >&2
  exit 1
fi

mkdir -p .device
cp "$SHARED/data/cifar10_jpg/CIFAR-10-images.tar.gz" "$SHARED/peers/torch_official_step.py" .device/
du -sh .whl .device
echo "carry: [\".whl\", \".device\"]"
