"""One prepared command that measures, on one accelerator, everything the project's speed and
accuracy claims there rest on, and writes DIR/device_check.json and DIR/device_check.md.

    python benchmarks/device_check.py --out DIR --data CIFAR-10-images.tar.gz \
        --peer torch_official_step.py                 # on a GPU: ends within 6 minutes
    python benchmarks/device_check.py --out DIR --tiny  # on a CPU: small shapes, few steps

Parts, in order, each with its own time budget inside a global one (`--budget_s`, default 300 s,
so that a call and one rerun, each with its install, fit in 15 minutes of a lent GPU):
  environment  the device, the host, and the versions of jax, jaxlib, flax, optax, ott-jax, ...
  numerics     `sinkhorn_plan` and `align_mix` on the device against the float64 NumPy reference
               of tests/test_ot.py, on raw-scale features (unit normal, c = 512, like the CIFAR
               PreActResNet-18 map, which has no final BN-ReLU), float32 and bfloat16 features
  align_mix    `bench_align_mix.bench_shape` at the three paper shapes: 100 fixed iterations,
               early stopping, and the hand-written floor
  train_step   `bench_train_step` cases: `none` and `alignmixup`, PreActResNet-18 width 64,
               batch 128 and 256, float32 and bfloat16; plus `align_mix` alone at the step's
               feature shape, for the Sinkhorn's share of the alignmixup step
  peer         the official step re-created in PyTorch (`--peer`), `none` and `alignmixup`, fp32
               and bf16 autocast, each with and without `--channels_last`, on the same device;
               skipped when torch is not importable
  training     CIFAR-10 from `--data` (JPEG archive or folder), full-width PreActResNet-18,
               AlignMixup, bfloat16, as many epochs as fit in the part's budget (about 90 s on a
               GPU), test top-1 after every epoch; skipped without `--data`

Each part runs in a thread; one that fails is recorded as failed, and one still running a grace
period past its budget is recorded as timed_out and abandoned: the next part runs. What a part
finished before (each peer run, each training epoch) is kept in its record. The two files are
rewritten after every part and every peer run, so even a run stuck in compilation reports what it
measured, and the call ends within the global budget plus the grace (exit status 3 when a part
was abandoned). Step times are means and medians over interleaved rounds (see bench_train_step;
alignmixup's steps are bimodal, input or aligned branch); the peer prints its median only.
"""

from alignmix_jax import cli

cli.configure_runtime()  # before JAX starts its backend

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402

# The peer (PyTorch) shares the device: keep JAX from preallocating most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

