"""Where the experiments' arrays live: one device mesh, two layouts.

Training, evaluation and the population statistics run data parallel as one
program over a `jax.sharding.Mesh` with a single axis `DATA` (every device of
every process): a batch is split along its leading axis over `DATA`
(`batch_sharding`), and the train state is replicated on every device
(`replicated`, `NamedSharding(mesh, P())`). A `jit` with these shardings sums
over the whole global batch itself (gradients, batch-norm statistics,
metrics): no per-device program, no explicit collective, and the same code on
one device, eight, or a pod of hosts, where each host supplies only its rows
of each global batch (`global_batch`, through
`jax.make_array_from_process_local_data`).

The library's operators (`spectral_density`) lay out the Hessian set
themselves, with the same `NamedSharding`s over their own 1-D mesh.
"""

import collections
import itertools
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = 'data'


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis `DATA` over `devices` (default: all devices of all
  processes).

  The axis is `Auto` (the compiler propagates the shardings): the models are
  written for one device and need no sharding annotations inside.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A whole copy on every device of `mesh` (train state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over `DATA`."""
  return NamedSharding(mesh, P(DATA))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` (host or device arrays, the same values in every process) as
  arrays replicated on every device of `mesh`."""
  target = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == target:
      return x
    if jax.process_count() == 1:  # device to device where it can
      return jax.device_put(x, target)
    return jax.make_array_from_process_local_data(target, np.asarray(x))
  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """A replicated tree as numpy arrays (this process's copy)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def global_batch(local: Mapping[str, np.ndarray],
                 mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> the global batch on `mesh`.

  Args:
    local: {key: [B_local, ...]}, B_local divisible by this process's devices
      in `mesh`; the processes' rows, in process order, make the global batch.

  Returns:
    {key: [B_local * processes, ...]} split along the batch axis over `DATA`.
  """
  sharding = batch_sharding(mesh)
  local_devices = len(mesh.local_devices)
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    if value.shape[0] % local_devices:
      raise ValueError(f'batch: {key!r} has {value.shape[0]} rows, which do '
                       f'not split over {local_devices} local devices')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def prefetch(batches: Iterator[Mapping[str, np.ndarray]],
             mesh: jax.sharding.Mesh,
             size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Host batches put on `mesh` (`global_batch`), `size` transfers ahead (the
  copies run asynchronously while the current step computes)."""
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}')
  queue = collections.deque()
  placed = (global_batch(b, mesh) for b in batches)
  queue.extend(itertools.islice(placed, size))
  while queue:
    yield queue.popleft()
    queue.extend(itertools.islice(placed, 1))
