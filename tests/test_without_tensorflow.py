"""Training, evaluation and visualisation run where TensorFlow cannot be imported, and on image
folders and digits also where tensorflow-datasets cannot (as on the GPU machine).

TensorFlow is only needed to prepare a tfds dataset (the `prepare` extra), tensorflow-datasets only
for tfds datasets (the `tfds` extra). Each run here is a `python -m alignmix_jax.<cli>` process
started through `without_tensorflow.py`, which hides the packages from every import finder and
fails the run if a hidden module is loaded anyway. Reading a prepared tfds dataset without
TensorFlow is tested with the data pipeline (test_data.py).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from alignmix_jax.trainer import metrics_log

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "without_tensorflow.py"
SMOKE = ["--config", "experiments/quickstart.py:smoke", "--config.progress_bar=False"]
WITHOUT_TFDS = "--without_tfds"  # without_tensorflow.py hides tensorflow_datasets too
TIMEOUT_S = 600
# Every module imports without TensorFlow; without tfds, all but the TinyImageNet tfds builder.
PROBE = (
    "import importlib, importlib.util, pkgutil, sys\n"
    "import alignmix_jax\n"
    "hidden = sys.argv[1:]\n"
    "for package in hidden:\n"
    "    assert importlib.util.find_spec(package) is None, package\n"
    "    try:\n        importlib.import_module(package)\n    except ModuleNotFoundError:\n"
    "        pass\n    else:\n        raise AssertionError(f'{package} imported')\n"
    "names = [m.name for m in pkgutil.walk_packages(alignmix_jax.__path__, 'alignmix_jax.')]\n"
    "for name in names:\n"
    "    if not (name == 'alignmix_jax.data.tiny_imagenet' and 'tensorflow_datasets' in hidden):\n"
    "        importlib.import_module(name)\n"
    "print(*names)\n"
)


def run_hidden(*argv: str) -> subprocess.CompletedProcess:
    """`python tests/without_tensorflow.py ARGV` (with `--without_tfds` first, tfds hidden too)."""
    return subprocess.run(
        [sys.executable, str(RUNNER), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def run_without_tensorflow(*argv: str) -> str:
    """Runs `python -m MODULE ARGS` (or `-c CODE`) with TensorFlow hidden; returns its output,
    fails on error."""
    result = run_hidden(*argv)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def train_without_tensorflow(workdir, *overrides: str) -> dict:
    """The smoke quickstart with TensorFlow and tensorflow-datasets hidden."""
    run_without_tensorflow(
        WITHOUT_TFDS, "alignmix_jax.main", *SMOKE, f"--workdir={workdir}", *overrides
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["final_top1"] <= 100.0
    return summary


def test_tensorflow_is_absent_and_every_module_imports():
    """The runner makes TensorFlow look uninstalled, and every alignmix_jax module (evaluation
    and visualisation included) imports without it."""
    imported = set(run_without_tensorflow("-c", PROBE, "tensorflow").split())
    assert {"alignmix_jax.evaluate", "alignmix_jax.visualize", "alignmix_jax.trainer.train",
            "alignmix_jax.analysis.report"} <= imported
    assert "alignmix_jax.data.tiny_imagenet" in imported  # a tfds builder, defined without TF


def test_without_tfds_every_module_but_the_tfds_builder_imports():
    output = run_without_tensorflow(
        WITHOUT_TFDS, "-c", PROBE, "tensorflow", "tensorflow_datasets"
    )
    assert {"alignmix_jax.main", "alignmix_jax.trainer.train", "alignmix_jax.data.splits",
            "alignmix_jax.data.tfds_source", "alignmix_jax.evaluate"} <= set(output.split())


def test_a_tfds_dataset_without_tfds_is_one_line_naming_the_extra(tmp_path):
    result = run_hidden(
        WITHOUT_TFDS, "alignmix_jax.main", *SMOKE, f"--workdir={tmp_path}",
        "--config.data.name=fashion_mnist", f"--config.data.data_dir={tmp_path / 'tfds'}",
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: dataset 'fashion_mnist' is a tfds dataset, and tensorflow-datasets is not "
        "installed: pip install 'alignmix_jax[tfds]' (in a checkout: pip install -e '.[tfds]')"
    ]


def test_quickstart_trains_without_tensorflow(tmp_path):
    summary = train_without_tensorflow(tmp_path)
    records = [r for r in metrics_log.read_metrics(tmp_path) if "eval_top1" in r]
    assert [r["eval_top1"] for r in records] == [summary["final_top1"]]
    assert list((tmp_path / metrics_log.TENSORBOARD_DIR).iterdir())  # events written


def write_image_folder(root: pathlib.Path, size: int, per_class: dict, suffix: str) -> None:
    """`{split}/{dark,light}/*.<suffix>`: `per_class[split]` RGB images of `size`x`size` per
    class, dark or light with noise (the two classes are separable)."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(("dark", "light")):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 100, (size, size, 3)) + 150 * label
                image = Image.fromarray(pixels.astype(np.uint8))
                image.save(root / split / name / f"{k}.{suffix}")


def test_image_folder_trains_without_tensorflow(tmp_path):
    write_image_folder(tmp_path / "images", 16, {"train": 12, "test": 4}, "png")
    train_without_tensorflow(
        tmp_path / "run",
        "--config.data.name=image_folder",
        f"--config.data.path={tmp_path / 'images'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.image_size=16",
    )
