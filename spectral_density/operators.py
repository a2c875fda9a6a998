"""Full-dataset curvature operators, data parallel with `jax.pmap`.

`get_hvp_fn` turns `(loss, params, dataset)` into `hvp_fn`, a function of a
flat vector ``v [num_params]`` returning ``H v`` where ``H`` is the curvature of
the mean loss over every example of the dataset.

Device-resident datasets (a pytree of arrays with a leading example axis) are
cut into batches of `batch_size` consecutive examples. The full batches are
dealt to the local devices in contiguous runs; each device sums the products of
its own batches in a `lax.scan`, then a `psum` adds the devices (and hosts).
The batch layout does not depend on the number of devices, so neither does the
result, even for losses that couple the examples of a batch (batch norm in
train mode). Examples are weighted, not batches:

* when the number of full batches is not a multiple of the device count, the
  missing slots hold copies of batch 0 with weight 0 (batch-level mask);
* the last ``N mod batch_size`` examples form one short batch of their own,
  weighted by its size, computed on every device (replicated, so no `psum`).

Iterable datasets (a list of batches, or a callable returning a fresh iterator
of batches) stay on the host and are streamed: batches of the common size go
to the devices `num_devices` at a time, others run alone; each is weighted by
its number of examples. With several processes each streams its own batches
(its share of the data) on its own devices, as many as it has; one `psum`
over the processes then adds their sums and example counts.

A new parameter value (`hvp_fn.with_params(p)`, or a new `get_hvp_fn` call with
the same loss and shapes) reuses every compiled program.
"""

import collections.abc
import copy
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from spectral_density import collectives
from spectral_density import function_keys
from spectral_density import hessian

AXIS = collectives.AXIS
_sharding = collectives.sharding


def _default_accum_dtype(param_dtype):
  return jnp.float64 if jax.config.jax_enable_x64 else param_dtype


def _flat_fn(fn, kind):
  """Wraps a per-batch pytree function into ``f(params, batch, v) -> flat``.

  `v` is ``[k, n]`` (a batch of vectors, vmapped so the forward pass over the
  data is shared) or None for the gradient and the loss.
  """
  if kind == 'product':
    def product(params, batch, v):
      flat, unravel = ravel_pytree(params)
      one = lambda u: ravel_pytree(fn(params, batch, unravel(u.astype(flat.dtype))))[0]
      return jax.vmap(one)(v)
    return product
  if kind == 'gradient':
    return lambda params, batch, v: ravel_pytree(jax.grad(fn)(params, batch))[0]
  return lambda params, batch, v: fn(params, batch)


# Compiled programs are cached per batch function: a bounded number of losses
# (see `function_keys`), each with its three kinds and two dtypes.
_MAX_BATCH_FNS = 6 * function_keys.MAX_FUNCTIONS


@functools.lru_cache(maxsize=_MAX_BATCH_FNS)
def batch_function(curvature, loss, kind, compute_dtype=None):
  """``f(params, batch, v)`` for `kind` in product/gradient/loss, cached.

  `compute_dtype` (a dtype name, or None for the model's own): floating
  params and batch entries are cast to it inside, so that ``precision=
  'float64'`` computes the products in float64 without a second copy of the
  data on the devices.
  """
  product, mean_loss = hessian.curvature_fns(curvature, loss)
  fn = _flat_fn(product if kind == 'product' else mean_loss, kind)
  if compute_dtype is None:
    return fn
  return lambda params, batch, v: fn(_cast_params(params, compute_dtype),
                                     _cast_params(batch, compute_dtype), v)


def _device_sum(batch_fn, params, data, weights, v, accum_dtype):
  """The weighted sum of `batch_fn` over this device's batches (a scan)."""
  def body(acc, batch_and_weight):
    batch, weight = batch_and_weight
    return acc + weight * batch_fn(params, batch, v).astype(accum_dtype), None
  shape = jax.eval_shape(
      batch_fn, params, jax.tree.map(lambda x: x[0], data), v).shape
  local, _ = jax.lax.scan(body, jnp.zeros(shape, accum_dtype), (data, weights))
  return local


def _sharded_reduce(batch_fn, params, data, weights, rem_batch, rem_weight,
                    accum_dtype, data_parallel=True):
  """``reduce(v)``: the example-weighted sum of `batch_fn` over all batches
  (this device's, then `psum` over devices when `data_parallel`)."""
  def reduce(v):
    local = _device_sum(batch_fn, params, data, weights, v, accum_dtype)
    total = jax.lax.psum(local, AXIS) if data_parallel else local
    if rem_batch is not None:
      total = total + rem_weight * batch_fn(params, rem_batch, v).astype(
          accum_dtype)
    return total
  return reduce


