"""Data parallelism over every device: a 1-D ('data',) mesh, batch sharded, state replicated.

This is the sharded-`jit` successor of `jax.pmap` (which JAX documents as the old way in the
installed 0.10 release): the train step is an ordinary `jax.jit` function whose inputs carry
`NamedSharding`s, and XLA inserts the collectives. Because the batch is one global array, BatchNorm
statistics and triplet mining see the whole P x K batch, so the loss does not depend on how many
devices there are.
"""

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, field: str) -> None:
  """Fail early, naming the config field, when a batch cannot be split evenly over the devices."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f'{field} gives a global batch of {global_batch_size}, which does not divide evenly over '
        f'{num_devices} devices; choose a batch size that is a multiple of {num_devices}.')


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Host NumPy batch -> global `jax.Array`s sharded on the batch axis.

  Each process passes only its own rows (its share of the global batch, in global order); with one
  process that is the whole batch. `[B_local, ...]` per process -> `[B_global, ...]` global.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a pytree of host or device arrays on every device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))
