"""Test-wide JAX set-up: 8 simulated CPU devices and multi-core CPU convolutions.

Both settings must happen before JAX is first used, so they live here, at import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "ynn_fusion" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data, or skip the test when this machine has no local copies."""
    if not SHARED_DATA.is_dir():
      pytest.skip(f"local datasets not found at {SHARED_DATA}")
    return SHARED_DATA
