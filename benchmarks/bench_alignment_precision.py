"""How far bfloat16 features move AlignMix's plan and mix (the ImageNet config computes in bf16).

The official code runs in float32. Under `compute_dtype="bfloat16"` the encoder's last map reaches
`align_mix` rounded to bfloat16 (8 bits of mantissa); the op itself then computes in float32. This
measures, for the same pairs, the plan R = r P and the mixed map from the float32 features against
those from the same features rounded to bfloat16:

  - R: mean and max |R_bf16 - R_f32|, and the fraction of rows whose argmax (the partner position
    a position mostly takes) is the same;
  - the aligned mix: ||mix_bf16 - mix_f32|| / ||mix_f32|| per example (median, max), beside the
    same for the linear mix lam a + (1 - lam) b, i.e. what bf16 rounding does with no alignment.

Features: `resnet50`, post-ReLU maps of ResNet-50's last-map shape (128, 7, 7, 2048), synthetic:
per-channel log-normal scales times ReLU of a unit normal shifted by -0.5 (about 30% nonzero,
position norms ~16, the scale of trained ImageNet ResNet-50 maps); `trained`, the last maps of
the trained CIFAR network in tests/fixtures (16, 4, 4, 128), real features at small scale.

    python benchmarks/bench_alignment_precision.py          # prints a table and one JSON line
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from alignmix_jax import cli
from alignmix_jax.core.ot import align, sinkhorn_plan

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/trained_features.npz"
LAM = 0.4


def resnet50_like(seed: int = 0, shape=(128, 7, 7, 2048)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(-0.5, 0.5, shape[-1])).astype(np.float32)
    return (np.maximum(rng.normal(size=shape) - 0.5, 0) * scales).astype(np.float32)


def compare(features: np.ndarray) -> dict:
    """float32 against bfloat16-rounded features, each example paired with the next one."""
    batch, channels = features.shape[0], features.shape[-1]
    a = jnp.asarray(features).reshape(batch, -1, channels)
    b = jnp.roll(a, 1, axis=0)
    rounded = [x.astype(jnp.bfloat16).astype(jnp.float32) for x in (a, b)]
    results = {}
    for name, (x, y) in {"float32": (a, b), "bfloat16": rounded}.items():
        plan = sinkhorn_plan(x, y)
        rows = plan * x.shape[1]
        mixed = LAM * x + (1 - LAM) * align(x, y, plan)
        results[name] = (np.asarray(rows), np.asarray(mixed), np.asarray(LAM * x + (1 - LAM) * y))
    (r32, mix32, lin32), (r16, mix16, lin16) = results["float32"], results["bfloat16"]

    def relative(u, v):
        return np.linalg.norm((u - v).reshape(batch, -1), axis=1) / np.linalg.norm(
            v.reshape(batch, -1), axis=1)

    aligned_change, linear_change = relative(mix16, mix32), relative(lin16, lin32)
    position_norm = float(np.linalg.norm(features.reshape(-1, channels), axis=1).mean())
    return {
        "shape": list(features.shape),
        "position_norm": position_norm,
        "R_mean_abs_change": float(np.abs(r16 - r32).mean()),
        "R_max_abs_change": float(np.abs(r16 - r32).max()),
        "row_argmax_agreement": float((r16.argmax(-1) == r32.argmax(-1)).mean()),
        "aligned_mix_relative_change_median": float(np.median(aligned_change)),
        "aligned_mix_relative_change_max": float(aligned_change.max()),
        "linear_mix_relative_change_median": float(np.median(linear_change)),
    }


def main():
    cli.configure_runtime()
    cases = {"resnet50": resnet50_like()}
    if FIXTURE.exists():
        with np.load(FIXTURE) as saved:
            cases["trained"] = saved["features"]
    rows = {name: compare(features) for name, features in cases.items()}
    platform = jax.devices()[0].platform
    print(f"align_mix, float32 vs bfloat16-rounded features, lam {LAM}, {platform}")
    print(f"{'features':<10}{'shape':<22}{'|dR| mean':>10}{'|dR| max':>10}{'argmax same':>12}"
          f"{'mix change med/max':>22}{'linear change':>15}")
    for name, row in rows.items():
        print(f"{name:<10}{str(tuple(row['shape'])):<22}{row['R_mean_abs_change']:>10.4f}"
              f"{row['R_max_abs_change']:>10.3f}{row['row_argmax_agreement']:>12.3f}"
              f"{row['aligned_mix_relative_change_median']:>11.4f}/"
              f"{row['aligned_mix_relative_change_max']:<10.4f}"
              f"{row['linear_mix_relative_change_median']:>15.4f}")
    print(json.dumps({"benchmark": "alignment_precision", "lam": LAM, "results": rows}))


if __name__ == "__main__":
    main()