import bench_align_mix  # noqa: E402  (benchmarks/, beside this file)
import bench_train_step  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alignmix_jax import align_mix, data, sinkhorn_plan  # noqa: E402
from alignmix_jax.trainer import experiment_config, metrics_log, parallel, train  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_FILE = REPO / "tests" / "test_ot.py"
TRAINING_CONFIG = REPO / "experiments" / "cifar10_jpg_short.py"
JSON_NAME, MARKDOWN_NAME = "device_check.json", "device_check.md"
# + start-up (~30 s) and the grace: within 6 minutes, so two calls with their installs
# (~15 s) and machine starts fit in a session's 15 device minutes.
DEFAULT_BUDGET_S = 300.0
GRACE_S = 20.0  # past its budget, a part still running is abandoned
TIMED_OUT_STATUS = 3  # the exit status when a part was abandoned
EPSILON, NUM_ITERS = bench_align_mix.SINKHORN.epsilon, bench_align_mix.SINKHORN.num_iters
THRESHOLD = bench_align_mix.EARLY_STOP_THRESHOLD
LAM = 0.3
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "libtpu",
    "flax",
    "optax",
    "ott-jax",
    "orbax-checkpoint",
    "grain",
    "ml-collections",
    "numpy",
    "torch",
)
# The numerics part's tolerance, relative to the largest reference entry: the float32 rounding of
# the 100 updates, each of which rounds log-sum-exp arguments as large as m = max C / epsilon, so
# R = r P (entries <= 1) is good to ROUNDING_FACTOR * 2^-24 * m (the bound of tests/test_ot.py's
# one-call comparison with ott). At raw unit-normal c = 512 features m is ~1.3e4: about 6e-3.
# A fixed 1e-3, measured on one seed, failed ott's own solver on others (up to 2.1e-3 on a CPU).
# bfloat16 mixed features are also rounded to bfloat16 (2^-8 relative) on output.
ROUNDING_FACTOR = 8
BFLOAT16_OUTPUT_ROUNDING = 2.0**-8
# Targets of issue 11 (benchmarks, not tests).
TARGET_ALIGNMIXUP_TO_NONE = 0.95
TARGET_ALIGNMIXUP_TO_PEER = 2.0
TARGET_FIXED_TO_FLOOR = 2.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Shapes, step counts and part budgets: the real check, or `--tiny` for a CPU."""

    numerics_shape: tuple[int, ...]
    align_mix_shapes: dict[str, tuple[int, ...]]
    align_mix_repeats: int
    step_batch_sizes: tuple[int, ...]
    step_dtypes: tuple[str, ...]
    step_base_width: int
    step_stage_sizes: tuple[int, ...]
    step_rounds: int
    peer_batch: int
    peer_steps: int
    peer_warmup: int
    training_batch_size: int
    training_max_epochs: int
    training_compile_s: float  # set aside from the training budget for compilation
    budgets_s: dict[str, float]


FULL = Settings(
    numerics_shape=(16, 4, 4, 512),
    align_mix_shapes=bench_align_mix.PAPER_SHAPES,
    align_mix_repeats=10,
    step_batch_sizes=(128, 256),
    step_dtypes=("bfloat16", "float32"),
    step_base_width=64,
    step_stage_sizes=(2, 2, 2, 2),
    step_rounds=20,
    peer_batch=128,
    peer_steps=30,
    peer_warmup=5,
    training_batch_size=128,
    training_max_epochs=200,
    training_compile_s=45.0,
    budgets_s={
        "environment": 10,
        "numerics": 20,
        "align_mix": 30,
        "train_step": 150,  # 4 rows of 2 steps, each built in about 10 s on a GPU
        "peer": 90,  # 8 runs of 35 steps, about 9 s each
        "training": 90,
    },
)
TINY = Settings(
    numerics_shape=(4, 2, 2, 32),
    align_mix_shapes={"cifar_preactresnet18": (8, 2, 2, 16)},
    align_mix_repeats=2,
    step_batch_sizes=(16,),
    step_dtypes=("float32",),  # bfloat16 steps run in the training part
    step_base_width=8,
    step_stage_sizes=(1, 1, 1, 1),
    step_rounds=2,
    peer_batch=16,
    peer_steps=2,
    peer_warmup=1,
    training_batch_size=16,
    training_max_epochs=2,
    training_compile_s=0.0,
    budgets_s={
        "environment": 30,
        "numerics": 60,
        "align_mix": 60,
        "train_step": 180,
        "peer": 60,
        "training": 120,
    },
)
PARTS = tuple(FULL.budgets_s)


class Report:
    """The results so far, written to DIR as JSON and Markdown after every part."""

    def __init__(self, out: pathlib.Path, tiny: bool, budget_s: float):
        self.out = out
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.data = {
            "check": "device_check",
            "tiny": tiny,
            "budget_s": budget_s,
            "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "parts": {},
        }
        # part -> () -> fields measured so far, kept when the part fails or overruns
        self.progress: dict[str, Callable[[], dict]] = {}

    def record(self, part: str, status: str, seconds: float, **fields) -> None:
        with self.lock:
            self.data["parts"][part] = {"status": status, "seconds": round(seconds, 1), **fields}

    def write(self) -> None:
        with self.lock:
            self.data["wall_s"] = round(time.monotonic() - self.started, 1)
            self.data["targets"] = targets(self.data["parts"])
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / JSON_NAME).write_text(json.dumps(self.data, indent=2, default=float))
            (self.out / MARKDOWN_NAME).write_text(markdown(self.data))


class Clock:
    """The time left to a part: its own budget, capped by what is left of the global one."""

    def __init__(self, deadline: float):
        self.start = time.monotonic()
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ----------------------------------------------------------------------------- parts


def run_environment(settings: Settings, args, clock: Clock) -> dict:
    devices = jax.devices()
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    memory = devices[0].memory_stats() or {}
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "device_memory_gib": round(memory["bytes_limit"] / 2**30, 1)
        if "bytes_limit" in memory
        else None,
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


def load_reference():
    """The float64 NumPy Sinkhorn of tests/test_ot.py (`reference_plans`)."""
    spec = importlib.util.spec_from_file_location("_test_ot_reference", REFERENCE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_plans


def raw_features(shape, seed: int) -> jax.Array:
    """Unit-normal features: the raw scale of the CIFAR PreActResNet-18 last map."""
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def numerics_case(reference_plans, a, b) -> dict:
    """Largest errors of `sinkhorn_plan` and `align_mix` (both directions) on `a`, `b`
    `(B, H, W, C)` against float64 on the same (rounded) values."""
    batch, channels = a.shape[0], a.shape[-1]
    a64 = np.asarray(a.astype(jnp.float32), np.float64).reshape(batch, -1, channels)
    b64 = np.asarray(b.astype(jnp.float32), np.float64).reshape(batch, -1, channels)
    r = a64.shape[1]
    expected_plan = reference_plans(a64, b64, EPSILON, NUM_ITERS)
    rows = r * expected_plan
    squared_norms = (a64**2).sum(-1)[:, :, None] + (b64**2).sum(-1)[:, None, :]
    max_cost_over_eps = float((squared_norms - 2 * a64 @ np.swapaxes(b64, 1, 2)).max() / EPSILON)
    rounding = float(ROUNDING_FACTOR * 2.0**-24 * max_cost_over_eps / rows.max())
    expected_mixed = {
        0: LAM * a64 + (1 - LAM) * rows @ b64,
        1: LAM * np.swapaxes(rows, 1, 2) @ a64 + (1 - LAM) * b64,
    }
    tokens = (a.reshape(batch, r, channels), b.reshape(batch, r, channels))
    plan = np.asarray(jax.jit(sinkhorn_plan)(*tokens), np.float64)
    result = {
        "max_cost_over_epsilon": max_cost_over_eps,
        "tolerance": {"plan": rounding, "mixed": rounding},
        "plan_error": float(np.abs(plan - expected_plan).max() / expected_plan.max()),
        "row_marginal_error": float(np.abs(r * plan.sum(-1) - 1).max()),
    }
    for direction, expected in expected_mixed.items():
        mix = jax.jit(lambda x, y, d=direction: align_mix(x, y, LAM, direction=d))
        mixed = np.asarray(mix(a, b).astype(jnp.float32), np.float64).reshape(expected.shape)
        error = np.abs(mixed - expected).max() / np.abs(expected).max()
        result[f"mixed_error_direction{direction}"] = float(error)
    return result


def run_numerics(settings: Settings, args, clock: Clock) -> dict:
    reference_plans = load_reference()
    a = raw_features(settings.numerics_shape, 1)
    b = raw_features(settings.numerics_shape, 2)
    cases = {}
    for dtype in ("float32", "bfloat16"):
        case = numerics_case(reference_plans, a.astype(dtype), b.astype(dtype))
        if dtype == "bfloat16":
            case["tolerance"]["mixed"] += BFLOAT16_OUTPUT_ROUNDING
        case["within_tolerance"] = case["plan_error"] <= case["tolerance"]["plan"] and all(
            case[f"mixed_error_direction{d}"] <= case["tolerance"]["mixed"] for d in (0, 1)
        )
        cases[dtype] = case
    return {
        "shape": list(settings.numerics_shape),
        "epsilon": EPSILON,
        "num_iters": NUM_ITERS,
        "tolerance_measured_as": (
            f"{ROUNDING_FACTOR} * 2^-24 * max cost / epsilon over the largest entry of R = r P, "
            "plus 2^-8 for bfloat16 mixed features (rounded on output)"
        ),
        "cases": cases,
    }


def run_align_mix(settings: Settings, args, clock: Clock) -> dict:
    shapes = {}
    for name, shape in settings.align_mix_shapes.items():
        if clock.left() <= 0:
            return {"shapes": shapes, "incomplete": "out of time"}
        row = bench_align_mix.bench_shape(shape, NUM_ITERS, THRESHOLD, settings.align_mix_repeats)
        row["ratio_fixed_to_floor"] = row["fixed_ms"] / row["floor_ms"]
        shapes[name] = {"shape": list(shape), **row}
    return {"num_iters": NUM_ITERS, "threshold": THRESHOLD, "shapes": shapes}


def align_mix_ms(shape, dtype: str, repeats: int) -> float:
    """Median ms of the jitted `align_mix` (100 fixed iterations) on `shape` features."""
    a = raw_features(shape, 1).astype(dtype)
    b = raw_features(shape, 2).astype(dtype)
    mix = jax.jit(lambda x, y: align_mix(x, y, LAM, direction=0, num_iters=NUM_ITERS))
    return 1e3 * bench_align_mix.median_seconds(mix, (a, b), repeats)


def run_train_step(settings: Settings, args, clock: Clock, report: Report) -> dict:
    """One row per (batch, dtype): its `none` and `alignmixup` steps built one after the other
    (parallel builds on one GPU contend in autotuning), then timed interleaved; each row is kept
    as it finishes, so a part that runs out of time reports the rows it measured."""
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    input_prob = experiment_config.default_config("cifar10").mix.input_prob
    feature_channels = 8 * settings.step_base_width  # the last stage's width
    rows = []
    fields = {
        "model": f"PreActResNet-18 {settings.step_stage_sizes} width {settings.step_base_width}",
        "rounds": settings.step_rounds,
        "rows": rows,
        "sinkhorn_share_measured_as": (
            "align_mix alone (100 iterations) at the step's feature shape (B, 4, 4, C) in the "
            "compute dtype, times 1 - input_prob (the steps that take the aligned branch), over "
            "the mean alignmixup step; the extra share is 1 - (mean none step) / (mean "
            "alignmixup step)"
        ),
    }
    report.progress["train_step"] = lambda: {**fields, "rows": list(rows)}
    for batch in settings.step_batch_sizes:
        for dtype in settings.step_dtypes:
            if clock.left() <= 0:
                return {**fields, "incomplete": "out of time"}
            cases = [
                bench_train_step.StepCase(
                    method, batch, dtype, settings.step_base_width, settings.step_stage_sizes
                )
                for method in ("none", "alignmixup")
            ]
            start = time.monotonic()
            runs = bench_train_step.build_steps(cases, mesh, workers=1)
            build_s = time.monotonic() - start
            times = bench_train_step.time_steps(runs, settings.step_rounds)
            none, mixup = (
                bench_train_step.images_per_sec(batch, times[case]) for case in cases
            )
            sinkhorn_ms = align_mix_ms(
                (batch, 4, 4, feature_channels), dtype, settings.align_mix_repeats
            )
            rows.append(
                {
                    "batch_size": batch,
                    "compute_dtype": dtype,
                    "build_s": round(build_s, 1),
                    "none": none,
                    "alignmixup": mixup,
                    "ratio_mean": mixup["mean"] / none["mean"],
                    "ratio_median": mixup["median"] / none["median"],
                    "align_mix_ms": sinkhorn_ms,
                    # align_mix runs on the steps whose coin picks aligned mixup (1 - input_prob).
                    "sinkhorn_share": (1 - input_prob) * sinkhorn_ms / mixup["mean_ms"],
                    "extra_share": 1 - none["mean_ms"] / mixup["mean_ms"],
                }
            )
            report.record("train_step", "running", time.monotonic() - clock.start, **fields)
            report.write()
    return fields


PEER_MODES = ("none", "alignmixup")
PEER_PRECISIONS = {"none": "float32", "bf16": "bfloat16"}  # --amp -> our compute dtype
PEER_LAYOUTS = (False, True)  # --channels_last


def parse_peer_line(output: str) -> dict:
    """The peer's `peer=torch mode=... img_per_s=... med_ms=...` line as a dict (numbers as
    floats)."""
    for line in reversed(output.splitlines()):
        if line.startswith("peer="):
            fields = dict(token.split("=", 1) for token in line.split())
            for name in ("img_per_s", "med_ms", "align_frac", "batch"):
                fields[name] = float(fields[name])
            return fields
    raise RuntimeError(f"the peer printed no 'peer=' line:\n{output[-2000:]}")


def run_peer(settings: Settings, args, clock: Clock, report: Report) -> dict:
    """The peer's runs, each recorded (and the report written) as it finishes."""
    if args.peer is None:
        raise Skipped("no --peer given (the PyTorch re-creation of the official step)")
    device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
    runs = []
    report.progress["peer"] = lambda: {"device": device, "runs": list(runs)}
    for amp in PEER_PRECISIONS:
        for channels_last in PEER_LAYOUTS:
            for mode in PEER_MODES:
                if clock.left() <= 0:
                    return {"device": device, "runs": runs, "incomplete": "out of time"}
                command = [sys.executable, str(args.peer), "--device", device, "--mode", mode]
                command += ["--amp", amp, "--batch", str(settings.peer_batch)]
                command += ["--steps", str(settings.peer_steps)]
                command += ["--warmup", str(settings.peer_warmup)]
                command += ["--channels_last"] if channels_last else []
                try:
                    result = subprocess.run(
                        command, capture_output=True, text=True, timeout=max(clock.left(), 1.0)
                    )
                except subprocess.TimeoutExpired:
                    return {"device": device, "runs": runs, "incomplete": "out of time"}
                if result.returncode != 0:
                    if "No module named 'torch'" in result.stderr:
                        raise Skipped(f"torch is not importable by {sys.executable}")
                    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
                runs.append({**parse_peer_line(result.stdout), "channels_last": channels_last})
                report.record("peer", "running", time.monotonic() - clock.start, device=device,
                              runs=list(runs))
                report.write()
    return {"device": device, "runs": runs}


