r"""Runs an ablation: every point of a config file's `get_sweep()`, one workdir per point.

    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR
    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR --seeds 3
    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py:smoke --workdir DIR \
        --config.num_train_steps=20     # a quick check: every point 20 steps on the smoke config
    python -m alignmix_jax.sweep --config experiments/ablations/epsilon.py --workdir DIR \
        --print_commands      # one `python -m alignmix_jax.main ...` line per run, for a cluster

The config file defines `get_config()` (the base) and `get_sweep()`, a list of dicts of dotted
overrides ({"mix.epsilon": 0.5}), and may define `get_seeds()`, the seeds every point runs with
(`--seeds N` runs seeds 0..N-1 instead; default: the base config's seed). `--config.<field>=<value>`
overrides change the base config of every point (not the fields the points set, nor the seed).
Each point and seed trains
in DIR/<point>/seed<seed>, seed by seed (every point of the first seed before the second seed), so
a partial sweep covers every point. Runs whose workdir holds a summary are skipped, so rerunning
resumes the sweep (and, after the printed commands ran elsewhere, just collects their results).
Writes DIR/results.csv, one row per run (point, seed, test top-1 final / best / median of the
last evals, with a validation split its best top-1 and the test top-1 at that step, images/s, wall
time across resumes and the machine it trained on), and DIR/results.md, per point and accuracy
the mean, standard deviation and 95% confidence interval (Student t) over the seeds (not images/s:
on a shared machine it measures the load more than the method).
"""

from alignmix_jax import cli  # first: one line naming the `train` extra when it is missing

# isort: split
import csv
import json
import pathlib
import re
import shlex
from collections.abc import Callable

import ml_collections
from absl import flags

from alignmix_jax.analysis import sweep_comparison
from alignmix_jax.trainer import experiment_config

FLAGS = flags.FLAGS


def define_flags() -> None:
    """--config (an ablation file), --workdir, --seeds and --print_commands."""
    flags.DEFINE_string("config", None, "Ablation config file: path.py[:argument].")
    flags.DEFINE_string("workdir", None, "Sweep directory; one subdirectory per point and seed.")
    flags.DEFINE_integer(
        "seeds", None, "Run every point with seeds 0..N-1 (default: the file's get_seeds())."
    )
    flags.DEFINE_bool(
        "print_commands", False, "Print one training command per run instead of running them."
    )
    flags.mark_flags_as_required(["config", "workdir"])


METRICS = (  # the accuracies results.md summarises over seeds
    "final_top1",
    "best_top1",
    "median_last_top1",
    "validation_best_top1",
    "test_top1_at_best_validation",
)
RESULT_COLUMNS = (
    "point", "overrides", "seed", *METRICS, "images_per_sec", "best_step", "steps",
    "wall_time_sec", "machine",
)


def point_name(index: int, overrides: dict) -> str:
    """Directory name of a sweep point: its index and its overrides, filesystem-safe."""
    parts = [f"{key.split('.')[-1]}={value}" for key, value in overrides.items()]
    text = "_".join(parts) or "base"
    return f"{index:02d}_" + re.sub(r"[^A-Za-z0-9=.,+_-]+", "-", text).strip("-")


def sweep_seeds(module, base: ml_collections.ConfigDict, num_seeds: int | None) -> list[int]:
    """The seeds every point runs with: 0..num_seeds-1, else the module's `get_seeds()`, else
    the base config's seed."""
    if num_seeds is not None:
        if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"seeds must be a positive number of seeds, got {num_seeds!r}")
        return list(range(num_seeds))
    if callable(getattr(module, "get_seeds", None)):
        seeds = list(module.get_seeds())
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ValueError(f"get_seeds() must return non-negative ints, got {seeds!r}")
        return seeds
    return [int(base.seed)]


def sweep_runs(module, argument: str | None, num_seeds: int | None = None,
               base_overrides: dict | None = None):
    """[(run directory relative to the sweep, point name, seed, overrides, config)] of an ablation
    module, seed by seed, every config already overridden (`base_overrides`, then the point's and
    the seed). A base override of a field that a point or the seed sets is a ValueError."""
    base = module.get_config(argument) if argument else module.get_config()
    sweep = module.get_sweep()
    if not sweep:
        raise ValueError("get_sweep() returned no points; expected a list of override dicts")
    swept = {"seed", *(key for overrides in sweep for key in overrides)}
    clashes = sorted(swept & set(base_overrides or {}))
    if clashes:
        raise ValueError(
            f"--config.{clashes[0]}: the sweep sets this field itself (its points, or --seeds "
            "for the seed); expected overrides of other fields"
        )
    base = experiment_config.apply_overrides(base, base_overrides)
    points = [(point_name(index, overrides), overrides) for index, overrides in enumerate(sweep)]
    return [
        (pathlib.Path(name) / f"seed{seed}", name, seed, overrides,
         experiment_config.apply_overrides(base, {**overrides, "seed": seed}))
        for seed in sweep_seeds(module, base, num_seeds)
        for name, overrides in points
    ]