@functools.lru_cache(maxsize=None)
def _sharded_runner(devices):
  """One pmapped entry point per device set; programs and batch functions are
  static arguments, so each (program, loss, shapes) compiles once.

  A single device gets plain `jit` of the same code instead: on CPU the
  pmapped program ran 2x slower there (measured: 71 ms vs 34 ms per H v of
  the benchmark MLP), and with one device there is nothing to `psum`.
  """
  def run(program, batch_fn, accum_dtype, params, data, weights, rem_batch,
          rem_weight, args):
    reduce = _sharded_reduce(batch_fn, params, data, weights, rem_batch,
                             rem_weight, accum_dtype)
    return program(reduce, *args)

  def run_one(program, batch_fn, accum_dtype, params, data, weights,
              rem_batch, rem_weight, args):
    data, weights = jax.tree.map(lambda x: x[0], (data, weights))
    reduce = _sharded_reduce(batch_fn, params, data, weights, rem_batch,
                             rem_weight, accum_dtype, data_parallel=False)
    return program(reduce, *args)

  if len(devices) == 1:
    return jax.jit(run_one, static_argnums=(0, 1, 2))
  return jax.pmap(
      run, axis_name=AXIS, devices=list(devices),
      in_axes=(None, None, None, None, 0, 0, None, None, None),
      static_broadcasted_argnums=(0, 1, 2), out_axes=None)


@functools.lru_cache(maxsize=None)
def _split_vector_runner(devices):
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
        v = collectives.gather(v_local, dim)
        total = collectives.scatter_sum(
            _device_sum(batch_fn, params, data, weights, v, accum_dtype),
            num_shards)
        if rem_batch is not None:
          total = total + collectives.local_slice(
              rem_weight * batch_fn(params, rem_batch, v).astype(accum_dtype),
              num_shards)
        return total
      return program(reduce, *sharded_args, *replicated_args)

    return jax.shard_map(
        collectives.on_blocks(body, 3), mesh=collectives.mesh(devices),
        in_specs=split,
        out_specs=split, check_vma=False)(data, weights, sharded_args)
  return jax.jit(run, static_argnums=(0, 1, 2))


def _check_dataset_arrays(dataset):
  leaves = jax.tree.leaves(dataset)
  if not leaves:
    raise ValueError('dataset: empty (no arrays).')
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        'dataset: every array needs the same leading example axis, got '
        f'leading sizes {sorted(map(str, sizes))}.')
  num_examples = sizes.pop()
  if num_examples == 0:
    raise ValueError('dataset: has 0 examples.')
  return num_examples


def shard_dataset(dataset, batch_size, num_devices, weight_dtype=np.float32,
                  positions=None):
  """Lays a dataset out in batches over devices (host side, numpy).

  Batch ``j`` is examples ``[j B, (j + 1) B)``; device ``g`` (its position in
  the device list) gets batches ``[g P, (g + 1) P)`` with ``P = ceil(N_full /
  D)``. Only the rows of the requested devices are read, so on a pod each host
  reads just its own shard (from a memory map, say).

  Args:
    dataset: pytree of arrays ``[N, ...]`` (anything numpy can slice).
    batch_size: examples per batch (clipped to N).
    num_devices: D, all devices of all hosts.
    weight_dtype: dtype of the returned weights.
    positions: device positions to lay out (default all): this host's.

  Returns:
    ``(data, weights, rem_batch, rem_weight)``: `data` leaves
    ``[len(positions), batches_per_device, batch_size, ...]``, `weights`
    ``[len(positions), batches_per_device]`` (``batch_size / N``, or 0 for
    padding slots, which hold copies of batch 0), `rem_batch` the last ``N mod
    batch_size`` examples (None if none) and `rem_weight` = ``(N mod
    batch_size) / N``.
  """
  n = _check_dataset_arrays(dataset)
  if batch_size is None or int(batch_size) < 1:
    raise ValueError(
        f'batch_size: must be a positive integer for an array dataset, got '
        f'{batch_size!r}.')
  b = min(int(batch_size), n)
  num_full = n // b
  per_device = math.ceil(num_full / num_devices)
  positions = range(num_devices) if positions is None else positions
  batch_ids = np.array([[g * per_device + i for i in range(per_device)]
                        for g in positions]).reshape(len(positions), per_device)
  real = batch_ids < num_full
  batch_ids = np.where(real, batch_ids, 0)

  def arrange(x):
    rows = [np.asarray(x[j * b:(j + 1) * b]) for j in batch_ids.ravel()]
    return np.stack(rows).reshape(batch_ids.shape + (b,) + rows[0].shape[1:])

  data = jax.tree.map(arrange, dataset)
  weights = np.where(real, b / n, 0.0).astype(weight_dtype)
  rem = n - num_full * b
  rem_batch = (jax.tree.map(lambda x: np.asarray(x[num_full * b:]), dataset)
               if rem else None)
  return data, weights, rem_batch, np.asarray(rem / n, weight_dtype)


