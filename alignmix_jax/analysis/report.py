"""Evaluation of a trained run beyond accuracy: calibration, adversarial robustness and WSOL.

    python -m alignmix_jax.evaluate --workdir DIR [--checkpoint best|last] [--config.x=y ...]
    (the command: alignmix_jax/evaluate.py; this module: `evaluate_workdir` and its parts)

Loads the run (`trained_run.load_for_eval`), makes one sharded, jitted pass over the test split
and writes `DIR/eval/results.json`, `DIR/eval/results.md` (one row a metric, the paper's figure
beside it where one is known), `DIR/eval/reliability.png` and `DIR/eval/cam_overlays.png`.
Settings live in `config.evaluation` (defaults in `default_evaluation_config`) and can be
overridden like any other field, e.g. `--config.evaluation.epsilon=0.0157`.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from alignmix_jax.analysis import attacks, calibration, wsol
from alignmix_jax.trainer import eval_loop, experiment_config, parallel

EVAL_DIR = "eval"
PERCENT_METRICS = (
    ("top1_accuracy", "Top-1 accuracy"),
    ("top5_accuracy", "Top-5 accuracy"),
    ("expected_calibration_error", "Expected calibration error (15 bins)"),
    ("overconfidence_error", "Overconfidence error (15 bins)"),
    ("fgsm_accuracy", "Accuracy under FGSM"),
    ("pgd_accuracy", "Accuracy under PGD"),
    ("top1_localization", "WSOL Top-1 Loc (IoU >= 0.5)"),
    ("gt_known_localization", "WSOL GT-known Loc (IoU >= 0.5)"),
)


def default_evaluation_config() -> ml_collections.ConfigDict:
    """The `config.evaluation` fields and their defaults (attack radii on the [0, 1] scale)."""
    return ml_collections.ConfigDict(
        {
            "split": ml_collections.config_dict.placeholder(str),  # None: config.data.eval_split
            # None: config.eval_batch_size (256 if absent), rounded up to a multiple of devices.
            "batch_size": ml_collections.config_dict.placeholder(int),
            "max_batches": ml_collections.config_dict.placeholder(int),  # None: the whole split
            "num_bins": calibration.DEFAULT_NUM_BINS,
            "epsilon": 8 / 255,
            "pgd_step_size": 2 / 255,
            "pgd_steps": 7,
            "pgd_random_start": True,
            "seed": 0,
            "wsol": "auto",  # "auto": when the dataset has boxes; "on" (error without boxes); "off"
            "cam_threshold": wsol.DEFAULT_CAM_THRESHOLD,
            "iou_threshold": wsol.DEFAULT_IOU_THRESHOLD,
            "num_overlays": 8,
        }
    )


def with_evaluation_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Copy of ``config`` whose ``evaluation`` section has every default field."""
    config = ml_collections.ConfigDict(config.to_dict())
    settings = default_evaluation_config()
    if "evaluation" in config:
        settings.update(config.evaluation.to_dict())
    config.evaluation = settings
    return config


def validate_evaluation_config(settings: ml_collections.ConfigDict) -> None:
    """ValueError naming the field for out-of-range `config.evaluation` values."""
    checks = (
        (
            "batch_size",
            settings.batch_size is None or settings.batch_size >= 1,
            "None or a positive int",
        ),
        (
            "num_bins",
            isinstance(settings.num_bins, int) and settings.num_bins >= 1,
            "a positive int",
        ),
        ("epsilon", 0.0 <= settings.epsilon <= 1.0, "a radius in [0, 1] on the pixel scale"),
        ("pgd_step_size", 0.0 <= settings.pgd_step_size <= 1.0, "a step in [0, 1]"),
        (
            "pgd_steps",
            isinstance(settings.pgd_steps, int) and settings.pgd_steps >= 1,
            "a positive int",
        ),
        ("wsol", settings.wsol in ("auto", "on", "off"), "one of 'auto', 'on', 'off'"),
        ("cam_threshold", 0.0 <= settings.cam_threshold <= 1.0, "a fraction in [0, 1]"),
        ("iou_threshold", 0.0 < settings.iou_threshold <= 1.0, "an IoU in (0, 1]"),
        (
            "num_overlays",
            isinstance(settings.num_overlays, int) and settings.num_overlays >= 0,
            "a non-negative int",
        ),
        (
            "max_batches",
            settings.max_batches is None or settings.max_batches >= 1,
            "None or a positive int",
        ),
    )
    for field, valid, expected in checks:
        if not valid:
            raise ValueError(
                f"config.evaluation.{field} = {settings[field]!r} is invalid; expected {expected}"
            )


def head_kernel(params: Mapping[str, Any]) -> jax.Array:
    """The dense head's kernel ``(C, num_classes)`` from a model's ``params["head"]``."""
    if "head" not in params:
        raise ValueError(f"params must hold a 'head' module, got keys {sorted(params)}")
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params["head"])[0]
        if getattr(path[-1], "key", None) == "kernel"
    ]
    if len(kernels) != 1 or kernels[0].ndim != 2:
        raise ValueError(
            f"params['head'] must hold exactly one 2-D 'kernel', got {[k.shape for k in kernels]}"
        )
    return kernels[0]


