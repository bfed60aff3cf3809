"""Device-mesh helpers for the data-parallel train and eval steps (one mesh axis, `data`)."""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices is empty; expected at least one jax.Device for the data mesh")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy of an array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) dimension of an array over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Places every array of `tree` (identical on all hosts) fully on every device of `mesh`.

    Works when `mesh` spans several hosts (where `jax.device_put` refuses devices it cannot
    address): each host supplies its own, identical, copy. PRNG key arrays stay key arrays.
    """
    sharding = replicated_sharding(mesh)

    def place(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_data = place(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(place, tree)


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that is at least `batch_size` (an eval
    batch, whose padding rows carry mask 0)."""
    return -(-batch_size // mesh.size) * mesh.size


def shard_host_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch {name: (host_batch, ...)} -> global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }
