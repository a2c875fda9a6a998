"""Every multi-device mechanism in one place: how a run spreads over a pod.

* Meshes and layouts: `mesh`, `sharding` (leading axis split over devices),
  `replicate` (a copy on every device, of every process).
* Vectors split over devices (``basis='sharded'``): every Lanczos vector of
  ``dim`` entries is cut into ``num_shards`` slices of ``ceil(dim /
  num_shards)`` entries (the last padded with zeros); device ``i`` holds slice
  ``i``. Dot products are a local dot plus a `psum`; a product ``H v`` gathers
  ``v``, sums this device's batches and `psum_scatter`s the result back into
  slices. `local_slice`, `gather`, `scatter_sum` and `psum` run inside
  `shard_map` (or `pmap`) over the axis `AXIS`.
* Runners, the compiled entry points of Lanczos programs (``program(reduce,
  *args)``, see `recurrence.programs`): `data_parallel_runner` (a dataset's
  batches dealt over the devices, `psum` of the per-device sums),
  `split_vector_runner` (the same with the vectors split) and
  `function_runner` (a plain matvec with the vectors split).
* Streams and processes: `stream_group_fn` (one batch per device, summed) and
  `process_sum` (a sum over the processes of a pod).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from spectral_density import function_keys

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


def device_sum(batch_fn, params, data, weights, v, accum_dtype):
  """The weighted sum of `batch_fn` over this device's batches (a scan)."""
  def body(acc, batch_and_weight):
    batch, weight = batch_and_weight
    return acc + weight * batch_fn(params, batch, v).astype(accum_dtype), None
  shape = jax.eval_shape(
      batch_fn, params, jax.tree.map(lambda x: x[0], data), v).shape
  local, _ = jax.lax.scan(body, jnp.zeros(shape, accum_dtype), (data, weights))
  return local


def data_parallel_reduce(batch_fn, params, data, weights, rem_batch,
                         rem_weight, accum_dtype, data_parallel=True):
  """``reduce(v)``: the example-weighted sum of `batch_fn` over all batches
  (this device's, then `psum` over devices when `data_parallel`)."""
  def reduce(v):
    local = device_sum(batch_fn, params, data, weights, v, accum_dtype)
    total = jax.lax.psum(local, AXIS) if data_parallel else local
    if rem_batch is not None:
      total = total + rem_weight * batch_fn(params, rem_batch, v).astype(
          accum_dtype)
    return total
  return reduce


@functools.lru_cache(maxsize=None)
def data_parallel_runner(devices):
  """One pmapped entry point per device set; programs and batch functions are
  static arguments, so each (program, loss, shapes) compiles once.

  A single device gets plain `jit` of the same code instead: on CPU the
  pmapped program ran 2x slower there (measured: 71 ms vs 34 ms per H v of
  the benchmark MLP), and with one device there is nothing to `psum`.
  """
  def run(program, batch_fn, accum_dtype, params, data, weights, rem_batch,
          rem_weight, args):
    reduce = data_parallel_reduce(batch_fn, params, data, weights, rem_batch,
                                  rem_weight, accum_dtype)
    return program(reduce, *args)

  def run_one(program, batch_fn, accum_dtype, params, data, weights,
              rem_batch, rem_weight, args):
    data, weights = jax.tree.map(lambda x: x[0], (data, weights))
    reduce = data_parallel_reduce(batch_fn, params, data, weights, rem_batch,
                                  rem_weight, accum_dtype,
                                  data_parallel=False)
    return program(reduce, *args)

  if len(devices) == 1:
    return jax.jit(run_one, static_argnums=(0, 1, 2))
  # Everything broadcast travels as one argument with one `None` in
  # `in_axes`: pmap (jax 0.10.2) mismatches a per-argument `in_axes` with the
  # arguments when one of them is an empty pytree (None: no remainder batch,
  # no vector for the gradient) and the data has two leaves: the weights
  # arrived unsplit (tests/test_operators.py, "evenly").
  pmapped = jax.pmap(
      lambda program, batch_fn, accum_dtype, shared, data, weights: run(
          program, batch_fn, accum_dtype, shared[0], data, weights,
          *shared[1:]),
      axis_name=AXIS, devices=list(devices),
      in_axes=(None, None, None, None, 0, 0),
      static_broadcasted_argnums=(0, 1, 2), out_axes=None)

  def call(program, batch_fn, accum_dtype, params, data, weights, rem_batch,
           rem_weight, args):
    return pmapped(program, batch_fn, accum_dtype,
                   (params, rem_batch, rem_weight, args), data, weights)

  def lower(program, batch_fn, accum_dtype, params, data, weights, rem_batch,
            rem_weight, args):
    """`jax.stages.Lowered` of `call`, as `jit(...).lower` of one device."""
    return pmapped.lower(program, batch_fn, accum_dtype,
                         (params, rem_batch, rem_weight, args), data, weights)

  call.lower = lower
  return call


