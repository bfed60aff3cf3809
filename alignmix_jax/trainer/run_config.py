"""A run's experiment config on disk: `config.json` in the workdir, and whether a changed config
may resume the run (fields that say where and how it runs may change; the rest may not, unless the
change is accepted and recorded in `config_changes.jsonl`)."""

import json
import pathlib

import ml_collections

CONFIG_FILE = "config.json"


def save(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
    """Writes `config` as `workdir/config.json` (atomically) and returns its path."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    temporary.replace(path)
    return path


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {key: _lists_to_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(item) for item in value)
    return value


def read(workdir) -> ml_collections.ConfigDict:
    """Reads `workdir/config.json` back into a ConfigDict (JSON lists become tuples)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise ValueError(
            f"workdir={str(workdir)!r} has no {CONFIG_FILE}; expected a training run directory"
        )
    return ml_collections.ConfigDict(_lists_to_tuples(json.loads(path.read_text())))


CONFIG_CHANGES_FILE = "config_changes.jsonl"
# Fields that say where and how a run executes, or describe it, not what it computes: they may
# change on resume.
RUNTIME_FIELDS = frozenset({
    "progress_bar", "tensorboard", "stop_on_divergence", "paper_top1", "keep_checkpoints",
    "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "eval_batch_size",
    "distributed", "distributed_coordinator", "distributed_num_processes", "distributed_process_id",
    "data.data_dir", "data.manual_dir", "data.path", "data.cache_dir", "smoke_replaced_data",
    "compilation_cache_dir", "profile_steps",
})


class ConfigChangedError(ValueError):
    """A run was resumed with a config that differs from the one it was trained with."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, config: dict) -> dict[str, tuple]:
    """`{dotted field: (saved value, new value)}` for every field that differs between two config
    dicts, leaving out `RUNTIME_FIELDS`; a field absent on one side shows as "<absent>"."""
    old, new = _flatten(_lists_to_tuples(saved)), _flatten(_lists_to_tuples(config))
    absent = "<absent>"
    return {
        field: (old.get(field, absent), new.get(field, absent))
        for field in sorted(old.keys() | new.keys())
        if field not in RUNTIME_FIELDS and old.get(field, absent) != new.get(field, absent)
    }


def check_resumed_config(
    config: ml_collections.ConfigDict, workdir, step: int, accept: bool, is_writer: bool
) -> dict[str, tuple]:
    """Compares `config` with the `config.json` of the run resumed at `step` in `workdir`.

    Raises ConfigChangedError listing the changed fields (old -> new) unless `accept`; accepted
    changes are appended to `workdir/config_changes.jsonl` as {"step", "changes"} (by the writer
    host). Returns the changes.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return {}
    changes = config_changes(json.loads(path.read_text()), config.to_dict())
    if not changes:
        return {}
    listed = "; ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in changes.items())
    if not accept:
        raise ConfigChangedError(
            f"workdir={str(workdir)!r} holds a run trained to step {step} with another config "
            f"({listed}). Resume with the same config, use a new workdir, or pass "
            "--accept_config_changes to go on with the new one (the change is recorded in "
            f"{CONFIG_CHANGES_FILE})"
        )
    if is_writer:
        record = {"step": step, "changes": {f: list(values) for f, values in changes.items()}}
        with (pathlib.Path(workdir) / CONFIG_CHANGES_FILE).open("a") as file:
            file.write(json.dumps(record, default=str) + "\n")
    return changes