def _cast_params(params, dtype):
  """Floating leaves of `params` (or of a batch) cast to `dtype`."""
  if dtype is None:
    return params
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      params)


def _check_finite(name, value):
  """Raises FloatingPointError naming `name` if `value` has a NaN or inf."""
  if isinstance(value, jax.core.Tracer):
    return value
  if not np.all(np.isfinite(np.asarray(value))):
    raise FloatingPointError(
        f'{name}: the mean over the dataset is not finite: check the loss, '
        'the data and the parameters.')
  return value


def _matvec_program(reduce, v):
  return reduce(v)


def _value_program(reduce):
  return reduce(None)


class _Operator:
  """Shared surface of the two dataset operators (see `get_hvp_fn`)."""

  accepts_batches = True  # __call__ takes [k, num_params] too

  def __init__(self, params, curvature, loss, accum_dtype):
    flat, self.unravel = ravel_pytree(params)
    self.params = params
    self.curvature = curvature
    self.loss_fn = loss
    self.num_params = flat.size
    self.dtype = flat.dtype  # of the vectors it takes and of its products
    self.compute_dtype = None  # None: the model's own dtype
    self.accum_dtype = accum_dtype

  def with_params(self, params):
    """The same operator at new parameters; reuses data and compiled code."""
    flat, unravel = ravel_pytree(params)
    if flat.size != self.num_params:
      raise ValueError(
          f'params: has {flat.size} entries, the operator {self.num_params}.')
    op = copy.copy(self)
    op.params, op.unravel, op._replicated = params, unravel, None
    op.dtype = jnp.dtype(self.compute_dtype or flat.dtype)
    return op

  def astype(self, dtype):
    """The same operator computing its products in `dtype`: floating params
    and data are cast inside each product (``precision='float64'``)."""
    op = copy.copy(self)
    op.dtype = jnp.dtype(dtype)
    op.compute_dtype = op.dtype.name
    return op

  def _batch_fn(self, kind):
    return batch_function(self.curvature, self.loss_fn, kind,
                          self.compute_dtype)

  @property
  def shape(self):
    return (self.num_params, self.num_params)

  def _check_v(self, v):
    v = jnp.asarray(v)
    if v.ndim not in (1, 2) or v.shape[-1] != self.num_params:
      raise ValueError(
          f'v: expected shape [num_params] = [{self.num_params}] (or '
          f'[k, {self.num_params}]), got {tuple(v.shape)}.')
    return v

  def __call__(self, v):
    """``H v`` for ``v [num_params]`` (or ``[k, num_params]``, row by row)."""
    v = self._check_v(v)
    out = self._reduce('product', v if v.ndim == 2 else v[None])
    return out if v.ndim == 2 else out[0]

  def gradient(self):
    """Flat gradient ``[num_params]`` of the mean loss over the dataset.

    Raises:
      FloatingPointError: it has a NaN or inf entry.
    """
    return _check_finite('gradient', self._reduce('gradient', None))

  def loss(self):
    """The mean loss over the dataset (scalar).

    Raises:
      FloatingPointError: it is NaN or inf.
    """
    return _check_finite('loss', self._reduce('loss', None))


