"""Sweeps side by side: mean and 95% interval per point over seeds, the paired difference to a
baseline point (same seed), as a Markdown table and a figure, from the sweeps' results.csv files.

A sweep's rows (`sweep.RESULT_COLUMNS`) name their point by its overrides; here a point is labelled
by its override values ("alignmixup" for {"mix.method": "alignmixup"}). Each results.csv comes with
the value it stands for on the figure's x axis (e.g. training images per class).
"""

import csv
import json
import pathlib

import numpy as np

METRICS = {"final_top1": "final", "median_last_top1": "median of the last evals"}
CONFIDENCE = 0.95


def mean_and_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation, half-width of the 95% Student-t confidence interval of
    the mean); the last two are NaN for a single value."""
    from scipy import stats

    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)
    return float(values.mean()), std, float(quantile * std / np.sqrt(len(values)))


def point_label(overrides: str) -> str:
    """The label of a sweep point: its override values joined ("none", "alignmix, 0.5")."""
    values = json.loads(overrides).values()
    return ", ".join(str(value) for value in values) or "base"


def read_results(path) -> dict[str, dict[int, dict]]:
    """{point label: {seed: row}} of one results.csv; numbers as floats."""
    points: dict[str, dict[int, dict]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            values = {
                key: float(value) if key in METRICS or key == "wall_time_sec" else value
                for key, value in row.items()
                if value not in ("", None)
            }
            points.setdefault(point_label(row["overrides"]), {})[int(row["seed"])] = values
    return points


def compare(points: dict[str, dict[int, dict]], metric: str, baseline: str | None) -> list[dict]:
    """Per point: {"point", "n", "mean", "half_width", "std", "difference", "difference_half_width",
    "pairs"}: the mean of `metric` over seeds with its 95% Student-t half-width, and the mean
    difference to `baseline` over the seeds both ran, with its half-width (NaN where undefined)."""
    rows = []
    for label, runs in points.items():
        values = [runs[seed][metric] for seed in sorted(runs)]
        mean, std, half_width = mean_and_interval(values)
        paired = sorted(set(runs) & set(points.get(baseline, {}))) if baseline else []
        difference = difference_half_width = float("nan")
        if paired and label != baseline:
            differences = [runs[s][metric] - points[baseline][s][metric] for s in paired]
            difference, _, difference_half_width = mean_and_interval(differences)
        rows.append({
            "point": label, "n": len(values), "mean": mean, "half_width": half_width, "std": std,
            "difference": difference, "difference_half_width": difference_half_width,
            "pairs": len(paired) if label != baseline else 0,
        })
    return rows


def _interval(mean: float, half_width: float) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.2f}" if np.isnan(half_width) else f"{mean:.2f} ± {half_width:.2f}"


def markdown(results: dict[str, dict], baseline: str | None) -> str:
    """Tables, one per results.csv ({x label: points}): per point n, and per metric the mean ± 95%
    interval and the paired difference to `baseline`."""
    lines = []
    for x_label, points in results.items():
        compared = {metric: compare(points, metric, baseline) for metric in METRICS}
        header = ["point", "n"]
        for name in METRICS.values():
            header += [name, f"{name}: − {baseline}" if baseline else None]
        header = [cell for cell in header if cell]
        lines += [f"**{x_label}**", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for index, row in enumerate(compared["final_top1"]):
            cells = [row["point"], str(row["n"])]
            for metric in METRICS:
                entry = compared[metric][index]
                cells.append(_interval(entry["mean"], entry["half_width"]))
                if baseline:
                    cells.append(_interval(entry["difference"], entry["difference_half_width"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(results: dict[float, dict], metric: str, path, x_name: str, title: str) -> None:
    """A PNG of `metric` (mean with 95% intervals as error bars) against x for every point."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = list(dict.fromkeys(label for points in results.values() for label in points))
    xs = sorted(results)
    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    offsets = np.linspace(-0.03, 0.03, len(labels))  # in log10(x): keeps error bars apart
    for label, offset in zip(labels, offsets, strict=True):
        shown = [(x, row) for x in xs for row in compare(results[x], metric, None)
                 if row["point"] == label]
        if not shown:
            continue
        positions = [x * 10**offset for x, _ in shown]
        means = [row["mean"] for _, row in shown]
        errors = [0.0 if np.isnan(row["half_width"]) else row["half_width"] for _, row in shown]
        axis.errorbar(positions, means, yerr=errors, marker="o", capsize=3,
                      label=f"{label} (n={'/'.join(str(row['n']) for _, row in shown)})")
    axis.set_xscale("log")
    axis.set_xlim(xs[0] / 1.6, xs[-1] * 1.6)  # room for the offsets, also with one x value
    axis.set_xticks(xs, [f"{x:g}" for x in xs])
    axis.minorticks_off()
    axis.set_xlabel(x_name)
    axis.set_ylabel(f"test top-1 (%), {METRICS[metric]}")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_sweeps(csv_paths: dict[float, str], out_prefix, baseline: str | None, x_name: str,
                   title: str) -> dict[str, pathlib.Path]:
    """Writes `out_prefix`.md (the tables) and `out_prefix`.png (the figure of final top-1) from
    {x value: results.csv path}; returns the two paths."""
    results = {x: read_results(path) for x, path in sorted(csv_paths.items())}
    out_prefix = pathlib.Path(out_prefix)
    table = markdown({f"{x:g} {x_name}": points for x, points in results.items()}, baseline)
    files = {"md": out_prefix.with_suffix(".md"), "png": out_prefix.with_suffix(".png")}
    files["md"].write_text(
        "Mean ± half-width of the 95% Student-t interval over n seeds; the difference to "
        f"`{baseline}` is paired by seed.\n\n" + table
    )
    figure(results, "final_top1", files["png"], x_name, title)
    return files
