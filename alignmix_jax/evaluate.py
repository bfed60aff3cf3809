"""Evaluates a trained run beyond accuracy: calibration, adversarial robustness and WSOL.

    python -m alignmix_jax.evaluate --workdir DIR [--checkpoint best|last] [--config.x=y ...]

Writes `DIR/eval/results.{json,md}`, `reliability.png` and `cam_overlays.png`; the settings are the
fields of `config.evaluation` (`alignmix_jax.analysis.report.default_evaluation_config`), e.g.
`--config.evaluation.epsilon=0.0157`. The model's fields cannot be overridden.
"""

from alignmix_jax import cli  # first: one line naming the `train` extra when it is missing

# isort: split
import json

from absl import flags

from alignmix_jax.analysis import report


def evaluate_command(overrides: dict[str, str]) -> None:
    results = report.evaluate_workdir(
        flags.FLAGS.workdir, checkpoint=flags.FLAGS.checkpoint, overrides=overrides
    )
    print(json.dumps(results["metrics"], indent=2))
    print(f"wrote {results['files']['results_md']}")


if __name__ == "__main__":
    cli.define_run_flags()
    cli.run(evaluate_command)