class ResidentOperator(_Operator):
  """Curvature operator over a dataset held on the devices (see module doc).

  Besides ``hvp_fn(v)``, `run(program, *args)` executes
  ``program(reduce, *args)`` inside the pmapped program, where ``reduce(v)``
  maps ``[k, num_params] -> [k, num_params]``; `lanczos_alg` uses it to compile
  the whole Lanczos run, products included, into one program.
  `run_sharded` does the same with vectors split over the devices
  (``basis='sharded'``).
  """

  traceable = True

  def __init__(self, loss, params, dataset, *, batch_size, curvature, devices,
               accum_dtype, _placed=None):
    super().__init__(params, curvature, loss, accum_dtype)
    self.devices = tuple(devices)
    if _placed is None:
      local = [d for d in self.devices if d.process_index == jax.process_index()]
      data, weights, rem_batch, rem_weight = shard_dataset(
          dataset, batch_size, len(self.devices), np.dtype(accum_dtype),
          positions=[self.devices.index(d) for d in local])
      sharding = _sharding(self.devices)
      put = lambda x: jax.make_array_from_process_local_data(sharding, x)
      _placed = (jax.tree.map(put, data), put(weights),
                 jax.device_put(rem_batch, local[0]), jnp.asarray(rem_weight))
      self.num_examples = _check_dataset_arrays(dataset)
    self._placed = _placed
    self._replicated = None

  def run(self, program, *args, kind='product'):
    """Runs ``program(reduce, *args)`` on all devices; returns its output."""
    batch_fn = self._batch_fn(kind)
    data, weights, _, _ = self._placed
    params, rem_batch, rem_weight = self._replicas()
    return _sharded_runner(self.devices)(
        program, batch_fn, self.accum_dtype, params, data, weights,
        rem_batch, rem_weight, args)

  def run_sharded(self, program, sharded_args, replicated_args,
                  kind='product'):
    """Runs ``program(reduce, *sharded_args, *replicated_args)`` with vectors
    split over the devices (see `_split_vector_runner`); `sharded_args` and
    the outputs have a leading axis split over the devices."""
    batch_fn = self._batch_fn(kind)
    data, weights, _, _ = self._placed
    params, rem_batch, rem_weight = self._replicas()
    return _split_vector_runner(self.devices)(
        program, batch_fn, self.accum_dtype, params, data, weights, rem_batch,
        rem_weight, sharded_args, replicated_args)

  def _replicas(self):
    """(params, rem_batch, rem_weight) on every device, once per parameter
    value: inside an outer `jit` the program's arguments must already live on
    its devices."""
    if self._replicated is None:
      _, _, rem_batch, rem_weight = self._placed
      with jax.ensure_compile_time_eval():  # placed now, even while tracing
        self._replicated = collectives.replicate(
            (self.params, rem_batch, rem_weight), self.devices)
    return self._replicated

  def _reduce(self, kind, v):
    if v is None:
      return self.run(_value_program, kind=kind)
    return self.run(_matvec_program, v, kind=kind)


@functools.lru_cache(maxsize=_MAX_BATCH_FNS)
def _stream_group_fn(devices, batch_fn, accum_dtype):
  """pmap over a group of equal batches, one per device, weighted, psummed."""
  def group(params, batch, weight, v):
    out = batch_fn(params, batch, v).astype(accum_dtype)
    return jax.lax.psum(weight * out, AXIS)
  return jax.pmap(group, axis_name=AXIS, devices=list(devices),
                  in_axes=(None, 0, 0, None), out_axes=None)


@functools.lru_cache(maxsize=_MAX_BATCH_FNS)
def _stream_single_fn(batch_fn, accum_dtype):
  return jax.jit(lambda p, b, w, v: w * batch_fn(p, b, v).astype(accum_dtype))


