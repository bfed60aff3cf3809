"""Ablation sweeps: every shipped point is valid; seeds; results tables with confidence intervals;
finished runs are skipped."""

import csv
import json
import pathlib
import shlex

import pytest

from alignmix_jax import cli, sweep
from alignmix_jax.analysis import sweep_comparison
from alignmix_jax.trainer import experiment_config

REPO = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = sorted((REPO / "experiments" / "ablations").glob("*.py"))
TINY_ABLATION = """
from alignmix_jax.trainer.experiment_config import ablation_base_config


def get_config(argument=None):
    return ablation_base_config("{ablations}/tiny.py", argument)


def get_sweep():
    return [{{"mix.epsilon": 0.5}}, {{"mix.epsilon": 2.0, "mix.method": "alignmix"}}]
"""


def test_ships_the_required_ablations():
    assert {"methods", "epsilon", "num_iters", "stage"} <= {path.stem for path in ABLATIONS}


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda path: path.stem)
def test_every_sweep_point_is_a_valid_config(path):
    module, _ = experiment_config.load_config_module(str(path), ("get_config", "get_sweep"))
    runs = sweep.sweep_runs(module, None)
    points = {name for _, name, _, _, _ in runs}
    assert len(points) >= 3
    assert len({run_dir for run_dir, _, _, _, _ in runs}) == len(runs)
    for _, _, seed, overrides, config in runs:
        assert config.seed == seed
        experiment_config.validate_config(config, num_devices=1)
        for key, value in overrides.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value


@pytest.fixture
def tiny_ablation(tmp_path):
    ablations = REPO / "experiments" / "ablations"
    path = tmp_path / "tiny.py"
    path.write_text(TINY_ABLATION.format(ablations=ablations))
    return path


def fake_train(calls):
    def train_fn(config, workdir):
        calls.append((config.mix.method, config.mix.epsilon, config.seed))
        summary = {
            "final_top1": 90.0 + config.mix.epsilon + [0.0, 1.0, 5.0][config.seed],
            "best_top1": 95.0,
            "best_step": 7,
            "median_last_top1": 93.0,
            "images_per_sec": 123.0,
            "steps": 10,
        }
        workdir.mkdir(parents=True)
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    return train_fn


def test_run_sweep_writes_results_and_skips_finished_runs(tiny_ablation, tmp_path):
    calls = []
    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train(calls))
    assert calls == [("alignmixup", 0.5, 0), ("alignmix", 2.0, 0)]
    assert [row["final_top1"] for row in rows] == [90.5, 92.0]
    assert (workdir / "00_epsilon=0.5" / "seed0" / "summary.json").exists()
    with (workdir / "results.csv").open() as file:
        table = list(csv.DictReader(file))
    assert [float(row["final_top1"]) for row in table] == [90.5, 92.0]
    assert json.loads(table[1]["overrides"]) == {"mix.epsilon": 2.0, "mix.method": "alignmix"}
    assert float(table[0]["images_per_sec"]) == 123.0
    markdown = (workdir / "results.md").read_text().splitlines()
    assert markdown[2].startswith("| point | overrides | seeds | final_top1 | best_top1")
    assert "test_top1_at_best_validation" not in markdown[2]  # no validation split here
    assert "images_per_sec" not in markdown[2]  # the machine's load more than the method's speed
    assert len(markdown) == 6 and "| 92.00 |" in markdown[5]
    # A rerun trains nothing: both runs have their summary.
    sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train(calls))
    assert len(calls) == 2


def test_seeds_run_seed_by_seed_and_report_confidence_intervals(tiny_ablation, tmp_path):
    calls = []
    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train(calls), num_seeds=3)
    # Every point of a seed before the next seed; the first seed's runs are the unseeded ones.
    assert [call[2] for call in calls] == [0, 0, 1, 1, 2, 2]
    assert len(rows) == 6 and len(calls) == 6
    first = [row for row in rows if row["point"] == "00_epsilon=0.5"]
    assert [row["final_top1"] for row in first] == [90.5, 91.5, 95.5]
    # mean 92.5, sample sd sqrt(7) = 2.65, t(0.975, 2) = 4.303: half-width 4.303 * 2.65 / sqrt(3)
    mean, std, half_width = sweep_comparison.mean_and_interval([90.5, 91.5, 95.5])
    assert (mean, std) == pytest.approx((92.5, 7**0.5))
    assert half_width == pytest.approx(4.302653 * 7**0.5 / 3**0.5, rel=1e-6)
    line = (workdir / "results.md").read_text().splitlines()[4]
    assert line.startswith("| 00_epsilon=0.5 |") and "| 0,1,2 | 92.50 +- 6.57 (2.65) |" in line
    sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train(calls), num_seeds=3)
    assert len(calls) == 6


