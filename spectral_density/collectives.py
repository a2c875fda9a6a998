"""Vectors split over devices, and the collectives that work on them.

With ``basis='sharded'`` every Lanczos vector of ``dim`` entries is cut into
``num_shards`` slices of ``ceil(dim / num_shards)`` entries (the last padded
with zeros); device ``i`` of the mesh holds slice ``i`` of every vector. Dot
products are a local dot plus a `psum`; a product ``H v`` gathers ``v``, sums
this device's batches and `psum_scatter`s the result back into slices.

`local_slice`, `gather`, `scatter_sum` and `psum` run inside `shard_map` (or
`pmap`) over the axis `AXIS`; the rest build meshes, layouts and block
functions.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

AXIS = 'devices'


def mesh(devices):
  """A 1-D mesh over `devices` with axis `AXIS`."""
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def sharding(devices):
  """Leading axis split over `devices` (as `pmap` lays out its inputs)."""
  return NamedSharding(mesh(devices), PartitionSpec(AXIS))


def replicate(tree, devices):
  """`tree` as arrays replicated on every device of `devices` (all processes).

  Each process passes its own copy of the same values (parameters, a small
  batch); arrays already laid out that way are kept.
  """
  target = NamedSharding(mesh(devices), PartitionSpec())

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == target:
      return x
    if jax.process_count() == 1:  # device to device where it can
      return jax.device_put(x, target)
    return jax.make_array_from_process_local_data(target, np.asarray(x))
  return jax.tree.map(put, tree)


def slice_size(dim, num_shards):
  """Entries per device of a vector of `dim` entries."""
  return -(-int(dim) // int(num_shards))


def _pad_last(x, size):
  pad = size - x.shape[-1]
  if pad == 0:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def local_slice(x, num_shards):
  """``[..., dim] -> [..., ceil(dim / num_shards)]``: this device's slice of
  a vector every device holds in full."""
  size = slice_size(x.shape[-1], num_shards)
  x = _pad_last(x, size * num_shards)
  start = jax.lax.axis_index(AXIS) * size
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)


def gather(x_local, dim):
  """``[..., dim_local] -> [..., dim]``: the whole vector on every device."""
  full = jax.lax.all_gather(x_local, AXIS, axis=x_local.ndim - 1, tiled=True)
  return full[..., :dim]


def scatter_sum(x, num_shards):
  """``[..., dim] -> [..., dim_local]``: this device's slice of the sum of `x`
  over devices (a reduce-scatter: half the traffic of `psum` then slice)."""
  size = slice_size(x.shape[-1], num_shards)
  x = _pad_last(x, size * num_shards)
  return jax.lax.psum_scatter(x, AXIS, scatter_dimension=x.ndim - 1,
                              tiled=True)


def psum(x):
  return jax.lax.psum(x, AXIS)


def on_blocks(fn, num_split):
  """`fn` for `shard_map` blocks: its first `num_split` arguments and all its
  outputs are split over `AXIS`, so each device sees a leading ``[1]`` axis,
  which this strips from those arguments and restores on the outputs."""
  def body(*args):
    split = jax.tree.map(lambda x: x[0], args[:num_split])
    out = fn(*split, *args[num_split:])
    return jax.tree.map(lambda x: x[None], out)
  return body