class StreamingOperator(_Operator):
  """Curvature operator over batches streamed from the host (see module doc).

  Not traceable: `lanczos_alg` drives it from a host loop, one compiled
  Lanczos update per step.
  """

  traceable = False

  def __init__(self, loss, params, batches, *, curvature, devices, accum_dtype):
    super().__init__(params, curvature, loss, accum_dtype)
    self.devices = tuple(devices)
    self.batches = batches
    self.num_examples = None
    self._replicated = None

  def _iterate(self):
    return iter(self.batches() if callable(self.batches) else self.batches)

  def _work_items(self):
    """Host-side work: ``('group', [D, ...] batches, [D] weights)`` for runs of
    D batches of the common size, ``('single', batch, weight)`` otherwise."""
    num_dev = len(self.devices)
    pending, size = [], None
    for batch in self._iterate():
      leaves = jax.tree.leaves(batch)
      n = int(np.shape(leaves[0])[0]) if leaves else 0
      if n == 0:
        continue
      size = n if size is None else size
      if n != size or num_dev == 1:
        yield 'single', batch, float(n)
        continue
      pending.append(batch)
      if len(pending) == num_dev:
        yield 'group', _stack(pending, 0), [float(size)] * num_dev
        pending = []
    if pending:
      pad = num_dev - len(pending)
      yield ('group', _stack(pending, pad),
             [float(size)] * len(pending) + [0.0] * pad)

  def _staged(self, items):
    """Starts each item's transfer to its devices one item before it is
    computed, so that transfers overlap the (asynchronous) computation."""
    sharded = _sharding(self.devices)
    ahead = None
    for kind, batch, weight in items:
      target = sharded if kind == 'group' else self.devices[0]
      placed = (kind, jax.device_put(batch, target), weight)
      if ahead is not None:
        yield ahead
      ahead = placed
    if ahead is not None:
      yield ahead

  def _reduce(self, kind, v):
    batch_fn = self._batch_fn(kind)
    group_fn = _stream_group_fn(self.devices, batch_fn, self.accum_dtype)
    single_fn = _stream_single_fn(batch_fn, self.accum_dtype)
    weight_dtype = np.dtype(self.accum_dtype)
    total, count = None, 0.0
    for item, batch, weight in self._staged(self._work_items()):
      if item == 'group':
        out = jax.device_put(
            group_fn(self.params, batch, np.asarray(weight, weight_dtype), v),
            self.devices[0])
        count += sum(weight)
      else:
        out = single_fn(self.params, batch, weight, v)
        count += weight
      total = out if total is None else total + out
    if jax.process_count() > 1:
      if total is None:  # this process has no batches: it adds zeros
        shape = {'product': np.shape(v), 'gradient': (self.num_params,),
                 'loss': ()}[kind]
        total = jnp.zeros(shape, self.accum_dtype)
      device, process_sum = _process_sum()
      total, count = process_sum(
          (jax.device_put(total, device), np.asarray(count, weight_dtype)))
      count = float(count)
    if total is None or count == 0:
      raise ValueError('dataset: the batch stream yielded no examples.')
    self.num_examples = int(count)
    return total / count