def beyond_accuracy(model, *, mean, std, image_size, settings):
    """The `extra_metrics` of `eval_loop.make_eval_step`: evaluation beyond accuracy in the same
    pass.

    Sums: examples correct under FGSM ("fgsm") and PGD ("pgd", random start from the step's key)
    and the calibration `BinStatistics` ("calibration"). Per example: "cams" `(B, H, W)`, the
    label's class activation maps upsampled to `image_size` and normalised to [0, 1], and
    "predictions" `(B,)`, the argmax.
    """
    last_stage = model.stage_names[-1]

    def extra_metrics(variables, logits_fn, logits, intermediates, batch, key):
        images, labels = batch["image"], batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        attack = dict(epsilon=settings.epsilon, mean=mean, std=std)
        fgsm_images = attacks.fgsm(logits_fn, images, labels, **attack)
        pgd_images = attacks.pgd(
            logits_fn,
            key,
            images,
            labels,
            step_size=settings.pgd_step_size,
            num_steps=settings.pgd_steps,
            random_start=settings.pgd_random_start,
            **attack,
        )

        def masked_correct(x):
            return jnp.sum((jnp.argmax(logits_fn(x), axis=-1) == labels) * mask)

        cams = wsol.class_activation_maps(
            intermediates[last_stage], head_kernel(variables["params"]), labels
        )
        sums = {
            "fgsm": masked_correct(fgsm_images),
            "pgd": masked_correct(pgd_images),
            "calibration": calibration.bin_statistics_from_logits(
                logits, labels, mask, num_bins=settings.num_bins
            ),
        }
        per_example = {
            "cams": wsol.upsample_and_normalise(cams, image_size),
            "predictions": jnp.argmax(logits, axis=-1),
        }
        return sums, per_example

    return extra_metrics


def _host_local(array: jax.Array, mesh) -> np.ndarray:
    """This host's rows of a batch-sharded global array, as numpy."""
    if array.is_fully_addressable:
        return np.asarray(array)
    local = multihost_utils.global_array_to_host_local_array(
        array, mesh, PartitionSpec(parallel.DATA_AXIS)
    )
    return np.asarray(local)


def _use_wsol(settings, info) -> bool:
    if settings.wsol == "on" and not info.has_boxes:
        raise ValueError(
            "config.evaluation.wsol = 'on' needs a dataset with boxes (e.g. "
            "caltech_birds2011); this run's dataset has none"
        )
    return settings.wsol == "on" or (settings.wsol == "auto" and info.has_boxes)


def _describe_model(model_config) -> str:
    """`name(key=value, ...)` of a run's `config.model`, for the report."""
    model = dict(model_config.to_dict())
    name = model.pop("name")
    details = ", ".join(
        f"{key}={tuple(value) if isinstance(value, list) else value}"
        for key, value in sorted(model.items())
    )
    return f"{name}({details})" if details else name


