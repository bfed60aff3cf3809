"""The optimizer of a run: SGD with momentum and coupled weight decay as torch applies them, its
learning-rate schedule, and the run's length in steps."""

import ml_collections
import optax


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`config.num_train_steps` when > 0, else `num_epochs * steps_per_epoch` (at least 1)."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, int(round(config.num_epochs * steps_per_epoch)))


def create_learning_rate_fn(
    optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Learning rate per step: linear warmup, then constant, piecewise-constant or cosine.

    Piecewise: multiplied by `decay_factor` at each epoch of `boundaries_epochs` (absolute epochs,
    as torch's MultiStepLR). Cosine: decays to 0 at `total_steps`.
    """
    base = optimizer_config.learning_rate
    warmup_steps = int(round(optimizer_config.warmup_epochs * steps_per_epoch))
    if optimizer_config.schedule == "constant":
        main = optax.constant_schedule(base)
    elif optimizer_config.schedule == "piecewise":
        boundaries = {}
        for epoch in optimizer_config.boundaries_epochs:
            boundary = int(round(epoch * steps_per_epoch)) - warmup_steps
            boundaries[boundary] = boundaries.get(boundary, 1.0) * optimizer_config.decay_factor
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        main = optax.cosine_decay_schedule(base, max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, base, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and coupled L2 weight decay, as torch.optim.SGD applies it.

    `weight_decay * params` is added to the gradient of every parameter (BatchNorm scales and
    biases included) before the momentum trace.
    """
    momentum = optimizer_config.momentum or None
    return optax.chain(
        optax.add_decayed_weights(optimizer_config.weight_decay),
        optax.sgd(learning_rate_fn, momentum=momentum, nesterov=optimizer_config.nesterov),
    )
