"""Runs `python -m MODULE ARGS...` or `python -c CODE` as on a machine without TensorFlow.

    python tests/without_tensorflow.py alignmix_jax.main --config experiments/quickstart.py ...
    python tests/without_tensorflow.py -c "import alignmix_jax.trainer.train"

Every import finder is wrapped so that it does not find `tensorflow` or its submodules: `import
tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec("tensorflow")` is None, as
when the package is absent (libraries that probe for TensorFlow take their no-TensorFlow path).
Exits with the program's status, or with TENSORFLOW_LOADED_STATUS when a TensorFlow module got
loaded all the same.
"""

import runpy
import sys

HIDDEN = "tensorflow"
TENSORFLOW_LOADED_STATUS = 3


class _HidingFinder:
    """An import finder that answers None for `tensorflow[.*]` and defers to `finder` otherwise."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        find_spec = getattr(self._finder, "find_spec", None)
        if name.partition(".")[0] == HIDDEN or find_spec is None:
            return None
        return find_spec(name, path, target)

    def __getattr__(self, attribute):  # invalidate_caches, find_distributions, ...
        return getattr(self._finder, attribute)


def loaded_tensorflow_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.partition(".")[0] == HIDDEN)


def run(argv: list[str]) -> None:
    """`argv` = [MODULE, ARGS...] (as `python -m`) or ["-c", CODE, ARGS...] (as `python -c`)."""
    if argv[0] == "-c":
        code, sys.argv = argv[1], ["-c", *argv[2:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = argv
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1:] == ["-c"]:
        raise SystemExit(f"usage: {sys.argv[0]} MODULE [ARGS...] | -c CODE [ARGS...]")
    sys.meta_path[:] = [_HidingFinder(finder) for finder in sys.meta_path]
    try:
        run(sys.argv[1:])
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    loaded = loaded_tensorflow_modules()
    if loaded:
        print(f"TensorFlow modules were loaded: {loaded[:5]}", file=sys.stderr)
        return TENSORFLOW_LOADED_STATUS
    return status


if __name__ == "__main__":
    sys.exit(main())
