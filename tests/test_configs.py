"""Experiment configs: the paper's hyperparameters, smoke variants, validation errors."""

import pathlib
import subprocess
import sys

import pytest

from alignmix_jax import cli
from alignmix_jax.data import image_folder
from alignmix_jax.trainer import experiment_config

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
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
    # The experiment file holds the paper's figure (config.paper_top1) and says it in its docstring
    # beside the command that reproduces it; the README's table quotes it.
    docstring = (REPO / "experiments" / name).read_text().split('"""')[1]
    assert f"--config experiments/{name}" in docstring
    assert f"Paper: {config.paper_top1:.2f}%" in docstring
    (row,) = [line for line in README.splitlines() if line.startswith(f"| `experiments/{name}`")]
    assert f": {config.paper_top1:.2f} |" in row


EXPERIMENT_FILES = sorted(path.name for path in (REPO / "experiments").glob("*.py"))


@pytest.mark.parametrize("name", sorted(set(EXPERIMENT_FILES) - set(PAPER_ROWS)))
def test_configs_that_are_no_paper_row_quote_no_paper_figure(name):
    assert load(name).paper_top1 is None


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_smoke_variants_are_tiny_and_valid(name):
    config = load(name, "smoke")
    experiment_config.validate_config(config, num_devices=8)
    assert config.num_train_steps <= 10
    assert config.mix.method == load(name).mix.method
    full = load(name).data
    if full.name == "image_folder":  # its own pipeline on a generated archive
        assert config.data.path == image_folder.smoke_archive(full.cache_dir)
        assert config.data.to_dict() == {**full.to_dict(), "path": config.data.path,
                                         "image_size": 32, "train_examples_per_class": (
                                             None if full.train_examples_per_class is None
                                             else 8)}
        assert config.smoke_replaced_data is None
    else:  # digits in place of the dataset, named in the run's banner
        assert config.data.name == "digits"
        assert config.smoke_replaced_data == (None if full.name == "digits" else full.name)


def test_unknown_config_argument_is_rejected():
    with pytest.raises(ValueError, match="'smok'"):
        load("quickstart.py", "smok")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mix.method", "mixupp", "config.mix.method = 'mixupp'.*'alignmixup'"),
        ("mix.direction", "2", "config.mix.direction = '2'.*'random'"),
        ("mix.epsilon", 0.0, "config.mix.epsilon must be a finite number > 0, got 0.0"),
        ("mix.num_iters", 0, "config.mix.num_iters must be an integer >= 1, got 0"),
        ("mix.scale_cost", -1.0, "config.mix.scale_cost must be a finite number > 0, got -1.0"),
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
        ("mix.coins", "host", "config.mix.coins = 'host'.*'shared', 'device'"),
        ("mix.coins", "device", "config.mix.coins = 'device'.*mix.partner 'global'"),
        ("model.batch_norm_group", 2, "batch_norm_group must be 0 .* or 1 .*got 2"),
        ("mix.lam_mode", "pixel", "config.mix.lam_mode = 'pixel'.*'batch', 'example'"),
        ("mix.label_smoothing", 1.0, r"config.mix.label_smoothing = 1.0.*\[0, 1\)"),
        ("mix.off_after_epoch", -1.0, "config.mix.off_after_epoch = -1.0"),
        ("profile_steps", (3, 2), r"config.profile_steps = \(3, 2\).*1 <= first <= last"),
        ("profile_steps", (0, 2), r"config.profile_steps = \(0, 2\)"),
    ],
)
def test_bad_fields_fail_naming_the_field_and_allowed_values(field, value, message):
    config = load("quickstart.py")
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
        experiment_config.validate_config(config, num_devices=8)


def test_command_line_overrides_are_parsed_to_each_fields_type():
    """One mechanism for every command and the sweeps: `--config.<field>=<text>` arguments are
    split off (cli) and parsed to the field's type, placeholders included (experiment_config)."""
    argv = ["prog", "--workdir=/tmp/x", "--config.mix.epsilon=0.5", "--config.mix.num_iters=7",
            "--config.tensorboard=false", "--config.mix.method=alignmix",
            "--config.model.stage_sizes=(1, 1)", "--config.mix.threshold=1e-3",
            "--config.data.path=/data/cifar", "--config.data.std=(0.2, 0.2, 0.2)",
            "--config.data.train_examples_per_class=50"]
    rest, overrides = cli.split_config_overrides(argv)
    assert rest == ["prog", "--workdir=/tmp/x"]
    base = load("quickstart.py")
    config = experiment_config.apply_overrides(base, overrides)
    assert (config.mix.epsilon, config.mix.num_iters, config.tensorboard) == (0.5, 7, False)
    assert (config.mix.method, config.model.stage_sizes) == ("alignmix", (1, 1))
    assert config.mix.threshold == pytest.approx(1e-3)  # a float placeholder
    assert (config.data.path, config.data.std) == ("/data/cifar", (0.2, 0.2, 0.2))
    assert config.data.train_examples_per_class == 50
    assert base.mix.epsilon == 0.1  # the config given is not changed
    # Typed values (a sweep's) are set as they are.
    assert experiment_config.apply_overrides(base, {"mix.alpha": 1.0}).mix.alpha == 1.0
    with pytest.raises(ValueError, match="argv"):
        cli.split_config_overrides(["prog", "--config.mix.epsilon"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mix.epsilonn": "0.5"}, r"config.mix has no field 'epsilonn'; expected .*'epsilon'"),
        ({"mixx.epsilon": "0.5"}, r"config has no field 'mixx'"),
        ({"mix.num_iters": "many"}, "config.mix.num_iters expects int, got 'many'"),
        ({"tensorboard": "maybe"}, r"config.tensorboard expects a bool \(true/false\)"),
        ({"model.stage_sizes": "1 1"},
         r"config.model.stage_sizes expects a tuple literal such as \(1, 1, 1, 1\)"),
        ({"mix.manifold_stages": "input,stage1"},  # stage names are strings
         r"expects a tuple literal such as \('input', 'stage1', 'stage2'\), got 'input,stage1'"),
        ({"data.mean": "(a"}, r"config.data.mean expects a tuple literal such as \(0.5, 0.25\)"),
        ({"mix.alpha": "two"}, "config.mix.alpha expects float"),
    ],
)
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        experiment_config.apply_overrides(load("quickstart.py"), overrides)


def test_frozen_fields_cannot_be_overridden():
    with pytest.raises(ValueError, match="config.model.base_width cannot be changed here"):
        experiment_config.apply_overrides(
            load("quickstart.py"), {"model.base_width": "8"}, frozen=("model",)
        )


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
