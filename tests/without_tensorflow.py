"""Runs `python -m MODULE ARGS...` or `python -c CODE` as on a machine without TensorFlow, and
with `--without_tfds` also without tensorflow-datasets (as on the GPU machine).

    python tests/without_tensorflow.py alignmix_jax.main --config experiments/quickstart.py ...
    python tests/without_tensorflow.py --without_tfds -c "import alignmix_jax.trainer.train"

Every import finder is wrapped so that it does not find the hidden packages (`tensorflow`, and
`tensorflow_datasets` with `--without_tfds`) or their submodules: `import tensorflow` raises
ModuleNotFoundError and `importlib.util.find_spec("tensorflow")` is None, as when the package is
absent (libraries that probe for TensorFlow take their no-TensorFlow path). Exits with the
program's status, or with TENSORFLOW_LOADED_STATUS when a hidden module got loaded all the same.
"""

import runpy
import sys

TENSORFLOW = "tensorflow"
TFDS = "tensorflow_datasets"
WITHOUT_TFDS = "--without_tfds"
TENSORFLOW_LOADED_STATUS = 3
hidden = {TENSORFLOW}


class _HidingFinder:
    """An import finder that answers None for the `hidden` packages and their submodules and
    defers to `finder` otherwise."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        find_spec = getattr(self._finder, "find_spec", None)
        if name.partition(".")[0] in hidden or find_spec is None:
            return None
        return find_spec(name, path, target)

    def __getattr__(self, attribute):  # invalidate_caches, find_distributions, ...
        return getattr(self._finder, attribute)


def loaded_hidden_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.partition(".")[0] in hidden)


def run(argv: list[str]) -> None:
    """`argv` = [MODULE, ARGS...] (as `python -m`) or ["-c", CODE, ARGS...] (as `python -c`)."""
    if argv[0] == "-c":
        code, sys.argv = argv[1], ["-c", *argv[2:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = argv
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == [WITHOUT_TFDS]:
        hidden.add(TFDS)
        argv = argv[1:]
    if not argv or argv == ["-c"]:
        raise SystemExit(
            f"usage: {sys.argv[0]} [{WITHOUT_TFDS}] MODULE [ARGS...] | -c CODE [ARGS...]"
        )
    sys.meta_path[:] = [_HidingFinder(finder) for finder in sys.meta_path]
    try:
        run(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):  # sys.exit("message"), as Python shows it
            print(exit_.code, file=sys.stderr)
    loaded = loaded_hidden_modules()
    if loaded:
        print(f"hidden modules were loaded: {loaded[:5]}", file=sys.stderr)
        return TENSORFLOW_LOADED_STATUS
    return status


if __name__ == "__main__":
    sys.exit(main())
