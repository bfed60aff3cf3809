"""Runs an ablation: every point of a config file's `get_sweep()`, one workdir per point.

    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR
    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR \
        --print_commands      # one `python -m alignmix_jax.main ...` line per point, for a cluster

The config file defines `get_config()` (the base) and `get_sweep()`, a list of dicts of dotted
overrides ({"mix.epsilon": 0.5}). Points whose workdir holds a summary are skipped, so rerunning
resumes the sweep (and, after the printed commands ran elsewhere, just collects their results).
Writes DIR/results.csv and DIR/results.md: final and best test top-1, best step and images/s.
"""

from alignmix_jax import runtime

runtime.configure()  # before JAX starts its backend and before TensorFlow is imported

import copy  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from alignmix_jax import experiment_config, logging_utils  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """--config (an ablation file), --workdir and --print_commands."""
    flags.DEFINE_string("config", None, "Ablation config file: path.py[:argument].")
    flags.DEFINE_string("workdir", None, "Sweep directory; one subdirectory per point.")
    flags.DEFINE_bool(
        "print_commands", False, "Print one training command per point instead of running them."
    )
    flags.mark_flags_as_required(["config", "workdir"])


RESULT_COLUMNS = (
    "point",
    "overrides",
    "final_top1",
    "best_top1",
    "best_step",
    "images_per_sec",
    "steps",
)


def point_name(index: int, overrides: dict) -> str:
    """Directory name of a sweep point: its index and its overrides, filesystem-safe."""
    parts = [f"{key.split('.')[-1]}={value}" for key, value in overrides.items()]
    text = "_".join(parts) or "base"
    return f"{index:02d}_" + re.sub(r"[^A-Za-z0-9=.,+_-]+", "-", text).strip("-")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict
) -> ml_collections.ConfigDict:
    """Returns a locked copy of `config` with dotted `overrides` applied; unknown or mistyped
    fields -> ValueError naming `config.<field>`."""
    config = copy.deepcopy(config)
    config.lock()
    for key, value in overrides.items():
        try:
            config.update_from_flattened_dict({key: value})
        except (KeyError, TypeError) as error:
            raise ValueError(f"sweep override config.{key} = {value!r}: {error}") from error
    return config


def sweep_points(module, argument: str | None) -> list[tuple[str, dict, ml_collections.ConfigDict]]:
    """[(point name, overrides, config)] of an ablation module, every config already overridden."""
    base = module.get_config(argument) if argument else module.get_config()
    sweep = module.get_sweep()
    if not sweep:
        raise ValueError("get_sweep() returned no points; expected a list of override dicts")
    return [
        (point_name(index, overrides), overrides, apply_overrides(base, overrides))
        for index, overrides in enumerate(sweep)
    ]


def training_command(config_spec: str, workdir: pathlib.Path, overrides: dict) -> str:
    """The `python -m alignmix_jax.main` command line that trains one sweep point."""
    words = ["python", "-m", "alignmix_jax.main", f"--config={config_spec}", f"--workdir={workdir}"]
    for key, value in overrides.items():
        words.append(f"--config.{key}={value}")
    return " ".join(shlex.quote(word) for word in words)


def read_summary(point_dir: pathlib.Path) -> dict | None:
    """The summary.json of a finished point, or None."""
    from alignmix_jax.train import SUMMARY_FILE

    path = point_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_results(workdir: pathlib.Path, rows: list[dict]) -> None:
    """Writes rows (RESULT_COLUMNS) to workdir/results.csv and a Markdown table to results.md."""
    with (workdir / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = [
        "| " + " | ".join(RESULT_COLUMNS) + " |",
        "|" + "---|" * len(RESULT_COLUMNS),
        *("| " + " | ".join(cell(row[column]) for column in RESULT_COLUMNS) + " |" for row in rows),
    ]
    (workdir / "results.md").write_text("\n".join(lines) + "\n")


def run_sweep(
    config_spec: str,
    workdir,
    train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path], dict] | None = None,
) -> list[dict]:
    """Trains every unfinished point of the ablation `config_spec` and writes the results tables.

    Args:
      config_spec: `path.py[:argument]` of a file with `get_config()` and `get_sweep()`.
      workdir: sweep directory; point k trains in `workdir/<point name>`.
      train_fn: `(config, point_workdir) -> summary`, default `train.train_and_evaluate`.

    Returns:
      One row per point: RESULT_COLUMNS (accuracies in %).
    """
    if train_fn is None:
        from alignmix_jax.train import train_and_evaluate as train_fn
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    module, argument = experiment_config.load_config_module(
        config_spec, ("get_config", "get_sweep")
    )
    rows = []
    for name, overrides, config in sweep_points(module, argument):
        point_dir = workdir / name
        summary = read_summary(point_dir)
        if summary is None:
            print(f"[sweep] training {name}", flush=True)
            summary = train_fn(config, point_dir)
        else:
            print(f"[sweep] {name} already finished, skipped", flush=True)
        rows.append(
            {
                "point": name,
                "overrides": json.dumps(overrides, sort_keys=True),
                **{column: summary[column] for column in RESULT_COLUMNS[2:]},
            }
        )
        write_results(workdir, rows)
    return rows


def print_commands(config_spec: str, workdir) -> list[str]:
    """Prints (and returns) one training command per sweep point."""
    module, argument = experiment_config.load_config_module(
        config_spec, ("get_config", "get_sweep")
    )
    commands = [
        training_command(config_spec, pathlib.Path(workdir) / name, overrides)
        for name, overrides, _ in sweep_points(module, argument)
    ]
    print("\n".join(commands))
    return commands


def main(argv: list[str]) -> None:
    """Entry point after flag parsing."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging_utils.quiet_library_logs()
    try:
        if FLAGS.print_commands:
            print_commands(FLAGS.config, FLAGS.workdir)
        else:
            rows = run_sweep(FLAGS.config, FLAGS.workdir)
            print((pathlib.Path(FLAGS.workdir) / "results.md").read_text())
            print(f"[sweep] {len(rows)} points; results in {FLAGS.workdir}/results.csv")
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