def training_epochs(settings: Settings, steps_per_epoch: int, seconds: float, step_s) -> int:
    """Epochs that fit in `seconds` at `step_s` per step (50% more for evaluation, input and
    logging), at least 1, at most the settings' cap; 1 when no step time was measured."""
    if step_s is None:
        return 1
    epochs = math.floor(seconds / (1.5 * steps_per_epoch * step_s))
    return max(1, min(settings.training_max_epochs, epochs))


def measured_step_s(report: Report, batch: int, dtype: str) -> float | None:
    """Mean seconds of the alignmixup step at `batch` from the train_step part, in `dtype` when
    measured, else in another dtype; None when the part measured no step at `batch`."""
    rows = report.data["parts"].get("train_step", {}).get("rows", [])
    rows = sorted(
        (row for row in rows if row["batch_size"] == batch),
        key=lambda row: row["compute_dtype"] != dtype,
    )
    return rows[0]["alignmixup"]["mean_ms"] / 1e3 if rows else None


def run_training(settings: Settings, args, clock: Clock, report: Report) -> dict:
    if args.data is None:
        raise Skipped("no --data given (the CIFAR-10 JPEG archive or folder)")
    with tempfile.TemporaryDirectory(prefix="device_check_training_") as scratch:
        return train_cifar10(settings, args.data, pathlib.Path(scratch), clock, report)


