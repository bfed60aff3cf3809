"""What every command shares: process set-up, `--config.<field>=<value>` overrides, logging, and
errors that end a command with one line instead of a traceback.

The commands (`python -m alignmix_jax.main | sweep | evaluate | visualize`) each define their flags
and call `run(main_fn)`. `configure_runtime()` must run before JAX starts its backend (the first
computation or device query: importing jax first is fine) and before TensorFlow is imported; the
benchmarks and the tests call it too.

The commands need the `train` extra: importing this module without it ends the process with one
line naming the extra (so every command imports `cli` before its other imports).
"""

import importlib.util
import os
import signal
import sys
from collections.abc import Callable

TRAIN_EXTRA = "pip install 'alignmix_jax[train]' (in a checkout: pip install -e '.[train]')"
# The top-level modules of the `train` extra's packages (pyproject.toml).
TRAIN_MODULES = (
    "absl", "flax", "optax", "ml_collections", "orbax", "grain", "scipy", "sklearn",
    "matplotlib", "PIL", "tqdm", "tensorboard",
)


def require_train_extra() -> None:
    """Ends the process with one line naming the `train` extra when one of its packages is not
    installed."""
    missing = [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"error: this command needs the 'train' extra, which is not installed (no module "
            f"{', '.join(missing)}): {TRAIN_EXTRA}"
        )


require_train_extra()

from absl import app, flags, logging  # noqa: E402

CPU_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
OVERRIDE_PREFIX = "--config."


def configure_runtime() -> None:
    """Multi-core CPU convolutions (XLA's YNN fusion, same numbers) unless `XLA_FLAGS` already sets
    it, and TensorFlow's C++ logs at warnings unless `TF_CPP_MIN_LOG_LEVEL` is set. Idempotent."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {CPU_FUSION_FLAG}".strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.a.b=value` arguments from the others: `(rest, {"a.b": "value"})`."""
    rest, overrides = [], {}
    for argument in argv:
        if argument.startswith(OVERRIDE_PREFIX):
            field, separator, value = argument[len(OVERRIDE_PREFIX) :].partition("=")
            if not separator:
                raise ValueError(f"argv: {argument!r} must read --config.<field>=<value>")
            overrides[field] = value
        else:
            rest.append(argument)
    return rest, overrides


def quiet_library_logs() -> None:
    """absl logging at WARNING unless `--verbosity` was given (orbax logs every checkpoint
    operation at INFO)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def define_run_flags() -> None:
    """`--workdir` and `--checkpoint`, for the commands that read a trained run."""
    from alignmix_jax.trainer import checkpointing

    flags.DEFINE_string("workdir", None, "Run directory written by the trainer.")
    flags.DEFINE_enum(
        "checkpoint", "best", list(checkpointing.CHECKPOINT_WHICH), "Which weights to load."
    )
    flags.mark_flag_as_required("workdir")


def run(main_fn: Callable[[dict[str, str]], None]) -> None:
    """Runs a command: `main_fn(overrides)` under absl after its flags are parsed, with the
    `--config.<field>=<value>` arguments as `{"field": "value"}` overrides.

    A ValueError (bad input) or a diverged training ends the command with `error: <message>` and
    status 1 (the traceback only with `--verbosity`); a run stopped by SIGTERM or SIGINT with its
    message and status 128 + the signal number; a Ctrl-C that stops it at once (before training
    starts, or a second one) with one line and status 130.
    """
    from alignmix_jax.trainer import divergence, stop_signals

    configure_runtime()
    try:
        sys.argv, overrides = split_config_overrides(sys.argv)
    except ValueError as error:
        sys.exit(f"error: {error}")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        quiet_library_logs()
        try:
            main_fn(overrides)
        except stop_signals.RunInterrupted as stop:
            print(stop, file=sys.stderr, flush=True)
            sys.exit(128 + signal.Signals[stop.signal_name].value)
        except KeyboardInterrupt:
            if flags.FLAGS["verbosity"].present:
                raise
            print("interrupted (SIGINT): stopped at once; a workdir resumes from its last "
                  "checkpoint", file=sys.stderr, flush=True)
            sys.exit(128 + signal.SIGINT.value)
        except (ValueError, divergence.TrainingDivergedError) as error:
            if flags.FLAGS["verbosity"].present:
                raise
            sys.exit(f"error: {error}")

    app.run(main)
