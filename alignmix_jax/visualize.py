"""Pictures of feature mixing: decoded mixup / AlignMix interpolations and transport plans.

    python -m alignmix_jax.visualize --workdir DIR [--checkpoint best|last] [--pairs 4]
        [--decoder_epochs 5] [--retrain_decoder] [--config.x=y ...]

Trains (or reloads) a decoder of the frozen classifier's last map and writes, for pairs of test
images, `DIR/visualize/pair{k}_mixing.png` and `pair{k}_plan.png`
(`alignmix_jax.analysis.pictures.visualize_workdir`).
"""

from alignmix_jax import cli  # first: one line naming the `train` extra when it is missing

# isort: split
import json

from absl import flags

from alignmix_jax.analysis import pictures

FLAGS = flags.FLAGS


def visualize_command(overrides: dict[str, str]) -> None:
    paths = pictures.visualize_workdir(
        FLAGS.workdir,
        checkpoint=FLAGS.checkpoint,
        pairs=FLAGS.pairs,
        decoder_epochs=FLAGS.decoder_epochs,
        retrain_decoder=FLAGS.retrain_decoder,
        overrides=overrides,
    )
    print(json.dumps(paths, indent=2))


if __name__ == "__main__":
    cli.define_run_flags()
    flags.DEFINE_integer("pairs", 4, "Number of test-image pairs to draw.")
    flags.DEFINE_integer("decoder_epochs", 5, "Decoder training epochs.")
    flags.DEFINE_bool("retrain_decoder", False, "Retrain even if a decoder checkpoint exists.")
    cli.run(visualize_command)
