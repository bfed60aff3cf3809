"""The generic trainer: configs (`experiment_config`), the train and eval steps and loop (`train`),
checkpoints (`checkpointing`), what a run reports (`run_summary`, `metrics_log`) and the device
mesh (`parallel`)."""