@functools.lru_cache(maxsize=None)
def split_vector_runner(devices):
  """The entry point of Lanczos programs whose vectors are split over
  `devices` (basis='sharded'): `jit` of `shard_map`.

  ``reduce(v_local)`` maps this device's slices ``[k, dim_local]`` to its
  slices of the products: it gathers ``v``, sums this device's batches and
  reduce-scatters the sum (the replicated remainder batch adds its own
  slice).
  """
  num_shards = len(devices)
  split = PartitionSpec(AXIS)

  def run(program, batch_fn, accum_dtype, params, data, weights, rem_batch,
          rem_weight, sharded_args, replicated_args):
    dim = ravel_pytree(params)[0].size

    def body(data, weights, sharded_args):
      def reduce(v_local):
        v = gather(v_local, dim)
        total = scatter_sum(
            device_sum(batch_fn, params, data, weights, v, accum_dtype),
            num_shards)
        if rem_batch is not None:
          total = total + local_slice(
              rem_weight * batch_fn(params, rem_batch, v).astype(accum_dtype),
              num_shards)
        return total
      return program(reduce, *sharded_args, *replicated_args)

    return jax.shard_map(
        on_blocks(body, 3), mesh=mesh(devices),
        in_specs=split,
        out_specs=split, check_vma=False)(data, weights, sharded_args)
  return jax.jit(run, static_argnums=(0, 1, 2))


@functools.lru_cache(maxsize=None)
def function_runner(devices):
  """``run(program, dim, matvec, sharded_args, replicated_args)`` for a plain
  matvec with basis='sharded': every device makes the whole product (the
  function is not data parallel) and keeps its slice."""
  num_shards = len(devices)
  spec = PartitionSpec(AXIS)

  def run(program, dim, matvec, sharded_args, replicated_args):
    def body(sharded_args):
      def reduce(v_local):
        w = jax.vmap(matvec)(gather(v_local, dim))
        return local_slice(w, num_shards)
      return program(reduce, *sharded_args, *replicated_args)
    return jax.shard_map(
        on_blocks(body, 1), mesh=mesh(devices),
        in_specs=spec,
        out_specs=spec, check_vma=False)(sharded_args)
  return jax.jit(run, static_argnums=(0, 1))


@functools.lru_cache(maxsize=function_keys.MAX_BATCH_FNS)
def stream_group_fn(devices, batch_fn, accum_dtype):
  """pmap over a group of equal batches, one per device, weighted, psummed."""
  def group(shared, batch, weight):
    params, v = shared
    out = batch_fn(params, batch, v).astype(accum_dtype)
    return jax.lax.psum(weight * out, AXIS)
  # (params, v) travel as one broadcast argument: see data_parallel_runner
  # (v is None for the gradient and the loss).
  pmapped = jax.pmap(group, axis_name=AXIS, devices=list(devices),
                     in_axes=(None, 0, 0), out_axes=None)
  return lambda params, batch, weight, v: pmapped((params, v), batch, weight)


@functools.lru_cache(maxsize=None)
def process_sum():
  """``(device, fn)``: `fn` sums, over all processes, the pytree each process
  places on its `device` (its first); one `psum` over a one-device-per-process
  mesh, whose result every process gets."""
  firsts = [[d for d in jax.devices() if d.process_index == p][0]
            for p in range(jax.process_count())]
  processes = jax.sharding.Mesh(np.asarray(firsts), ('processes',))
  split = jax.sharding.NamedSharding(processes, PartitionSpec('processes'))
  total = jax.jit(jax.shard_map(
      lambda tree: jax.tree.map(lambda x: jax.lax.psum(x[0], 'processes'),
                                tree),
      mesh=processes, in_specs=PartitionSpec('processes'),
      out_specs=PartitionSpec()))
  mine = firsts[jax.process_index()]

  def fn(tree):
    def stack(x):
      x = jax.device_put(x, mine)[None]
      return jax.make_array_from_single_device_arrays(
          (len(firsts),) + x.shape[1:], split, [x])
    out = total(jax.tree.map(stack, tree))
    return jax.tree.map(lambda x: x.addressable_data(0), out)
  return mine, fn
