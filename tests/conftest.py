"""Test-wide JAX set-up: 8 simulated CPU devices, multi-core CPU convolutions, quick compiles.

These settings must happen before JAX is first used, so they live here, at import time. The tests
compile far more programs than they run steps of, so XLA's CPU backend compiles them without its
expensive optimisations (a third less time for the suite; the programs compute the same numbers
up to the float32 rounding that the tests' tolerances allow for). Child processes inherit the
flags through the environment.

The many short training runs launched as child processes compile the same programs again; a
persistent compilation cache, fresh for each session of the suite (each pytest-xdist worker of
`make test` has its own), lets them reuse what an earlier one compiled (the same executables, so the
same numbers).
"""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

from alignmix_jax import cli

QUICK_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# 8 simulated devices share the CPU's intra-op thread pool (2 threads on a 2-core machine). With it,
# a device whose work finishes on a pool thread runs on into the next collective there and blocks
# that thread until every device arrives; once every pool thread is so blocked, a device still
# waiting for a pool thread never arrives, and after 40 s XLA aborts the process ("Termination
# timeout for `all gather` ... only 7 of them arrived"), seen in about 1 Fashion-MNIST run in 3 on
# a loaded 2-core machine. Single-threaded kernels keep each device on its own thread. YNNPACK
# fusions (`cli.CPU_FUSION_FLAG`) run on the same pool and starve the devices the same way (the
# Fashion-MNIST run aborted so in its eval step, beside other jobs): the suite runs without them
# (an empty fusion list; `cli.configure_runtime` keeps a value XLA_FLAGS already holds).
DEVICE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false --xla_cpu_experimental_ynn_fusion_type="
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), QUICK_COMPILE_FLAGS, DEVICE_THREAD_FLAGS]
).strip()
cli.configure_runtime()
COMPILATION_CACHE = {
    "jax_compilation_cache_dir": tempfile.mkdtemp(prefix="alignmix_jax_test_compiles_"),
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}
for option, value in COMPILATION_CACHE.items():
    jax.config.update(option, value)
    os.environ[option.upper()] = str(value)  # for the child processes (see cli_runs.environment)
atexit.register(shutil.rmtree, COMPILATION_CACHE["jax_compilation_cache_dir"], ignore_errors=True)
jax.config.update("jax_num_cpu_devices", 8)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data, or skip the test when this machine has no local copies."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"local datasets not found at {SHARED_DATA}")
    return SHARED_DATA
