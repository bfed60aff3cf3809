"""Process-wide settings shared by the command-line tools, the benchmarks and the tests.

`configure()` must run before JAX starts its backend (the first computation or device query:
XLA reads `XLA_FLAGS` then, so importing jax first is fine) and before TensorFlow is imported.
"""

import os

CPU_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"


def configure() -> None:
    """Multi-core CPU convolutions (XLA's YNN fusion, same numbers) unless `XLA_FLAGS` already sets
    it, and TensorFlow's C++ logs at warnings unless `TF_CPP_MIN_LOG_LEVEL` is set. Idempotent."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {CPU_FUSION_FLAG}".strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