def write_markdown(results: dict, path: str) -> str:
    """``results.md``: one row a metric (percent), the paper's figure beside it where known."""
    lines = [
        f"# Evaluation of `{results['workdir']}` ({results['checkpoint']} checkpoint)",
        "",
        f"Dataset `{results['dataset']}` split `{results['split']}`, model `{results['model']}`, "
        f"{results['num_examples']} examples. Attacks: epsilon "
        f"{results['settings']['epsilon']:.5f}, PGD {results['settings']['pgd_steps']} steps of "
        f"{results['settings']['pgd_step_size']:.5f} (pixel scale [0, 1]).",
        "",
        "| metric | this run (%) | paper, AlignMixup (%) |",
        "|---|---|---|",
    ]
    for key, label in PERCENT_METRICS:
        if key in results["metrics"]:
            paper = results["paper"].get(key)
            lines.append(
                f"| {label} | {results['metrics'][key]:.2f} | "
                f"{'' if paper is None else f'{paper:.2f}'} |"
            )
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def evaluate_workdir(
    workdir: str, *, checkpoint: str = "best", overrides: Mapping[str, Any] | None = None
) -> dict:
    """Evaluates a trained run and writes ``workdir/eval/``; returns the results dict.

    Args:
      workdir: run directory of `train.train_and_evaluate` (``config.json``, checkpoints).
      checkpoint: "best" or "last".
      overrides: ``{"evaluation.epsilon": 0.03, "data.data_dir": "...", ...}``; strings are
        parsed to the field's type.

    Returns:
      ``{"metrics": {name: percent}, "paper": {...}, "settings": {...}, "files": {...}, ...}``.
    """
    from alignmix_jax import data
    from alignmix_jax.trainer import trained_run

    config, model, variables, _ = trained_run.load_for_eval(workdir, checkpoint=checkpoint)
    config = experiment_config.apply_overrides(
        with_evaluation_defaults(config), overrides, frozen=("model",)
    )
    settings = config.evaluation
    validate_evaluation_config(settings)
    info = data.get_dataset_info(config.data)
    use_wsol = _use_wsol(settings, info)
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)

    mesh = parallel.make_data_mesh()
    requested_batch = settings.batch_size or config.get("eval_batch_size", 256)
    batch_size = parallel.round_up_to_devices(requested_batch, mesh)
    eval_step = eval_loop.make_eval_step(
        model,
        beyond_accuracy(
            model, mean=mean, std=std, image_size=tuple(info.image_shape[:2]), settings=settings
        ),
        normalisation=info.normalisation,
    )
    localization = {"count": 0, "gt_known": 0, "top1_loc": 0}
    overlay = {"images": [], "cams": [], "boxes": [], "gt_boxes": [], "titles": []}

    def per_batch(host_batch, per_example):
        nonlocal localization
        if not use_wsol and len(overlay["images"]) >= settings.num_overlays:
            return
        local_cams = _host_local(per_example["cams"], mesh)
        local_predictions = _host_local(per_example["predictions"], mesh)
        labels, mask = np.asarray(host_batch["label"]), np.asarray(host_batch["mask"])
        if use_wsol:
            counts = wsol.localization_counts(
                local_cams,
                host_batch["bbox"],
                local_predictions == labels,
                mask,
                cam_threshold=settings.cam_threshold,
                iou_threshold=settings.iou_threshold,
            )
            localization = {key: localization[key] + counts[key] for key in localization}
        for row in np.nonzero(mask)[0][: settings.num_overlays - len(overlay["images"])]:
            overlay["images"].append(host_batch["image"][row] / np.float32(255.0))
            overlay["cams"].append(local_cams[row])
            overlay["boxes"].append(wsol.cam_to_box(local_cams[row], settings.cam_threshold))
            overlay["gt_boxes"].append(host_batch["bbox"][row] if use_wsol else None)
            overlay["titles"].append(f"label {labels[row]} / pred {local_predictions[row]}")

    totals = eval_loop.run_eval_pass(
        eval_step,
        parallel.replicate(variables, mesh),
        data.make_eval_iterator(config.data, batch_size, split=settings.split, with_boxes=use_wsol),
        mesh,
        key=jax.random.key(settings.seed),
        max_batches=settings.max_batches,
        per_batch=per_batch,
    )
    if use_wsol:
        localization = dict(
            zip(
                localization,
                multihost_utils.process_allgather(np.array(list(localization.values())))
                .reshape(-1, 3)
                .sum(0)
                .tolist(),
                strict=True,
            )
        )

    stats = calibration.BinStatistics(*totals["calibration"])
    count = float(totals["count"])
    metrics = {
        "top1_accuracy": 100 * float(totals["correct1"]) / count,
        "top5_accuracy": 100 * float(totals["correct5"]) / count,
        "expected_calibration_error": 100 * calibration.expected_calibration_error(stats),
        "overconfidence_error": 100 * calibration.overconfidence_error(stats),
        "fgsm_accuracy": 100 * float(totals["fgsm"]) / count,
        "pgd_accuracy": 100 * float(totals["pgd"]) / count,
    }
    if use_wsol:
        metrics["top1_localization"] = 100 * localization["top1_loc"] / localization["count"]
        metrics["gt_known_localization"] = 100 * localization["gt_known"] / localization["count"]
    dataset, model_name = config.data.name, _describe_model(config.model)
    paper_top1 = config.get("paper_top1")  # the experiment file's figure, saved with the run
    out_dir = os.path.join(workdir, EVAL_DIR)
    files = {
        "results_json": os.path.join(out_dir, "results.json"),
        "results_md": os.path.join(out_dir, "results.md"),
        "reliability_diagram": os.path.join(out_dir, "reliability.png"),
    }
    if overlay["images"]:
        files["cam_overlays"] = os.path.join(out_dir, "cam_overlays.png")
    results = {
        "workdir": os.path.abspath(workdir),
        "checkpoint": checkpoint,
        "dataset": dataset,
        "model": model_name,
        "split": settings.split or config.data.get("eval_split", "test"),
        "num_examples": int(count),
        "units": "percent",
        "metrics": metrics,
        "paper": {} if paper_top1 is None else {"top1_accuracy": paper_top1},
        "settings": settings.to_dict(),
        "files": files,
    }
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        calibration.plot_reliability_diagram(
            stats, files["reliability_diagram"], title=f"{dataset} / {model_name}"
        )
        if overlay["images"]:
            wsol.plot_cam_overlays(
                np.stack(overlay["images"]),
                np.stack(overlay["cams"]),
                files["cam_overlays"],
                predicted_boxes=np.stack(overlay["boxes"]),
                gt_boxes=np.stack(overlay["gt_boxes"]) if use_wsol else None,
                titles=overlay["titles"],
            )
        write_markdown(results, files["results_md"])
        with open(files["results_json"], "w") as handle:
            json.dump(results, handle, indent=2)
    return results
