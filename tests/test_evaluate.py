"""End to end: a run trained by `train.train_and_evaluate`, then evaluated and visualized.

Also the override parsing of the CLIs and the clear errors for bad input.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from alignmix_jax import data
from alignmix_jax.analysis import pictures, report
from alignmix_jax.trainer import experiment_config, run_config, train, trained_run

# PGD in 3 steps of 4/255 (the default: 7 of 2/255) reaches the whole 8/255 ball at less cost.
EVAL_OVERRIDES = {
    "evaluation.batch_size": 128,
    "evaluation.pgd_steps": 3,
    "evaluation.pgd_step_size": 4 / 255,
}


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny PreActResNet (the smoke config's) trained on 16x16 digits for 60 steps (80% test
    top-1 measured): trained enough for the attacks to bite."""
    config = experiment_config.smoke_config(experiment_config.default_config("digits"))
    config.data.image_size = 16
    config.batch_size = 32
    config.num_train_steps = 60
    config.optimizer.schedule = "cosine"
    config.eval_every_steps = config.checkpoint_every_steps = 30
    config.tensorboard = False
    config.progress_bar = False
    workdir = tmp_path_factory.mktemp("run")
    summary = train.train_and_evaluate(config, workdir)
    return workdir, summary


@pytest.fixture(scope="module")
def results(trained_workdir):
    workdir, _ = trained_workdir
    return report.evaluate_workdir(str(workdir), checkpoint="best", overrides=EVAL_OVERRIDES)


def test_evaluation_matches_trainer_and_writes_files(trained_workdir, results):
    workdir, summary = trained_workdir
    metrics = results["metrics"]
    # The same weights on the same whole test split: the trainer's top-1/top-5.
    assert metrics["top1_accuracy"] == pytest.approx(summary["best_top1"], abs=1e-4)
    assert metrics["top5_accuracy"] == pytest.approx(summary["best_top5"], abs=1e-4)
    assert results["num_examples"] == 1797 - 1437
    assert set(metrics) == {"top1_accuracy", "top5_accuracy", "expected_calibration_error",
                            "overconfidence_error", "fgsm_accuracy", "pgd_accuracy"}
    # On a trained model the attacks work, and PGD (7 steps) at least as well as FGSM.
    assert metrics["top1_accuracy"] > 60.0
    assert metrics["pgd_accuracy"] <= metrics["fgsm_accuracy"] < metrics["top1_accuracy"]
    eval_dir = workdir / "eval"
    on_disk = json.loads((eval_dir / "results.json").read_text())
    assert on_disk["metrics"] == pytest.approx(metrics)
    assert on_disk["settings"]["pgd_steps"] == 3
    assert on_disk["settings"]["epsilon"] == pytest.approx(8 / 255)
    table = (eval_dir / "results.md").read_text()
    assert f"| Top-1 accuracy | {metrics['top1_accuracy']:.2f} |" in table
    with Image.open(eval_dir / "reliability.png") as image:
        assert image.size == (500, 500)
    with Image.open(eval_dir / "cam_overlays.png") as image:
        assert image.size == (8 * 200, 200)


def test_calibration_errors_equal_a_direct_computation(trained_workdir, results):
    """ECE and OE of the best weights on the whole test split, binned here by hand (15 equal
    bins of the top softmax probability on (0, 1])."""
    workdir, _ = trained_workdir
    config, model, variables, _ = trained_run.load_for_eval(workdir, "best")
    confidences, correct = [], []
    normalisation = data.get_dataset_info(config.data).normalisation
    for batch in data.make_eval_iterator(config.data, 120):
        images = data.model_input(batch, normalisation)
        logits = np.asarray(model.apply(variables, images)[0], np.float64)
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        real = batch["mask"] > 0
        confidences.append(probabilities.max(1)[real])
        correct.append((probabilities.argmax(1) == batch["label"])[real])
    confidences, correct = np.concatenate(confidences), np.concatenate(correct)
    assert len(confidences) == 360
    ece = oe = 0.0
    for low in np.arange(15) / 15:
        members = (confidences > low) & (confidences <= low + 1 / 15)
        if members.any():
            confidence, accuracy = confidences[members].mean(), correct[members].mean()
            share = members.mean()
            ece += share * abs(accuracy - confidence)
            oe += share * confidence * max(confidence - accuracy, 0.0)
    metrics = results["metrics"]
    assert metrics["expected_calibration_error"] == pytest.approx(100 * ece, abs=0.05)
    assert metrics["overconfidence_error"] == pytest.approx(100 * oe, abs=0.05)
    assert metrics["top1_accuracy"] == pytest.approx(100 * correct.mean(), abs=1e-4)


