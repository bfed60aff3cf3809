"""Ablation sweeps: every shipped point is valid; results tables; finished points are skipped."""

import csv
import json
import pathlib

import pytest

from alignmix_jax import experiment_config, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = sorted((REPO / "experiments" / "ablations").glob("*.py"))
TINY_ABLATION = """
from alignmix_jax.experiment_config import ablation_base_config


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
    points = sweep.sweep_points(module, None)
    assert len(points) >= 3
    assert len({name for name, _, _ in points}) == len(points)
    for _, overrides, config in points:
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


def test_run_sweep_writes_results_and_skips_finished_points(tiny_ablation, tmp_path):
    calls = []

    def fake_train(config, workdir):
        calls.append((config.mix.method, config.mix.epsilon))
        summary = {
            "final_top1": 90.0 + config.mix.epsilon,
            "best_top1": 95.0,
            "best_step": 7,
            "images_per_sec": 123.0,
            "steps": 10,
        }
        workdir.mkdir(parents=True)
        (workdir / "summary.json").write_text(json.dumps(summary))
        return summary

    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train)
    assert calls == [("alignmixup", 0.5), ("alignmix", 2.0)]
    assert [row["final_top1"] for row in rows] == [90.5, 92.0]
    with (workdir / "results.csv").open() as file:
        table = list(csv.DictReader(file))
    assert [float(row["final_top1"]) for row in table] == [90.5, 92.0]
    assert json.loads(table[1]["overrides"]) == {"mix.epsilon": 2.0, "mix.method": "alignmix"}
    markdown = (workdir / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| point | overrides | final_top1 | best_top1")
    assert len(markdown) == 4 and "92.00" in markdown[3]
    # A rerun trains nothing: both points have their summary.
    sweep.run_sweep(str(tiny_ablation), workdir, train_fn=fake_train)
    assert len(calls) == 2


def test_print_commands_gives_one_valid_training_command_per_point(tiny_ablation, tmp_path):
    commands = sweep.print_commands(str(tiny_ablation), tmp_path / "sweep")
    assert len(commands) == 2
    assert (
        "--config.mix.epsilon=2.0" in commands[1] and "--config.mix.method=alignmix" in commands[1]
    )
    assert f"--workdir={tmp_path / 'sweep' / '01_epsilon=2.0_method=alignmix'}" in commands[1]
    config = experiment_config.load_config(str(tiny_ablation))
    for command in commands:
        experiment_config.check_override_fields(config, command.split())


def test_bad_override_names_the_field(tiny_ablation):
    config = experiment_config.load_config(str(tiny_ablation))
    with pytest.raises(ValueError, match="config.mix.epsilonn"):
        sweep.apply_overrides(config, {"mix.epsilonn": 1.0})
    with pytest.raises(ValueError, match="config.mix.num_iters"):
        sweep.apply_overrides(config, {"mix.num_iters": "many"})