def test_seeds_come_from_get_seeds_unless_given(tiny_ablation):
    module, _ = experiment_config.load_config_module(str(tiny_ablation), ("get_config",))
    base = module.get_config()
    assert sweep.sweep_seeds(module, base, None) == [base.seed]
    module.get_seeds = lambda: [3, 4]
    assert sweep.sweep_seeds(module, base, None) == [3, 4]
    assert sweep.sweep_seeds(module, base, 2) == [0, 1]
    with pytest.raises(ValueError, match="seeds must be a positive number"):
        sweep.sweep_seeds(module, base, 0)


def test_print_commands_gives_one_valid_training_command_per_point(tiny_ablation, tmp_path):
    commands = sweep.print_commands(str(tiny_ablation), tmp_path / "sweep")
    assert len(commands) == 2 and all("--config.seed=0" in command for command in commands)
    assert (
        "--config.mix.epsilon=2.0" in commands[1] and "--config.mix.method=alignmix" in commands[1]
    )
    run_dir = tmp_path / "sweep" / "01_epsilon=2.0_method=alignmix" / "seed0"
    assert f"--workdir={run_dir}" in commands[1]
    # Each command, parsed as the trainer parses it, gives the run's config.
    module, _ = experiment_config.load_config_module(str(tiny_ablation), ("get_config",))
    base = experiment_config.load_config(str(tiny_ablation))
    for command, run in zip(commands, sweep.sweep_runs(module, None), strict=True):
        _, overrides = cli.split_config_overrides(shlex.split(command))
        parsed = experiment_config.apply_overrides(base, overrides)
        assert parsed.to_dict() == run[4].to_dict()


def test_validation_figures_reach_the_tables(tiny_ablation, tmp_path):
    def train_fn(config, workdir):
        summary = {"final_top1": 90.0, "best_top1": 92.0, "best_step": 7, "median_last_top1": 91.0,
                   "images_per_sec": 1.0, "steps": 10, "validation": {"best_top1": 88.0},
                   "test_top1_at_best_validation": 89.5}
        workdir.mkdir(parents=True)
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    rows = sweep.run_sweep(str(tiny_ablation), tmp_path / "sweep", train_fn=train_fn)
    assert rows[0]["validation_best_top1"] == 88.0
    assert rows[0]["test_top1_at_best_validation"] == 89.5
    header = (tmp_path / "sweep" / "results.md").read_text().splitlines()[2]
    assert "validation_best_top1 | test_top1_at_best_validation" in header


def test_a_sweep_takes_smoke_and_overrides_of_its_base_config(tiny_ablation, tmp_path):
    configs = []

    def train_fn(config, workdir):
        configs.append(config)
        return fake_train([])(config, workdir)

    overrides = {"num_train_steps": "20", "optimizer.learning_rate": "0.05"}
    sweep.run_sweep(f"{tiny_ablation}:smoke", tmp_path / "sweep", train_fn=train_fn,
                    base_overrides=overrides)
    assert [config.mix.epsilon for config in configs] == [0.5, 2.0]
    for config in configs:
        assert config.num_train_steps == 20 and config.optimizer.learning_rate == 0.05
        assert config.batch_size == 16 and config.model.base_width == 8  # the smoke
    commands = sweep.print_commands(f"{tiny_ablation}:smoke", tmp_path / "sweep", None, overrides)
    assert all("--config.num_train_steps=20" in command for command in commands)
    assert all(f"--config={tiny_ablation}:smoke" in command for command in commands)
    with pytest.raises(ValueError, match=r"--config.mix.epsilon: the sweep sets this field"):
        sweep.run_sweep(str(tiny_ablation), tmp_path / "other", base_overrides={
            "mix.epsilon": "0.1"})
    with pytest.raises(ValueError, match=r"--config.seed: the sweep sets this field"):
        sweep.print_commands(str(tiny_ablation), tmp_path / "other", None, {"seed": "3"})