def training_command(config_spec: str, workdir: pathlib.Path, overrides: dict) -> str:
    """The `python -m alignmix_jax.main` command line that trains one sweep run."""
    words = ["python", "-m", "alignmix_jax.main", f"--config={config_spec}", f"--workdir={workdir}"]
    for key, value in overrides.items():
        words.append(f"--config.{key}={value}")
    return " ".join(shlex.quote(word) for word in words)


def read_summary(run_dir: pathlib.Path) -> dict | None:
    """The summary.json of a finished run, or None."""
    from alignmix_jax.trainer.train import SUMMARY_FILE

    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_results(workdir: pathlib.Path, rows: list[dict]) -> None:
    """Writes every run's row to workdir/results.csv and, per point, the mean, standard deviation
    and 95% confidence interval over seeds of each metric to workdir/results.md."""
    with (workdir / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=RESULT_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    metrics = [m for m in METRICS if any(row.get(m) is not None for row in rows)]
    lines = [
        "Mean +- 95% confidence interval (Student t) over seeds; standard deviation in brackets.",
        "",
        "| point | overrides | seeds | " + " | ".join(metrics) + " |",
        "|" + "---|" * (3 + len(metrics)),
    ]
    for point in dict.fromkeys(row["point"] for row in rows):
        runs = [row for row in rows if row["point"] == point]
        cells = []
        for metric in metrics:
            values = [row[metric] for row in runs]
            mean, std, half_width = sweep_comparison.mean_and_interval(values)
            cells.append(
                f"{mean:.2f}" if len(runs) < 2 else f"{mean:.2f} +- {half_width:.2f} ({std:.2f})"
            )
        seeds = ",".join(str(row["seed"]) for row in runs)
        lines.append(f"| {point} | {runs[0]['overrides']} | {seeds} | " + " | ".join(cells) + " |")
    (workdir / "results.md").write_text("\n".join(lines) + "\n")


def run_sweep(
    config_spec: str,
    workdir,
    train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path], dict] | None = None,
    num_seeds: int | None = None,
    base_overrides: dict | None = None,
) -> list[dict]:
    """Trains every unfinished run of the ablation `config_spec` and writes the results tables.

    Args:
      config_spec: `path.py[:argument]` of a file with `get_config()` and `get_sweep()`.
      workdir: sweep directory; the run of point p and seed s trains in `workdir/p/seed<s>`.
      train_fn: `(config, run_workdir) -> summary`, default `train.train_and_evaluate`.
      num_seeds: run seeds 0..num_seeds-1 (default: the file's `get_seeds()` or the config's).
      base_overrides: {"dotted.field": value} applied to the base config of every point.

    Returns:
      One row per finished run: RESULT_COLUMNS (accuracies in %).
    """
    if train_fn is None:
        from alignmix_jax.trainer.train import train_and_evaluate as train_fn
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    module, argument = experiment_config.load_config_module(
        config_spec, ("get_config", "get_sweep")
    )
    rows = []
    runs = sweep_runs(module, argument, num_seeds, base_overrides)
    for run_dir, name, seed, overrides, config in runs:
        summary = read_summary(workdir / run_dir)
        if summary is None:
            print(f"[sweep] training {run_dir}", flush=True)
            summary = train_fn(config, workdir / run_dir)
        else:
            print(f"[sweep] {run_dir} already finished, skipped", flush=True)
        flat = {f"validation_{k}": v for k, v in summary.get("validation", {}).items()}
        flat.update(summary)
        rows.append(
            {
                "point": name,
                "overrides": json.dumps(overrides, sort_keys=True),
                "seed": seed,
                **{column: flat.get(column) for column in RESULT_COLUMNS[3:]},
            }
        )
        write_results(workdir, rows)
    return rows


def print_commands(
    config_spec: str, workdir, num_seeds: int | None = None, base_overrides: dict | None = None
) -> list[str]:
    """Prints (and returns) one training command per sweep run."""
    module, argument = experiment_config.load_config_module(
        config_spec, ("get_config", "get_sweep")
    )
    commands = [
        training_command(
            config_spec,
            pathlib.Path(workdir) / run_dir,
            {**(base_overrides or {}), **overrides, "seed": seed},
        )
        for run_dir, _, seed, overrides, _ in sweep_runs(
            module, argument, num_seeds, base_overrides
        )
    ]
    print("\n".join(commands))
    return commands


def sweep_command(overrides: dict[str, str]) -> None:
    """Runs (or prints the commands of) the sweep of --config, its base config overridden."""
    if FLAGS.print_commands:
        print_commands(FLAGS.config, FLAGS.workdir, FLAGS.seeds, overrides)
    else:
        rows = run_sweep(
            FLAGS.config, FLAGS.workdir, num_seeds=FLAGS.seeds, base_overrides=overrides
        )
        print((pathlib.Path(FLAGS.workdir) / "results.md").read_text())
        print(f"[sweep] {len(rows)} runs; results in {FLAGS.workdir}/results.csv")


if __name__ == "__main__":
    define_flags()
    cli.run(sweep_command)
