"""The persistent XLA compilation cache of training, evaluation and sweeps: a rerun, a resume after
preemption or a sweep's next point loads the executables compiled before instead of compiling again.

JAX keeps an executable when compiling it took at least `jax_persistent_cache_min_compile_time_secs`
(1 s by default), keyed by the program, the devices and the JAX and XLA versions.
"""

import os

import jax
from jax.experimental.compilation_cache import compilation_cache

DEFAULT_DIR = "~/.cache/alignmix_jax/xla"


def use_compilation_cache(directory: str | None) -> str | None:
    """Points JAX's persistent compilation cache at `directory` for the compilations to come.

    None: JAX's own setting when it has one (`JAX_COMPILATION_CACHE_DIR`), else `DEFAULT_DIR`;
    "": no cache. Returns the absolute directory in use, or None when the cache is off.
    """
    if directory is None:
        directory = jax.config.jax_compilation_cache_dir or DEFAULT_DIR
    path = os.path.abspath(os.path.expanduser(directory)) if directory else None
    wanted = (path is not None, path or jax.config.jax_compilation_cache_dir)
    if (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir) != wanted:
        jax.config.update("jax_enable_compilation_cache", wanted[0])
        jax.config.update("jax_compilation_cache_dir", wanted[1])
        compilation_cache.reset_cache()  # the cache reads its settings once, at first use
    return path
