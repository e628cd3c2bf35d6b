"""Data parallelism: one device mesh (axis 'data'), sharded batches, replicated state.

The train and eval steps are plain `jax.jit` functions over global arrays: parameters carry a
replicated `NamedSharding`, batches are split along their leading axis over every device of
every process, and XLA inserts the gradient all-reduce. Multi-host runs start with
`initialize` (a thin wrapper of `jax.distributed.initialize`); each process then loads only its
slice of every global batch and `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`.
"""

import collections
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

def initialize(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0,
               cpu_collectives: str = "gloo") -> None:
  """Joins a multi-process run when `num_processes > 1` (no-op otherwise).

  On CPU, cross-process collectives need an implementation (`gloo`); it must be chosen before
  `jax.distributed.initialize`.
  """
  if num_processes <= 1:
    return
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` (host or device arrays) on all devices of `mesh`."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # Every process holds the same values (same seed); build the global array from them.
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
      tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Global arrays from this process's slice `[b_local, ...]` of every field of `batch`."""
  sharding = data_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in batch.items()}


def to_host(tree):
  """Fetches (possibly multi-host) global arrays to NumPy on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (every process gets the same answer, so a decision
  to run a collective computation is taken by all of them or none)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op for a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def prefetch_to_mesh(batches: Iterator[dict], mesh: Mesh, size: int) -> Iterator[dict]:
  """`shard_batch` of every batch, `size` batches ahead: the transfers are asynchronous, so
  the next batches' copies to the devices overlap the running step (0: none ahead)."""
  ahead = collections.deque()
  for batch in batches:
    ahead.append(shard_batch(batch, mesh))
    if len(ahead) > size:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()
