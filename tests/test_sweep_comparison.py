"""Sweeps side by side (alignmix_jax.compare_sweeps, analysis.sweep_comparison)."""

import csv
import json

import numpy as np
import pytest
from scipy import stats

from alignmix_jax import compare_sweeps
from alignmix_jax.analysis import sweep_comparison
from alignmix_jax.sweep import RESULT_COLUMNS


def write_results(path, values: dict[str, list[float]]) -> None:
    """A results.csv with final_top1 = median_last_top1 - 1 = values[method][seed]."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=RESULT_COLUMNS, restval="")
        writer.writeheader()
        for seed in range(max(len(v) for v in values.values())):
            for method, per_seed in values.items():
                if seed < len(per_seed):
                    writer.writerow({
                        "point": f"00_method={method}",
                        "overrides": json.dumps({"mix.method": method}),
                        "seed": seed, "final_top1": per_seed[seed],
                        "median_last_top1": per_seed[seed] + 1, "wall_time_sec": 60.0,
                        "machine": "test",
                    })


def test_means_intervals_and_paired_differences_by_hand(tmp_path):
    write_results(tmp_path / "r.csv", {"none": [60.0, 62.0, 61.0], "mix": [63.0, 63.5, 65.0],
                                       "short": [70.0]})
    points = sweep_comparison.read_results(tmp_path / "r.csv")
    rows = {row["point"]: row for row in sweep_comparison.compare(points, "final_top1", "none")}
    t = stats.t.ppf(0.975, 2)
    assert rows["mix"]["mean"] == pytest.approx(np.mean([63.0, 63.5, 65.0]))
    assert rows["mix"]["half_width"] == pytest.approx(t * np.std([63, 63.5, 65], ddof=1) / 3**0.5)
    differences = [3.0, 1.5, 4.0]
    assert rows["mix"]["difference"] == pytest.approx(np.mean(differences))
    assert rows["mix"]["difference_half_width"] == pytest.approx(
        t * np.std(differences, ddof=1) / 3**0.5)
    assert rows["mix"]["pairs"] == 3
    assert rows["short"]["n"] == 1 and np.isnan(rows["short"]["half_width"])
    assert rows["short"]["difference"] == pytest.approx(10.0)  # one pair: no interval
    assert np.isnan(rows["none"]["difference"]) and rows["none"]["pairs"] == 0


def test_compare_sweeps_writes_the_table_and_the_figure(tmp_path):
    write_results(tmp_path / "a.csv", {"none": [50.0, 52.0], "mix": [53.0, 54.0]})
    write_results(tmp_path / "b.csv", {"none": [70.0, 71.0], "mix": [72.0, 71.5]})
    files = sweep_comparison.compare_sweeps(
        {100.0: tmp_path / "a.csv", 500.0: tmp_path / "b.csv"}, tmp_path / "out", "none",
        "images per class", "t")
    table = files["md"].read_text()
    assert "**100 images per class**" in table and "**500 images per class**" in table
    assert "| mix | 2 | 53.50 ± 6.35 | 2.50 ± 6.35 | 54.50 ± 6.35 | 2.50 ± 6.35 |" in table
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec", ["results.csv", "results.csv=many", "=100"])
def test_a_results_flag_without_its_x_value_is_refused(spec):
    with pytest.raises(ValueError, match="expected PATH=X with X a number"):
        compare_sweeps.parse_results([spec])