def train_cifar10(settings: Settings, path, scratch: pathlib.Path, clock: Clock, report) -> dict:
    """AlignMixup in bfloat16 on the CIFAR-10 images at `path` for the epochs that fit."""
    config = experiment_config.load_config(str(TRAINING_CONFIG))
    config.data.path = str(pathlib.Path(path).resolve())
    config.data.cache_dir = str(scratch / "cache")
    config.model.base_width = settings.step_base_width
    config.model.stage_sizes = settings.step_stage_sizes
    config.compute_dtype = "bfloat16"
    config.mix.method = "alignmixup"
    config.batch_size = settings.training_batch_size
    config.progress_bar = False
    start = time.monotonic()
    steps_per_epoch = data.steps_per_epoch(config.data, config.batch_size)  # decodes the images
    decode_s = time.monotonic() - start
    step_s = measured_step_s(report, config.batch_size, config.compute_dtype)
    seconds = clock.left() - settings.training_compile_s
    config.num_epochs = training_epochs(settings, steps_per_epoch, seconds, step_s)
    config.checkpoint_every_steps = config.num_epochs * steps_per_epoch

    def epoch_top1() -> list[dict]:
        records = metrics_log.read_metrics(scratch / "run")
        return [
            {"epoch": r["step"] / steps_per_epoch, "top1": r["eval_top1"]}
            for r in records
            if "eval_top1" in r
        ]

    run = {
        "data": str(path),
        "model": f"PreActResNet-18 {config.model.stage_sizes} width {config.model.base_width}",
        "method": config.mix.method,
        "compute_dtype": config.compute_dtype,
        "batch_size": config.batch_size,
        "epochs": config.num_epochs,
        "epochs_from_step_ms": None if step_s is None else round(1e3 * step_s, 2),
        "steps_per_epoch": steps_per_epoch,
        "decode_s": round(decode_s, 1),
    }
    report.progress["training"] = lambda: {**run, "epoch_top1": epoch_top1()}
    summary = train.train_and_evaluate(config, scratch / "run")
    return {**run, "epoch_top1": epoch_top1(), "summary": summary}


