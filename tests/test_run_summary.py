"""run_summary: the evals kept in a run's meta and the summary drawn from them, by hand."""

import pytest

from alignmix_jax.trainer import run_summary


def evals(*rows):
    """{"validation": {"top1", "top5"}, "test": {...}} from (validation top-1, test top-1)."""
    return [
        {"validation": {"top1": v, "top5": 100.0}, "test": {"top1": t, "top5": 99.0}}
        for v, t in rows
    ]


def test_validation_selects_and_the_summary_reports_each_split():
    meta = run_summary.new_run_record()
    results = evals((50, 60), (70, 55), (65, 80), (70, 75))
    selected = [
        run_summary.record_eval(meta, step, result, keep=3)
        for step, result in zip((10, 20, 30, 40), results, strict=True)
    ]
    assert selected == [True, True, False, False]  # a tie on validation keeps the earlier best
    assert meta["best_step"] == 20 and [e["step"] for e in meta["recent_evals"]] == [20, 30, 40]
    summary = run_summary.summarize(meta, steps=40)
    assert summary["selected_on"] == "validation" and summary["steps"] == 40
    # Test: last 75, best 80 at step 30 (selected on the test set), median of 55, 80, 75.
    assert (summary["final_top1"], summary["best_top1"], summary["best_step"]) == (75, 80, 30)
    assert summary["median_last_top1"] == 75 and summary["median_over_evals"] == 3
    assert summary["validation"]["best_top1"] == 70 and summary["validation"]["best_step"] == 20
    assert summary["test_top1_at_best_validation"] == 55  # the honest figure


def test_without_validation_the_test_split_selects():
    meta = run_summary.new_run_record()
    for step, top1 in ((1, 10.0), (2, 30.0), (3, 20.0)):
        run_summary.record_eval(meta, step, {"test": {"top1": top1, "top5": 50.0}}, keep=10)
    summary = run_summary.summarize(meta)
    assert summary["selected_on"] == "test" and meta["best_step"] == 2
    assert "validation" not in summary and "test_top1_at_best_validation" not in summary
    assert summary["median_last_top1"] == pytest.approx(20.0)


def test_splits_of_a_config():
    assert run_summary.evaluation_splits({"eval_split": "test"}) == {"test": "test"}
    assert run_summary.evaluation_splits(
        {"eval_split": "test", "validation_split": "train[45000:]"}
    ) == {"validation": "train[45000:]", "test": "test"}
