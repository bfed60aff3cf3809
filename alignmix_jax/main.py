r"""Trains and evaluates one experiment config.

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

from alignmix_jax import cli  # first: one line naming the `train` extra when it is missing

# isort: split
import jax
from absl import flags

from alignmix_jax.trainer import experiment_config, train

FLAGS = flags.FLAGS


def define_flags() -> None:
    """--config (an experiment file, `path.py[:argument]`), --workdir, --accept_config_changes."""
    flags.DEFINE_string(
        "config", None, "Experiment config file, optionally with an argument: path.py[:smoke]."
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


def train_command(overrides: dict[str, str]) -> None:
    """Loads --config with its overrides, sets up several hosts when asked, trains (which checks
    the config before anything heavy)."""
    config = experiment_config.apply_overrides(
        experiment_config.load_config(FLAGS.config), overrides
    )
    if config.distributed:
        initialize_distributed(config)
    train.train_and_evaluate(
        config, FLAGS.workdir, accept_config_changes=FLAGS.accept_config_changes
    )


if __name__ == "__main__":
    define_flags()
    cli.run(train_command)
