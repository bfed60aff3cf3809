"""What a run reports: its evals, kept in the run record that each checkpoint saves (its `meta`
item), and the summary of them.

A run evaluates, at every eval step, its test split (`config.data.eval_split`) and, when
`config.data.validation_split` is set, a held-out validation split. The best-weights checkpoint
(best/) is selected on the validation split when there is one, else on the test split. For each
split the summary reports the final accuracy, the best with its step, and the median of the last
`config.summary_last_evals` evals; with a validation split, also the test accuracy at the step of
the best validation accuracy. The paper's figure is the best test top-1 over training: it is
"best_top1", selected on the test set.
"""

import os
import platform
import statistics

VALIDATION = "validation"
TEST = "test"


def evaluation_splits(data_config) -> dict[str, str]:
    """{"validation": split (when data.validation_split is set), "test": data.eval_split}."""
    splits = {}
    if data_config.get("validation_split") is not None:
        splits[VALIDATION] = data_config["validation_split"]
    splits[TEST] = data_config["eval_split"]
    return splits


def new_run_record() -> dict:
    """The eval record of a run before its first eval (JSON, saved with each checkpoint).

    best_step: the step of the best-weights checkpoint; best: {split: {"step", "top1", "top5"}};
    test_top1_at_best_validation; recent_evals: the last evals, [{"step", split: {"top1",
    "top5"}}], oldest first. The trainer adds images_per_sec and wall_time_sec (the run's so far)
    when it saves a checkpoint.
    """
    return {"best_step": 0, "best": {}, "test_top1_at_best_validation": None, "recent_evals": []}


def record_eval(run_record: dict, step: int, results: dict[str, dict], keep: int) -> bool:
    """Adds the eval at `step` ({split: {"top1", "top5"}}) to `run_record`, keeping the last `keep`.

    Returns whether these weights are the new best of the selection split (validation when
    evaluated, else test): the caller then saves them as the best weights.
    """
    run_record["recent_evals"] = [*run_record["recent_evals"], {"step": step, **results}][-keep:]
    for split, result in results.items():
        best = run_record["best"].get(split)
        if best is None or result["top1"] > best["top1"]:
            run_record["best"][split] = {"step": step, **result}
            if split == VALIDATION:
                run_record["test_top1_at_best_validation"] = results[TEST]["top1"]
    selection = VALIDATION if VALIDATION in results else TEST
    if run_record["best"][selection]["step"] == step:
        run_record["best_step"] = step
        return True
    return False


def _split_summary(run_record: dict, split: str) -> dict:
    nan = float("nan")
    recent = [entry[split]["top1"] for entry in run_record["recent_evals"] if split in entry]
    last = run_record["recent_evals"][-1][split] if recent else {"top1": nan, "top5": nan}
    best = run_record["best"].get(split, {"step": 0, "top1": nan, "top5": nan})
    return {
        "final_top1": last["top1"],
        "final_top5": last["top5"],
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_step": best["step"],
        "median_last_top1": statistics.median(recent) if recent else nan,
    }


def summarize(run_record: dict, **extra) -> dict:
    """The summary of a run: the test split's figures at the top level ("best_top1" is the best
    test top-1, selected on the test set), "selected_on" (the split that chose best/), the
    number of evals the medians cover, and with a validation split its figures under
    "validation" and "test_top1_at_best_validation"; then `extra` (steps, images/s, ...)."""
    has_validation = VALIDATION in run_record["best"]
    summary = {
        **_split_summary(run_record, TEST),
        "selected_on": VALIDATION if has_validation else TEST,
        "median_over_evals": len(run_record["recent_evals"]),
    }
    if has_validation:
        summary[VALIDATION] = _split_summary(run_record, VALIDATION)
        summary["test_top1_at_best_validation"] = run_record["test_top1_at_best_validation"]
    return {**summary, **extra}


def machine() -> str:
    """The machine a run trained on, in words: CPU model and cores, and the JAX devices."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            models = (line.split(":", 1)[1] for line in file if line.startswith("model name"))
            cpu = next(models).strip()
    except (OSError, StopIteration):
        pass
    devices = jax.devices()
    return (f"{cpu}, {os.cpu_count()} cores; {jax.process_count()} host(s), "
            f"{len(devices)} x {devices[0].device_kind}")
