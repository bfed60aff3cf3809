"""Test-wide JAX set-up: 8 simulated CPU devices and multi-core CPU convolutions.

Both settings must happen before JAX is first used, so they live here, at import time.
"""

import pathlib

import jax
import pytest

from alignmix_jax import cli

cli.configure_runtime()
jax.config.update("jax_num_cpu_devices", 8)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data, or skip the test when this machine has no local copies."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"local datasets not found at {SHARED_DATA}")
    return SHARED_DATA