@functools.lru_cache(maxsize=None)
def _process_sum():
  """``(device, fn)``: `fn` sums, over all processes, the pytree each process
  places on its `device` (its first); one `psum` over a one-device-per-process
  mesh, whose result every process gets."""
  firsts = [[d for d in jax.devices() if d.process_index == p][0]
            for p in range(jax.process_count())]
  mesh = jax.sharding.Mesh(np.asarray(firsts), ('processes',))
  split = jax.sharding.NamedSharding(mesh, PartitionSpec('processes'))
  total = jax.jit(jax.shard_map(
      lambda tree: jax.tree.map(lambda x: jax.lax.psum(x[0], 'processes'),
                                tree),
      mesh=mesh, in_specs=PartitionSpec('processes'),
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


def _stack(batches, pad):
  """``[len(batches) + pad, ...]`` leaves; padding repeats the first batch."""
  return jax.tree.map(lambda *xs: np.stack(xs + xs[:1] * pad), *batches)


def _check_loss_form(curvature, loss):
  """Raises if `loss` is not the form `curvature` needs (see `hessian`)."""
  if curvature == 'ggn':
    if not (isinstance(loss, tuple) and len(loss) == 2 and
            all(callable(f) for f in loss)):
      raise ValueError(
          "loss: curvature='ggn' needs the pair loss=(model_fn, output_loss), "
          'with model_fn(params, batch) -> outputs and output_loss(outputs, '
          f'batch) -> scalar, got {type(loss).__name__}.')
  elif not callable(loss):
    hint = (" (a pair (model_fn, output_loss) goes with curvature='ggn')"
            if isinstance(loss, tuple) else '')
    raise TypeError(f"loss: curvature={curvature!r} needs a function "
                    f'loss(params, batch), got {type(loss).__name__}{hint}.')


def _check_batch_size(batch_size):
  if batch_size is None:
    return
  if (isinstance(batch_size, (bool, np.bool_)) or
      not isinstance(batch_size, (int, np.integer))):
    raise TypeError(f'batch_size: must be a positive int, got {batch_size!r}.')
  if batch_size < 1:
    raise ValueError(f'batch_size: must be a positive int, got {batch_size}.')


def _is_tuple_of_batches(dataset):
  """A tuple whose entries are containers of one structure (batches), not
  arrays (a dataset such as ``(x, y)``)."""
  if not isinstance(dataset, tuple) or len(dataset) < 2:
    return False
  structures = {jax.tree.structure(x) for x in dataset}
  return len(structures) == 1 and not jax.tree_util.treedef_is_leaf(
      structures.pop())


def _check_dataset_form(dataset):
  if isinstance(dataset, collections.abc.Iterator):
    raise TypeError(
        'dataset: an iterator or generator is read once, but Lanczos passes '
        'over the data once per step: pass a list of batches, or a callable '
        'returning a fresh iterator (e.g. lambda: make_batches()).')
  if _is_tuple_of_batches(dataset):
    raise TypeError(
        'dataset: a tuple of batches; pass a list of batches (streamed), or '
        'one pytree of arrays with a leading example axis and batch_size.')


def get_hvp_fn(loss, params, dataset, *, batch_size=None, curvature='hessian',
               devices=None, dtype=None, accum_dtype=None):
  """The curvature-vector product over a whole dataset, data parallel.

  Same name and return values as the original `get_hvp_fn(loss, params,
  batches)`; differences: `batch_size` (array datasets), `curvature`, and
  batches are weighted by their number of examples.

  Args:
    loss: ``loss(params, batch) -> scalar`` mean loss (``'hessian'``), the
      pair ``(model_fn, output_loss)`` (``'ggn'``), or per-example losses
      ``loss(params, batch) -> [B]`` (``'fisher'``); see `hessian`.
    params: pytree of arrays.
    dataset: either a pytree of arrays with a common leading example axis
      (kept on the devices), or a `list` of batches / a callable returning a
      fresh iterable of batches (streamed from the host; with several
      processes, each passes its own share of the batches).
    batch_size: examples per batch for an array dataset (required there).
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    devices: devices to use; default all devices (of every process, for an
      array dataset: on a pod each process passes the same arrays, or memory
      maps of them, and reads only its devices' batches), or this process's
      own for a streamed dataset.
    dtype: cast floating params to this dtype first (e.g. float64 products).
    accum_dtype: dtype of the sum over batches and of the result; default
      float64 when x64 is enabled, else the params' dtype.

  Returns:
    ``(hvp_fn, unravel, num_params)``: `hvp_fn` maps ``[num_params]`` (or
    ``[k, num_params]``) to the product; it also has `.gradient()`, `.loss()`,
    `.with_params(p)`, `.astype(dtype)`; `unravel` maps a flat vector back to
    a params pytree.

  Raises:
    ValueError, TypeError: a bad argument, named in the message.
  """
  if curvature not in hessian.CURVATURES:
    raise ValueError(
        f'curvature must be one of {hessian.CURVATURES}, got {curvature!r}.')
  _check_loss_form(curvature, loss)
  _check_batch_size(batch_size)
  _check_dataset_form(dataset)
  # One function object per computation, so a new closure of the same loss
  # reuses the compiled programs.
  loss = function_keys.canonical(loss)
  params = _cast_params(params, dtype)
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError('params: has no entries.')
  accum_dtype = accum_dtype or _default_accum_dtype(flat.dtype)
  if callable(dataset) or isinstance(dataset, list):
    if batch_size is not None:
      raise ValueError(
          'batch_size: applies to an array dataset; streamed batches keep '
          'their own sizes (pass batch_size=None).')
    devices = tuple(devices or jax.local_devices())
    if any(d.process_index != jax.process_index() for d in devices):
      raise ValueError('devices: a streamed dataset runs on this process\'s '
                       'own devices; each process streams its own batches.')
    op = StreamingOperator(loss, params, dataset, curvature=curvature,
                           devices=devices, accum_dtype=accum_dtype)
    first = next(op._iterate(), None)
    if first is not None:
      hessian.check_loss_output(curvature, loss, params, first)
    elif jax.process_count() == 1:  # (a process of many may have no share)
      raise ValueError('dataset: the batch stream yielded no batches.')
  else:
    devices = tuple(devices or jax.devices())
    n = _check_dataset_arrays(dataset)
    hessian.check_loss_output(
        curvature, loss, params,
        jax.tree.map(lambda x: x[:min(n, batch_size or n)], dataset))
    op = ResidentOperator(loss, params, dataset, batch_size=batch_size,
                          curvature=curvature, devices=devices,
                          accum_dtype=accum_dtype)
  return op, unravel, op.num_params
