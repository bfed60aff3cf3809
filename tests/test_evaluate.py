"""End to end: a run trained by `train.train_and_evaluate`, then evaluated and visualized.

Also the override parsing of the CLIs and the clear errors for bad input.
"""

import json
import shutil

import pytest
from PIL import Image

from alignmix_jax import evaluate, experiment_config, train, visualize

EVAL_OVERRIDES = {"evaluation.batch_size": 128, "evaluation.pgd_steps": 2}


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """The digits smoke config (tiny PreActResNet, 32x32x1) trained for 2 steps."""
    config = experiment_config.smoke_config(experiment_config.default_config("digits"))
    config.num_train_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.tensorboard = False
    config.progress_bar = False
    workdir = tmp_path_factory.mktemp("run")
    summary = train.train_and_evaluate(config, workdir)
    return workdir, summary


@pytest.fixture(scope="module")
def results(trained_workdir):
    workdir, _ = trained_workdir
    return evaluate.evaluate_workdir(str(workdir), checkpoint="best", overrides=EVAL_OVERRIDES)


def test_evaluation_matches_trainer_and_writes_files(trained_workdir, results):
    workdir, summary = trained_workdir
    metrics = results["metrics"]
    # The same weights on the same whole test split: the trainer's top-1/top-5.
    assert metrics["top1_accuracy"] == pytest.approx(summary["best_top1"], abs=1e-4)
    assert metrics["top5_accuracy"] == pytest.approx(summary["best_top5"], abs=1e-4)
    assert results["num_examples"] == 1797 - 1437
    assert set(metrics) == {"top1_accuracy", "top5_accuracy", "expected_calibration_error",
                            "overconfidence_error", "fgsm_accuracy", "pgd_accuracy"}
    assert 0.0 <= metrics["overconfidence_error"] <= metrics["expected_calibration_error"] <= 100
    eval_dir = workdir / "eval"
    on_disk = json.loads((eval_dir / "results.json").read_text())
    assert on_disk["metrics"] == pytest.approx(metrics)
    assert on_disk["settings"]["pgd_steps"] == 2
    assert on_disk["settings"]["epsilon"] == pytest.approx(8 / 255)
    table = (eval_dir / "results.md").read_text()
    assert f"| Top-1 accuracy | {metrics['top1_accuracy']:.2f} |" in table
    with Image.open(eval_dir / "reliability.png") as image:
        assert image.size == (500, 500)
    with Image.open(eval_dir / "cam_overlays.png") as image:
        assert image.size == (8 * 200, 200)


def test_visualize_writes_grids_and_plans(trained_workdir):
    workdir, _ = trained_workdir
    paths = visualize.visualize_workdir(str(workdir), pairs=1, decoder_epochs=1)
    assert len(paths["decoder_losses"]) == 1 and paths["decoder_losses"][0] > 0
    with Image.open(paths["mixing"][0]) as image:
        assert image.size == (720, 540)
    with Image.open(paths["plans"][0]) as image:
        assert image.size == (900, 360)
    assert (workdir / "visualize" / "decoder" / "decoder.json").exists()
    # The classifier's checkpoints are untouched; a second call reuses the saved decoder.
    again = visualize.visualize_workdir(str(workdir), pairs=1, decoder_epochs=1)
    assert again["decoder_losses"] == []


def test_bad_input_gets_clear_errors(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    with pytest.raises(ValueError, match="workdir"):
        evaluate.evaluate_workdir(str(tmp_path / "missing"))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(workdir / "config.json", bare / "config.json")
    with pytest.raises(ValueError, match="checkpoint"):
        evaluate.evaluate_workdir(str(bare), checkpoint="last")
    with pytest.raises(ValueError, match="checkpoint"):
        evaluate.evaluate_workdir(str(workdir), checkpoint="newest")
    with pytest.raises(ValueError, match="split"):
        evaluate.evaluate_workdir(str(workdir), overrides={"evaluation.split": "validaton"})
    with pytest.raises(ValueError, match="boxes"):
        evaluate.evaluate_workdir(str(workdir), overrides={"evaluation.wsol": "on"})
    with pytest.raises(ValueError, match="epsilon"):
        evaluate.evaluate_workdir(str(workdir), overrides={"evaluation.epsilon": "2.0"})
    with pytest.raises(ValueError, match="pairs"):
        visualize.visualize_workdir(str(workdir), pairs=0)


def test_command_line_overrides_are_parsed_to_field_types():
    argv = ["prog", "--workdir=/tmp/x", "--config.evaluation.epsilon=0.0157",
            "--config.evaluation.pgd_random_start=false", "--config.evaluation.pgd_steps=3",
            "--config.evaluation.split=train"]
    rest, overrides = evaluate.split_config_overrides(argv)
    assert rest == ["prog", "--workdir=/tmp/x"]
    config = evaluate.with_evaluation_defaults(
        experiment_config.default_config("digits"))
    config = evaluate.apply_overrides(config, overrides)
    assert config.evaluation.epsilon == pytest.approx(0.0157)
    assert config.evaluation.pgd_random_start is False
    assert config.evaluation.pgd_steps == 3 and config.evaluation.split == "train"
    with pytest.raises(ValueError, match="evaluation.pgd_steps"):
        evaluate.apply_overrides(config, {"evaluation.pgd_steps": "many"})
    with pytest.raises(ValueError, match="evaluation.nonexistent"):
        evaluate.apply_overrides(config, {"evaluation.nonexistent": "1"})
    with pytest.raises(ValueError, match="model"):
        evaluate.apply_overrides(config, {"model.base_width": "8"})
    with pytest.raises(ValueError, match="argv"):
        evaluate.split_config_overrides(["prog", "--config.evaluation.epsilon"])
