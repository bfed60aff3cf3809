"""Experiment configs: the paper's hyperparameters, smoke variants, validation errors."""

import pathlib
import subprocess
import sys

import pytest

from alignmix_jax import experiment_config

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER_ROWS = {
    # file: (dataset, model, batch, epochs, lr boundaries (epochs), nesterov)
    "cifar10_preactresnet18.py": (
        "cifar10",
        "preact_resnet18",
        128,
        2000,
        (500, 1000, 1500),
        False,
    ),
    "cifar10_wrn16_8.py": ("cifar10", "wide_resnet", 128, 2000, (500, 1000, 1500), False),
    "cifar100_preactresnet18.py": (
        "cifar100",
        "preact_resnet18",
        128,
        2000,
        (500, 1000, 1500),
        False,
    ),
    "cifar100_wrn16_8.py": ("cifar100", "wide_resnet", 128, 2000, (500, 1000, 1500), False),
    "tinyimagenet_preactresnet18.py": (
        "tiny_imagenet",
        "preact_resnet18",
        256,
        1200,
        (600, 900),
        False,
    ),
    "imagenet_resnet50.py": ("imagenet2012", "resnet50", 1024, 300, (75, 150, 225), True),
}


def load(name: str, argument: str = ""):
    spec = str(REPO / "experiments" / name) + (f":{argument}" if argument else "")
    return experiment_config.load_config(spec)


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_configs_hold_the_papers_hyperparameters(name):
    dataset, model, batch, epochs, boundaries, nesterov = PAPER_ROWS[name]
    config = load(name)
    experiment_config.validate_config(config, num_devices=8)
    assert (config.data.name, config.model.name) == (dataset, model)
    assert (config.batch_size, config.num_epochs) == (batch, epochs)
    assert config.optimizer.boundaries_epochs == boundaries
    assert config.optimizer.nesterov == nesterov
    assert config.optimizer.schedule == "piecewise" and config.optimizer.decay_factor == 0.1
    assert config.optimizer.learning_rate == 0.1 and config.optimizer.momentum == 0.9
    assert config.optimizer.weight_decay == 1e-4
    mix = config.mix
    assert (mix.method, mix.alpha, mix.epsilon, mix.num_iters) == ("alignmixup", 2.0, 0.1, 100)
    assert (mix.stage, mix.direction, mix.input_prob, mix.threshold) == (
        "last",
        "random",
        0.5,
        None,
    )
    # Partners from the global batch (the single-GPU reference) except on ImageNet, whose reference
    # pairs within each GPU's shard (DataParallel).
    assert mix.partner == ("device" if dataset == "imagenet2012" else "global")
    assert (mix.lam_mode, mix.label_smoothing, mix.off_after_epoch) == ("batch", 0.0, None)
    if model == "wide_resnet":
        assert (config.model.depth, config.model.widen_factor) == (16, 8)
    if model == "preact_resnet18":
        assert (config.model.stage_sizes, config.model.base_width) == ((2, 2, 2, 2), 64)
    docstring = (REPO / "experiments" / name).read_text().split('"""')[1]
    assert f"--config experiments/{name}" in docstring and "%" in docstring


EXPERIMENT_FILES = sorted(path.name for path in (REPO / "experiments").glob("*.py"))


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_smoke_variants_are_tiny_and_valid(name):
    config = load(name, "smoke")
    experiment_config.validate_config(config, num_devices=8)
    assert config.data.name == "digits" and config.num_train_steps <= 10
    assert config.mix.method == load(name).mix.method


def test_unknown_config_argument_is_rejected():
    with pytest.raises(ValueError, match="'smok'"):
        load("quickstart.py", "smok")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mix.method", "mixupp", "config.mix.method = 'mixupp'.*'alignmixup'"),
        ("mix.direction", "2", "config.mix.direction = '2'.*'random'"),
        ("mix.epsilon", 0.0, "config.mix.epsilon = 0.0.*positive"),
        ("mix.num_iters", 0, "config.mix.num_iters = 0.*positive integer"),
        ("mix.alpha", -1.0, "config.mix.alpha = -1.0"),
        ("mix.input_prob", 1.5, r"config.mix.input_prob = 1.5.*\[0, 1\]"),
        ("mix.stage", "stage9", "config.mix.stage = 'stage9'.*'stage4'"),
        ("mix.manifold_stages", ("input", "head"), "config.mix.manifold_stages"),
        ("model.name", "vgg", "config.model.name = 'vgg'.*'wide_resnet'"),
        ("model.base_width", 0, "config.model"),
        ("data.name", "mnist", "config.data.name = 'mnist'.*'fashion_mnist'"),
        ("optimizer.schedule", "step", "config.optimizer.schedule = 'step'.*'cosine'"),
        ("batch_size", 12, "config.batch_size = 12.*multiple of the 8 devices"),
        ("compute_dtype", "float16", "config.compute_dtype = 'float16'.*'bfloat16'"),
        ("mix.partner", "host", "config.mix.partner = 'host'.*'global', 'device'"),
        ("mix.lam_mode", "pixel", "config.mix.lam_mode = 'pixel'.*'batch', 'example'"),
        ("mix.label_smoothing", 1.0, r"config.mix.label_smoothing = 1.0.*\[0, 1\)"),
        ("mix.off_after_epoch", -1.0, "config.mix.off_after_epoch = -1.0"),
    ],
)
def test_bad_fields_fail_naming_the_field_and_allowed_values(field, value, message):
    config = load("quickstart.py")
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        experiment_config.validate_config(config, num_devices=8)


def test_unknown_override_field_names_the_fields_that_exist():
    config = load("quickstart.py")
    experiment_config.check_override_fields(config, ["--config.mix.epsilon=0.5", "--workdir=x"])
    with pytest.raises(ValueError, match=r"config.mix has no field 'epsilonn'.*'epsilon'"):
        experiment_config.check_override_fields(config, ["--config.mix.epsilonn=0.5"])


def test_command_line_rejects_a_bad_value_before_training(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignmix_jax.main",
            "--config=experiments/quickstart.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.mix.direction=sideways",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "config.mix.direction = 'sideways'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_command_line_names_a_workdir_that_cannot_be_written(tmp_path):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a directory")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignmix_jax.main",
            "--config=experiments/quickstart.py:smoke",
            f"--workdir={in_the_way / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: workdir='{in_the_way / 'run'}' cannot be written")
    assert "Traceback" not in result.stderr