def test_visualize_writes_grids_and_plans(trained_workdir):
    workdir, _ = trained_workdir
    paths = pictures.visualize_workdir(str(workdir), pairs=1, decoder_epochs=1)
    assert len(paths["decoder_losses"]) == 1 and paths["decoder_losses"][0] > 0
    with Image.open(paths["mixing"][0]) as image:
        assert image.size == (720, 540)
    with Image.open(paths["plans"][0]) as image:
        assert image.size == (900, 360)
    assert (workdir / "visualize" / "decoder" / "decoder.json").exists()
    # The classifier's checkpoints are untouched; a second call reuses the saved decoder.
    again = pictures.visualize_workdir(str(workdir), pairs=1, decoder_epochs=1)
    assert again["decoder_losses"] == []
    settings = json.loads((workdir / "visualize" / "decoder" / "decoder.json").read_text())
    assert settings["classifier_checkpoint"] == "best"
    assert settings["classifier_step"] == trained_run.load_for_eval(workdir, "best").step


def test_a_saved_decoder_is_reused_only_for_the_same_weights_and_config(trained_workdir):
    workdir, _ = trained_workdir
    config = run_config.read(workdir)
    key = pictures._decoder_key(config, "best", 60, (32, 32, 1))
    directory = workdir / "visualize" / "decoder"
    (directory / "decoder.json").write_text(json.dumps({"base_width": 16, **key}))
    assert pictures._decoder_matches(str(directory), key)
    more_training = pictures._decoder_key(config, "best", 62, (32, 32, 1))
    assert not pictures._decoder_matches(str(directory), more_training)
    config.model.base_width = 2 * config.model.base_width
    assert not pictures._decoder_matches(
        str(directory), pictures._decoder_key(config, "best", 60, (32, 32, 1))
    )
    assert not pictures._decoder_matches(
        str(directory), pictures._decoder_key(config, "last", 60, (32, 32, 1))
    )


def test_bad_input_gets_clear_errors(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    with pytest.raises(ValueError, match="workdir"):
        report.evaluate_workdir(str(tmp_path / "missing"))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(workdir / "config.json", bare / "config.json")
    with pytest.raises(ValueError, match="checkpoint"):
        report.evaluate_workdir(str(bare), checkpoint="last")
    with pytest.raises(ValueError, match="checkpoint"):
        report.evaluate_workdir(str(workdir), checkpoint="newest")
    with pytest.raises(ValueError, match="split"):
        report.evaluate_workdir(str(workdir), overrides={"evaluation.split": "validaton"})
    with pytest.raises(ValueError, match="boxes"):
        report.evaluate_workdir(str(workdir), overrides={"evaluation.wsol": "on"})
    with pytest.raises(ValueError, match="epsilon"):
        report.evaluate_workdir(str(workdir), overrides={"evaluation.epsilon": "2.0"})
    with pytest.raises(ValueError, match="config.model.base_width cannot be changed"):
        report.evaluate_workdir(str(workdir), overrides={"model.base_width": "8"})
    with pytest.raises(ValueError, match="pairs"):
        pictures.visualize_workdir(str(workdir), pairs=0)
