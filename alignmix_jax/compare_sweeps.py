"""Puts sweeps side by side: a Markdown table and a figure from their results.csv files.

    python -m alignmix_jax.compare_sweeps --baseline none \
        --results docs/results/lowdata100_cifar10.csv=100 \
        --results docs/results/lowdata_cifar10.csv=500 \
        --x_name "training images per class" --out docs/lowdata_cifar10

Writes OUT.md (per sweep and point: n seeds, mean ± 95% interval of the final and the median-of-
last-evals test top-1, and the paired difference to --baseline) and OUT.png (final test top-1
against the x values, 95% intervals as error bars).
"""

from absl import flags

from alignmix_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_multi_string("results", None, "A sweep's results.csv and its x value: PATH=X.")
    flags.DEFINE_string("baseline", None, "Point label the paired differences are taken to.")
    flags.DEFINE_string("x_name", "x", "What the x values are.")
    flags.DEFINE_string("title", "", "Figure title.")
    flags.DEFINE_string("out", None, "Output path without suffix: writes OUT.md and OUT.png.")
    flags.mark_flags_as_required(["results", "out"])


def parse_results(specs: list[str]) -> dict[float, str]:
    """["path=100", ...] -> {100.0: "path"}; a spec without `=X` is an error naming it."""
    parsed = {}
    for spec in specs:
        path, separator, x = spec.rpartition("=")
        try:
            parsed[float(x)] = path
        except ValueError:
            separator = ""
        if not separator or not path:
            raise ValueError(f"--results={spec!r}: expected PATH=X with X a number")
    return parsed


def compare_command(overrides: dict[str, str]) -> None:
    from alignmix_jax.analysis import sweep_comparison

    if overrides:
        raise ValueError(f"{sorted(overrides)}: compare_sweeps takes no --config.<field> overrides")
    files = sweep_comparison.compare_sweeps(
        parse_results(FLAGS.results), FLAGS.out, FLAGS.baseline, FLAGS.x_name, FLAGS.title
    )
    print(files["md"].read_text())
    print(f"wrote {files['md']} and {files['png']}")


if __name__ == "__main__":
    define_flags()
    cli.run(compare_command)