class Skipped(Exception):
    """A part that cannot run here (no data, no peer, no torch): recorded as skipped."""


# ----------------------------------------------------------------------------- targets, Markdown


def targets(parts: dict) -> dict:
    """Each target of issue 11 that the parts measured: the value and whether it is met."""
    found = {}
    rows = parts.get("train_step", {}).get("rows", [])
    for row in rows:  # at the first batch size: 128 (the paper's), or --tiny's
        if row["batch_size"] == rows[0]["batch_size"]:
            name = f"alignmixup_to_none_{row['compute_dtype']}_batch{row['batch_size']}"
            found[name] = target(row["ratio_mean"], TARGET_ALIGNMIXUP_TO_NONE)
    ours = {(row["compute_dtype"], row["batch_size"]): row["alignmixup"]["median"] for row in rows}
    peers = {}  # the faster layout of the peer, per precision
    for run in parts.get("peer", {}).get("runs", []):
        key = (PEER_PRECISIONS[run["amp"]], int(run["batch"]))
        if run["mode"] == "alignmixup" and key in ours:
            peers[key] = max(peers.get(key, 0.0), run["img_per_s"])
    for key, peer_rate in peers.items():
        ratio = ours[key] / peer_rate
        found[f"alignmixup_to_peer_{key[0]}"] = target(ratio, TARGET_ALIGNMIXUP_TO_PEER)
    for name, row in parts.get("align_mix", {}).get("shapes", {}).items():
        if name == "cifar_preactresnet18":
            found["align_mix_fixed_to_floor_cifar"] = target(
                row["ratio_fixed_to_floor"], TARGET_FIXED_TO_FLOOR, higher_is_better=False
            )
    for dtype, case in parts.get("numerics", {}).get("cases", {}).items():
        found[f"numerics_{dtype}"] = {"met": case["within_tolerance"]}
    return found


