"""Trains and evaluates one experiment config.

    python -m alignmix_jax.main --config experiments/cifar10_preactresnet18.py --workdir DIR
    python -m alignmix_jax.main --config experiments/quickstart.py:smoke --workdir DIR \
        --config.mix.epsilon=0.5
    python -m alignmix_jax.main --config ... --workdir SHARED_DIR --config.distributed=True \
        --config.distributed_coordinator=HOST0:PORT --config.distributed_num_processes=N \
        --config.distributed_process_id=I      # on each host I; omit the last three on a cluster

Rerunning the same command on the same workdir resumes from its latest checkpoint; with a changed
config it refuses (listing the changes) unless `--accept_config_changes` is given. SIGTERM or SIGINT
(a preemption, Ctrl-C) stops after the current step with a checkpoint there, exit status 128 + the
signal number; a NaN or infinite loss stops the run naming the step (exit status 1).
"""

from alignmix_jax import runtime

runtime.configure()  # before JAX starts its backend and before TensorFlow is imported

import signal  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from alignmix_jax import experiment_config, logging_utils, train  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """--config (ml_collections config file with `--config.<field>=` overrides) and --workdir."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, optionally with an argument: path.py[:smoke].",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
    flags.DEFINE_bool(
        "accept_config_changes",
        False,
        "Resume a run whose config.json differs from --config (the changes are recorded).",
    )
    flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(config) -> None:
    """`jax.distributed.initialize` from `config.distributed_{coordinator,num_processes,
    process_id}`; unset fields are auto-detected (Slurm, Open MPI, Cloud TPU, Kubernetes)."""
    experiment_config.validate_distributed_config(config)
    try:
        jax.distributed.initialize(
            coordinator_address=config.distributed_coordinator,
            num_processes=config.distributed_num_processes,
            process_id=config.distributed_process_id,
        )
    except ValueError as error:
        raise ValueError(
            "config.distributed = True, but jax.distributed.initialize failed: "
            f"{str(error).rstrip('.')}; expected "
            "a cluster that JAX detects, or --config.distributed_coordinator=HOST:PORT, "
            "--config.distributed_num_processes and --config.distributed_process_id"
        ) from error


def main(argv: list[str]) -> None:
    """Entry point after flag parsing: optional multi-host set-up, then train_and_evaluate."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging_utils.quiet_library_logs()
    config = FLAGS.config
    try:
        if config.distributed:
            initialize_distributed(config)
        experiment_config.validate_config(config, jax.device_count(), jax.process_count())
        train.train_and_evaluate(
            config, FLAGS.workdir, accept_config_changes=FLAGS.accept_config_changes
        )
    except train.RunInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        sys.exit(128 + signal.Signals[stop.signal_name].value)
    except (ValueError, train.TrainingDivergedError) as error:
        if FLAGS["verbosity"].present:
            raise
        sys.exit(f"error: {error}")


def _config_spec(argv: list[str]) -> str | None:
    """The value of `--config=SPEC` or `--config SPEC` in `argv`, else None."""
    for index, argument in enumerate(argv):
        if argument.startswith("--config="):
            return argument.split("=", 1)[1]
        if argument == "--config" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def run() -> None:
    """Checks `--config.*` override names against the config file, then runs absl's app."""
    config_spec = _config_spec(sys.argv[1:])
    if config_spec is not None:
        try:
            experiment_config.check_override_fields(
                experiment_config.load_config(config_spec), sys.argv[1:]
            )
        except ValueError as error:
            sys.exit(f"error: {error}")
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
