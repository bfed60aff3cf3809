#!/usr/bin/env bash
# The base install (`pip install alignmix_jax`, no extras) is the op API alone: in a fresh virtual
# environment it runs the README's align_mix snippet and a jax.grad through align_mix, holds no
# flax and no tensorflow-datasets, and a command there fails with one line naming the `train`
# extra. Prints the install's wall time, size and package count (README, "Installing").
#
#   bash .ci/check_base_install.sh          # PYTHON=... to pick the interpreter (python3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VENV=$WORK/venv

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -c requirements.txt "$REPO"
install_s=$(( $(date +%s) - start ))
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
size=$(du -sh "$site" | cut -f1)
count=$("$VENV/bin/python" -m pip list --format=freeze | grep -vc '^pip==')

cd "$WORK"  # away from the checkout: the installed package is the one imported
# The README's snippet, as written there.
awk '/^## `align_mix` in your own JAX code/{s=1} s&&/^```python/{p=1;next} p&&/^```/{exit} p' \
  "$REPO/README.md" > snippet.py
grep -q "align_mix" snippet.py
"$VENV/bin/python" snippet.py
"$VENV/bin/python" - <<'PY'
import importlib.util

import jax
import jax.numpy as jnp

import alignmix_jax
from alignmix_jax import align_mix

assert alignmix_jax.__file__.find("site-packages") > 0, alignmix_jax.__file__
# (optax comes with ott-jax.)
for package in ("flax", "tensorflow_datasets", "tensorflow", "grain", "orbax"):
    assert importlib.util.find_spec(package) is None, f"{package} is in the base install"

# jax.grad through align_mix: the plan is stop-gradient, so in direction 0
# (lam*A + (1-lam)*R@A') d sum(sin(mix)) / dA is lam * cos(mix), and d / dA' is nonzero.
ka, kb = jax.random.split(jax.random.key(0))
a = jax.random.normal(ka, (2, 3, 3, 8))
b = jax.random.normal(kb, (2, 3, 3, 8))
loss = lambda a, b: jnp.sum(jnp.sin(align_mix(a, b, 0.3, direction=0)))  # noqa: E731
grad_a, grad_b = jax.grad(loss, argnums=(0, 1))(a, b)
expected = 0.3 * jnp.cos(align_mix(a, b, 0.3, direction=0))
assert jnp.allclose(grad_a, expected, atol=1e-5), float(jnp.abs(grad_a - expected).max())
assert jnp.all(jnp.isfinite(grad_b)) and float(jnp.abs(grad_b).max()) > 0.1
print("base install: the README snippet and jax.grad through align_mix ok")
PY

set +e
message=$("$VENV/bin/python" -m alignmix_jax.main --workdir "$WORK/run" 2>&1)
status=$?
set -e
if [ "$status" -ne 1 ] || [ "$(printf '%s\n' "$message" | wc -l)" -ne 1 ] \
  || [[ "$message" != *"pip install 'alignmix_jax[train]'"* ]]; then
  echo "expected one line naming the train extra and status 1, got $status: $message" >&2
  exit 1
fi
echo "base install: python -m alignmix_jax.main says: $message"
echo "base install: $count packages, $size in site-packages, installed in ${install_s} s" \
  "(Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