def target(value: float, bound: float, higher_is_better: bool = True) -> dict:
    met = value >= bound if higher_is_better else value <= bound
    return {"value": round(value, 3), "bound": bound, "met": bool(met)}


def markdown(report: dict) -> str:
    """The report as Markdown: a status line per part, then a table per measured part."""
    parts = report["parts"]
    lines = [f"# device_check{' (--tiny)' if report['tiny'] else ''}", ""]
    environment = parts.get("environment", {})
    if environment.get("status") == "ok":
        versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
        memory = environment["device_memory_gib"]
        lines += [
            f"{environment['device_count']} x {environment['device_kind']} "
            f"({environment['platform']}{'' if memory is None else f', {memory} GiB'}), "
            f"{environment['host_cpus']} host CPUs, Python {environment['python']}; {versions}.",
            "",
        ]
    lines += ["| part | status | seconds | note |", "|---|---|---|---|"]
    for name in PARTS:
        part = parts.get(name, {"status": "not run", "seconds": 0})
        note = part.get("reason") or part.get("incomplete") or ""
        lines.append(f"| {name} | {part['status']} | {part['seconds']} | {note} |")
    lines.append("")
    numerics = parts.get("numerics", {})
    if "cases" in numerics:
        lines += [
            f"## Numerics against float64 ({numerics['shape']}, eps {EPSILON}, {NUM_ITERS} "
            "iterations; errors relative to the largest reference entry)",
            "",
            "| features | plan | align_mix dir 0 | align_mix dir 1 | tolerance (plan, mixed) "
            "| within tolerance |",
            "|---|---|---|---|---|---|",
        ]
        for dtype, case in numerics["cases"].items():
            lines.append(
                f"| {dtype} | {case['plan_error']:.2e} | {case['mixed_error_direction0']:.2e} "
                f"| {case['mixed_error_direction1']:.2e} | {case['tolerance']['plan']:.1e}, "
                f"{case['tolerance']['mixed']:.1e} | {case['within_tolerance']} |"
            )
        lines.append("")
    shapes = parts.get("align_mix", {}).get("shapes", {})
    if shapes:
        lines += [
            "## align_mix (median ms)",
            "",
            "| case | features | fixed 100 | early stop | floor | fixed / floor |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in shapes.items():
            lines.append(
                f"| {name} | {tuple(row['shape'])} | {row['fixed_ms']:.2f} "
                f"| {row['early_stop_ms']:.2f} | {row['floor_ms']:.2f} "
                f"| {row['ratio_fixed_to_floor']:.2f} |"
            )
        lines.append("")
    step = parts.get("train_step", {})
    if step.get("rows"):
        lines += [
            f"## Train step, {step['model']} (images/s, mean step; median in brackets)",
            "",
            "| batch | dtype | none | alignmixup | ratio | align_mix ms | Sinkhorn share "
            "| extra share |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in step["rows"]:
            lines.append(
                f"| {row['batch_size']} | {row['compute_dtype']} "
                f"| {row['none']['mean']:.0f} ({row['none']['median']:.0f}) "
                f"| {row['alignmixup']['mean']:.0f} ({row['alignmixup']['median']:.0f}) "
                f"| {row['ratio_mean']:.3f} | {row['align_mix_ms']:.2f} "
                f"| {row['sinkhorn_share']:.1%} | {row['extra_share']:.1%} |"
            )
        lines += ["", f"Sinkhorn share: {step['sinkhorn_share_measured_as']}.", ""]
    peer = parts.get("peer", {})
    if peer.get("runs"):
        lines += [
            f"## Peer: the official step in PyTorch ({peer['device']}; images/s over the median "
            "step, the only one the peer prints: no mean)",
            "",
            "| mode | amp | channels_last | images/s | median ms | aligned fraction |",
            "|---|---|---|---|---|---|",
        ]
        for run in peer["runs"]:
            lines.append(
                f"| {run['mode']} | {run['amp']} | {run['channels_last']} | {run['img_per_s']:.0f} "
                f"| {run['med_ms']:.2f} | {run['align_frac']:.2f} |"
            )
        lines.append("")
    training = parts.get("training", {})
    if training.get("epoch_top1"):
        lines += [
            f"## Training: {training['model']}, {training['method']}, {training['compute_dtype']},"
            f" batch {training['batch_size']}, {training['epochs']} epochs",
            "",
            "| epoch | test top-1 |",
            "|---|---|",
        ]
        lines += [f"| {e['epoch']:g} | {e['top1']:.2f} |" for e in training["epoch_top1"]]
        lines.append("")
    if training.get("summary"):
        summary = training["summary"]
        lines += [
            f"Best {summary['best_top1']:.2f}, final {summary['final_top1']:.2f}, "
            f"{summary['images_per_sec']:.0f} images/s, {summary['wall_time_sec']:.0f} s of "
            f"training after {training['decode_s']} s decoding the images.",
            "",
        ]
    if report.get("targets"):
        lines += ["## Targets", "", "| target | value | bound | met |", "|---|---|---|---|"]
        for name, found in report["targets"].items():
            value, bound = found.get("value", ""), found.get("bound", "")
            lines.append(f"| {name} | {value} | {bound} | {found['met']} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path, help="folder for the results")
    parser.add_argument("--tiny", action="store_true", help="small shapes and steps, for a CPU")
    parser.add_argument("--data", type=pathlib.Path, help="CIFAR-10 JPEG archive or folder")
    parser.add_argument("--peer", type=pathlib.Path, help="torch_official_step.py")
    parser.add_argument("--budget_s", type=float, default=DEFAULT_BUDGET_S, help="global budget")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    parser.add_argument(
        "--grace_s",
        type=float,
        default=GRACE_S,
        help="seconds past its budget before a part still running is abandoned",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts.split(",")) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; expected among {list(PARTS)}")
    for name in ("data", "peer"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            parser.error(f"--{name}: {path} does not exist")
    for name in ("budget_s", "grace_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    return args


def run_part(runner: Callable, settings: Settings, args, clock: Clock, grace_s: float):
    """`runner(settings, args, clock)` in a thread: its result dict, the exception it raised, or
    None when it is still running `grace_s` past the clock's deadline (the thread is abandoned)."""
    outcome = []

    def work():
        try:
            outcome.append(runner(settings, args, clock))
        except Exception as error:  # noqa: BLE001 -- returned, and recorded by the caller
            outcome.append(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(max(clock.left(), 0.0) + grace_s)
    return outcome[0] if outcome else None


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = TINY if args.tiny else FULL
    report = Report(args.out, args.tiny, args.budget_s)
    global_deadline = report.started + args.budget_s
    runners: dict[str, Callable] = {
        "environment": run_environment,
        "numerics": run_numerics,
        "align_mix": run_align_mix,
        "train_step": lambda s, a, c: run_train_step(s, a, c, report),
        "peer": lambda s, a, c: run_peer(s, a, c, report),
        "training": lambda s, a, c: run_training(s, a, c, report),
    }
    selected = args.parts.split(",")
    for name in PARTS:
        if name not in selected:
            continue
        start = time.monotonic()
        clock = Clock(min(start + settings.budgets_s[name], global_deadline))
        if clock.left() <= 0:
            report.record(name, "skipped", 0.0, reason="the global budget was spent")
            report.write()
            continue
        print(f"device_check: {name} (budget {clock.left():.0f} s)", flush=True)
        outcome = run_part(runners[name], settings, args, clock, args.grace_s)
        seconds = time.monotonic() - start
        progress = report.progress.get(name, dict)
        if outcome is None:
            reason = f"still running {args.grace_s:g} s past its budget; abandoned"
            report.record(name, "timed_out", seconds, reason=reason, **progress())
        elif isinstance(outcome, Skipped):
            report.record(name, "skipped", seconds, reason=str(outcome))
        elif isinstance(outcome, Exception):
            report.record(
                name,
                "failed",
                seconds,
                **progress(),
                reason=f"{type(outcome).__name__}: {outcome}"[:500],
                traceback="".join(traceback.format_exception(outcome))[-4000:],
            )
        else:
            status = "incomplete" if "incomplete" in outcome else "ok"
            if clock.left() < 0:
                outcome["over_budget_s"] = round(-clock.left(), 1)
            report.record(name, status, seconds, **outcome)
        report.write()
        print(f"device_check: {name} {report.data['parts'][name]['status']}", flush=True)
    print(markdown(report.data))
    print(json.dumps({"device_check": str(args.out / JSON_NAME), **report.data["targets"]}))
    if any(part["status"] == "timed_out" for part in report.data["parts"].values()):
        sys.stdout.flush()
        os._exit(TIMED_OUT_STATUS)  # without waiting for the abandoned part's thread


if __name__ == "__main__":
    main()
