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

import copy
import typing
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from spectral_density import arguments
from spectral_density import batch_functions
from spectral_density import block_products
from spectral_density import dataset_layout
from spectral_density import hessian
from spectral_density import mesh_layout
from spectral_density import parallel
from spectral_density import precision
from spectral_density import sharded


def _leaf_is_not_array(v):
  return not isinstance(v, (jax.Array, np.ndarray, np.generic, list, float,
                            int))


def _default_accum_dtype(param_dtype):
  return jnp.float64 if jax.config.jax_enable_x64 else param_dtype


def _check_finite(name, value):
  """Raises FloatingPointError naming `name` if `value` has a NaN or inf."""
  if isinstance(value, jax.core.Tracer):
    return value
  if not np.all(np.isfinite(np.asarray(value))):
    raise FloatingPointError(
        f'{name}: the mean over the dataset is not finite: check the loss, '
        'the data and the parameters.')
  return value


def matvec_program(reduce, v):
  """The program of one product (the batch `v` ``[k, num_params]``)."""
  return reduce(v)


def value_program(reduce):
  """The program of the gradient or the loss (no vector)."""
  return reduce(None)


@typing.runtime_checkable
class Operator(typing.Protocol):
  """The operator contract: what `lanczos_draws` uses of an operator beyond
  what a plain function ``[dim] -> [dim]`` gives.

  Attributes:
    num_params: its size (`lanczos_draws` checks `dim` against it).
    dtype: the dtype its products are computed in (the vectors it takes are
      cast to it): what their accuracy is judged by (`check_operator`, the
      breakdown tolerance). The products it returns may be wider: a dataset
      operator returns them in its `accum_dtype` (float64 under x64 for a
      float32 model), summed over batches in that dtype.
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'`` (recorded in
      checkpoints, so that a resume computes the same thing).
    devices: the devices it runs on (a split basis is split over them).
    traceable: whether its products can be traced into a compiled program;
      a streamed operator's batches come from the host, so Lanczos drives it
      from a host loop.
    accepts_batches: ``op(v)`` takes ``[k, dim]`` too, one product per row in
      one pass over the data (the draws share every forward pass).
  """
  num_params: int
  dtype: typing.Any
  curvature: str
  devices: tuple
  traceable: bool
  accepts_batches: bool

  def __call__(self, v):
    """``A v`` for ``v [dim]`` (or ``[k, dim]``)."""

  def astype(self, dtype):
    """The same operator with its products computed in `dtype`."""


@typing.runtime_checkable
class ProgramRunner(Operator, typing.Protocol):
  """An operator that runs the Lanczos program itself.

  This is the one place where the flow turns back: instead of handing
  `lanczos_draws` a product to call, a resident operator is handed the whole
  Lanczos program (``program(reduce, *args)``, see `recurrence.programs`) and
  calls it inside its own data-parallel program with its own ``reduce`` (the
  example-weighted sum over its devices' batches). The products then compile
  into the same program as the recurrence: one compiled loop, no host round
  trip per step, the data never leaving the devices.
  """

  def run(self, program, *args):
    """``program(reduce, *args)`` on the operator's devices."""

  def run_sharded(self, program, sharded_args, replicated_args):
    """The same with the vectors split over the devices (a leading device
    axis on `sharded_args` and on the outputs)."""


class _Operator:
  """Shared surface of the two dataset operators (see `get_hvp_fn`); both
  follow `Operator`, the resident one `ProgramRunner` too."""

  accepts_batches = True  # __call__ takes [k, num_params] too

  def __init__(self, params, curvature, loss, accum_dtype, param_dtype,
               matmul_precision):
    flat, self.unravel = ravel_pytree(params)
    self.params = params
    self.curvature = curvature
    self.loss_fn = loss
    self.num_params = flat.size
    self.dtype = flat.dtype  # its products are computed in it (see Operator)
    self.compute_dtype = None  # None: the model's own dtype
    self.accum_dtype = jnp.dtype(accum_dtype)  # of the sums and the results
    self.param_dtype = param_dtype  # floating params are cast to it (or None)
    self.matmul_precision = matmul_precision

  def with_params(self, params):
    """The same operator at new parameters; reuses data and compiled code,
    and keeps every option (`dtype`, `accum_dtype`, `astype`, the matmul
    precision, the row blocks): new params are cast as the first were."""
    arguments.check_params(params)
    params = batch_functions.cast_floating(params, self.param_dtype)
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

  row_blocks = None  # see `restrict_rows`

  def restrict_rows(self, row_blocks):
    """The same operator with the product of row ``i`` of a ``[k, n]`` batch
    restricted to the parameter leaves ``row_blocks[i % len(row_blocks)]``
    (a tuple of leaf indices, or None for all): see `block_products`."""
    op = copy.copy(self)
    op.row_blocks = tuple(None if ids is None else tuple(ids)
                          for ids in row_blocks)
    return op

  def _batch_fn(self, kind):
    if kind == 'product' and self.row_blocks is not None:
      return block_products.batch_function(
          self.curvature, self.loss_fn, self.row_blocks, self.compute_dtype,
          self.matmul_precision)
    return batch_functions.batch_function(
        self.curvature, self.loss_fn, kind, self.compute_dtype,
        self.matmul_precision)

  @property
  def shape(self):
    return (self.num_params, self.num_params)

  def _check_v(self, v):
    if (not jax.tree_util.treedef_is_leaf(jax.tree.structure(v)) or
        _leaf_is_not_array(v)):
      raise TypeError(
          f'v: must be a flat vector [num_params] = [{self.num_params}], got '
          f'a {type(v).__name__}: a params pytree is flattened by '
          'jax.flatten_util.ravel_pytree(v)[0] (and get_hvp_fn returns '
          '`unravel` for the way back).')
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
               accum_dtype, param_dtype=None,
               matmul_precision=precision.DEFAULT_MATMUL_PRECISION,
               _placed=None):
    super().__init__(params, curvature, loss, accum_dtype, param_dtype,
                     matmul_precision)
    self.devices = tuple(devices)
    if _placed is None:
      local = [d for d in self.devices if d.process_index == jax.process_index()]
      data, weights, rem_batch, rem_weight = dataset_layout.shard_dataset(
          dataset, batch_size, len(self.devices), np.dtype(accum_dtype),
          positions=[self.devices.index(d) for d in local])
      sharding = parallel.sharding(self.devices)
      put = lambda x: jax.make_array_from_process_local_data(sharding, x)
      _placed = (jax.tree.map(put, data), put(weights),
                 jax.device_put(rem_batch, local[0]), jnp.asarray(rem_weight))
      self.num_examples = dataset_layout.num_examples(dataset)
    self._placed = _placed
    self._replicated = None

  def run(self, program, *args, kind='product'):
    """Runs ``program(reduce, *args)`` on all devices; returns its output."""
    batch_fn = self._batch_fn(kind)
    data, weights, _, _ = self._placed
    params, rem_batch, rem_weight = self._replicas()
    return parallel.data_parallel_runner(self.devices)(
        program, batch_fn, self.accum_dtype, params, data, weights,
        rem_batch, rem_weight, args)

  def run_sharded(self, program, sharded_args, replicated_args,
                  kind='product'):
    """Runs ``program(reduce, *sharded_args, *replicated_args)`` with vectors
    split over the devices (see `parallel.split_vector_runner`);
    `sharded_args` and the outputs have a leading axis split over the
    devices."""
    batch_fn = self._batch_fn(kind)
    data, weights, _, _ = self._placed
    params, rem_batch, rem_weight = self._replicas()
    return parallel.split_vector_runner(self.devices)(
        program, batch_fn, self.accum_dtype, params, data, weights, rem_batch,
        rem_weight, sharded_args, replicated_args)

  def _replicas(self):
    """(params, rem_batch, rem_weight) on every device, once per parameter
    value: inside an outer `jit` the program's arguments must already live on
    its devices."""
    if self._replicated is None:
      _, _, rem_batch, rem_weight = self._placed
      with jax.ensure_compile_time_eval():  # placed now, even while tracing
        self._replicated = parallel.replicate(
            (self.params, rem_batch, rem_weight), self.devices)
    return self._replicated

  def _reduce(self, kind, v):
    if v is None:
      return self.run(value_program, kind=kind)
    return self.run(matvec_program, v, kind=kind)


class StreamingOperator(_Operator):
  """Curvature operator over batches streamed from the host (see module doc).

  Not traceable: `lanczos_alg` drives it from a host loop, one compiled
  Lanczos update per step.
  """

  traceable = False

  def __init__(self, loss, params, batches, *, curvature, devices, accum_dtype,
               param_dtype=None,
               matmul_precision=precision.DEFAULT_MATMUL_PRECISION):
    super().__init__(params, curvature, loss, accum_dtype, param_dtype,
                     matmul_precision)
    self.devices = tuple(devices)
    self.batches = batches
    self.num_examples = None
    self._replicated = None

  def _iterate(self):
    return iter(self.batches() if callable(self.batches) else self.batches)

  def _staged(self, items):
    """Starts each item's transfer to its devices one item before it is
    computed, so that transfers overlap the (asynchronous) computation."""
    sharded = parallel.sharding(self.devices)
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
    group_fn = parallel.stream_group_fn(self.devices, batch_fn,
                                        self.accum_dtype)
    single_fn = batch_functions.stream_single_fn(batch_fn, self.accum_dtype)
    weight_dtype = np.dtype(self.accum_dtype)
    total, count = None, 0.0
    for item, batch, weight in self._staged(dataset_layout.work_items(
        self._iterate(), len(self.devices))):
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
      device, process_sum = parallel.process_sum()
      total, count = process_sum(
          (jax.device_put(total, device), np.asarray(count, weight_dtype)))
      count = float(count)
    if total is None or count == 0:
      raise ValueError('dataset: the batch stream yielded no examples.')
    self.num_examples = int(count)
    return total / count


def get_hvp_fn(loss, params, dataset, *, batch_size=None, curvature='hessian',
               devices=None, dtype=None, accum_dtype=None,
               matmul_precision=None):
  """The curvature-vector product over a whole dataset, data parallel.

  Same name and return values as the original `get_hvp_fn(loss, params,
  batches)`; differences: `batch_size` (array datasets), `curvature`, and
  batches are weighted by their number of examples.

  Parameters split over a mesh (`jax.Array`s on `NamedSharding`s of one
  mesh of several devices, at least one leaf not replicated:
  `mesh_layout.is_sharded`) take the sharded path: the operator is
  `sharded_hvp_fn`'s, whose vectors are parameter pytrees laid out like the
  parameters (nothing is raveled; no device holds all the parameters, their
  tangent or a whole product). Replicated or single-device parameters stay
  on the flat path.

  Args:
    loss: ``loss(params, batch) -> scalar`` mean loss (``'hessian'``), the
      pair ``(model_fn, output_loss)`` (``'ggn'``), or per-example losses
      ``loss(params, batch) -> [B]`` (``'fisher'``); see `hessian`.
    params: pytree of floating arrays, every entry a Hessian direction.
      Integer leaves (a step counter), functions (an Equinox module: pass
      ``eqx.partition(model, eqx.is_inexact_array)[0]``) and other objects
      are refused with their path; batch-norm statistics are not parameters:
      pass them through the loss (a closure, or the batch); Flax variables
      with a 'batch_stats' (or other state) collection are refused.
      Sharded parameters (see above) give the sharded operator.
    dataset: either a pytree of arrays with a common leading example axis
      (kept on the devices), or a `list` of batches / a callable returning a
      fresh iterable of batches / a random-access source (``len`` and
      ``[i]``, e.g. a grain ``MapDataset``: of batches, or of examples grouped
      by `batch_size`), streamed from the host; with several processes, each
      passes its own share of the batches. Sharded parameters take arrays
      only (`batch_size` must divide the number of examples).
    batch_size: examples per batch for an array dataset (required there), or
      for a random-access source of single examples.
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    devices: devices to use; default all devices (of every process, for an
      array dataset: on a pod each process passes the same arrays, or memory
      maps of them, and reads only its devices' batches), or this process's
      own for a streamed dataset. Not with sharded parameters (their mesh
      says where they run).
    dtype: the products' dtype: floating params are cast to it, here and by
      `with_params`. Default: the params' own, but float32 for bfloat16 and
      float16 params (with a warning; see `precision.product_dtype`). A
      64-bit dtype needs x64 (else a ValueError: JAX would compute in 32
      bits).
    accum_dtype: dtype of the sum over batches and of the returned products;
      default float64 when x64 is enabled, else `dtype`. Not with sharded
      parameters (their products are summed in `dtype`).
    matmul_precision: how float32 matmuls and convolutions of the loss, its
      gradient and products are computed: ``'highest'`` (the default, full
      float32), ``'default'`` (JAX's: one bfloat16 pass on TPU, TF32 on
      NVIDIA GPUs), or another value of `jax.default_matmul_precision` (a
      `jax.lax.DotAlgorithmPreset` name); float64 stays float64. See
      `precision`.

  Returns:
    ``(hvp_fn, unravel, num_params)``: `hvp_fn` maps ``[num_params]`` (or
    ``[k, num_params]``) to the product; it also has `.gradient()`, `.loss()`,
    `.with_params(p)`, `.astype(dtype)`; `unravel` maps a flat vector back to
    a params pytree. On sharded parameters, `hvp_fn` is a
    `sharded.ShardedOperator` (a pytree like `params` to the product, laid
    out like them; `astype`), and `unravel` places a flat vector on the
    host as such a pytree.

  Raises:
    ValueError, TypeError: a bad argument, named in the message; on sharded
      parameters also `devices` or `accum_dtype` given, a streamed
      `dataset`, no `batch_size`, and a mixed layout (`params`: some leaves
      split over a mesh, others not on it).

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> def loss(params, batch):             # least squares: H = X^T X / N
    ...   return 0.5 * jnp.mean((batch['x'] @ params['w'] - batch['y']) ** 2)
    >>> x = np.arange(12.).reshape(6, 2) / 6
    >>> data = {'x': x, 'y': np.ones(6)}
    >>> hvp_fn, unravel, n = sd.get_hvp_fn(loss, {'w': jnp.zeros(2)}, data,
    ...                                    batch_size=4)   # batches of 4 and 2
    >>> n
    2
    >>> np.allclose(hvp_fn(jnp.array([1., 0.])), x.T @ x[:, 0] / 6, atol=1e-6)
    True
    >>> unravel(jnp.array([1., 2.]))
    {'w': Array([1., 2.], dtype=float32)}

    The same parameters split over the devices (with one device they are
    not split, and the flat path runs): the vectors are parameter pytrees.

    >>> import jax
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(np.array(jax.devices()), ('model',))  # 1, 2, 4 or 8 devices
    >>> params = {'w': jnp.zeros(8)}
    >>> placed = jax.device_put(params, sd.fsdp_shardings(params, mesh, 'model'))
    >>> x = np.tile(np.arange(1., 9.), (4, 1))            # H = diag(1, ..., 8)
    >>> loss = lambda p, batch: 0.5 * jnp.mean(batch @ p['w'] ** 2)
    >>> hvp_fn, unravel, n = sd.get_hvp_fn(loss, placed, x, batch_size=2)
    >>> v = np.ones(8)
    >>> hv = (hvp_fn(unravel(v))['w'] if sd.mesh_layout.is_sharded(placed)
    ...       else hvp_fn(v))
    >>> np.asarray(hv)
    array([1., 2., 3., 4., 5., 6., 7., 8.], dtype=float32)
  """
  if curvature not in hessian.CURVATURES:
    raise ValueError(
        f'curvature must be one of {hessian.CURVATURES}, got {curvature!r}.')
  arguments.check_loss_form(curvature, loss)
  if mesh_layout.is_sharded(params):
    return _sharded_hvp_fn(loss, params, dataset, batch_size=batch_size,
                           curvature=curvature, devices=devices, dtype=dtype,
                           accum_dtype=accum_dtype,
                           matmul_precision=matmul_precision)
  arguments.check_batch_size(batch_size)
  arguments.check_params(params)
  matmul_precision = precision.check_matmul_precision(matmul_precision)
  for name, value in (('dtype', dtype), ('accum_dtype', accum_dtype)):
    if value is not None and not jnp.issubdtype(value, jnp.floating):
      raise TypeError(f'{name}: must be a floating dtype, got {value!r}.')
    precision.check_float64_available(name, value)
  dataset_layout.check_form(dataset)
  dataset, batch_size = dataset_layout.as_streamable(dataset, batch_size)
  if dtype is None:
    own = ravel_pytree(params)[0].dtype
    if precision.product_dtype(own) != own:
      dtype = precision.product_dtype(own)
      warnings.warn(
          f'params: {own.name} parameters: products and the Lanczos '
          f'recurrence are computed in {dtype.name} (pass dtype= to choose).',
          stacklevel=2)
  dtype = None if dtype is None else jnp.dtype(dtype)
  params = batch_functions.cast_floating(params, dtype)
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError('params: has no entries.')
  accum_dtype = accum_dtype or _default_accum_dtype(flat.dtype)
  options = dict(curvature=curvature, devices=None, accum_dtype=accum_dtype,
                 param_dtype=dtype, matmul_precision=matmul_precision)
  if callable(dataset) or isinstance(dataset, list):
    if batch_size is not None:
      raise ValueError(
          'batch_size: applies to an array dataset; streamed batches keep '
          'their own sizes (pass batch_size=None).')
    devices = tuple(devices or jax.local_devices())
    if any(d.process_index != jax.process_index() for d in devices):
      raise ValueError('devices: a streamed dataset runs on this process\'s '
                       'own devices; each process streams its own batches.')
    options['devices'] = devices
    op = StreamingOperator(loss, params, dataset, **options)
    first = next(op._iterate(), None)
    if first is not None:
      hessian.check_loss_output(curvature, loss, params, first)
    elif jax.process_count() == 1:  # (a process of many may have no share)
      raise ValueError('dataset: the batch stream yielded no batches.')
  else:
    options['devices'] = tuple(devices or jax.devices())
    n = dataset_layout.num_examples(dataset)
    hessian.check_loss_output(
        curvature, loss, params,
        jax.tree.map(lambda x: x[:min(n, batch_size or n)], dataset))
    op = ResidentOperator(loss, params, dataset, batch_size=batch_size,
                          **options)
  return op, unravel, op.num_params


def _sharded_hvp_fn(loss, params, dataset, *, batch_size, curvature, devices,
                    dtype, accum_dtype, matmul_precision):
  """`get_hvp_fn` on sharded parameters (`mesh_layout.is_sharded`): the
  `sharded.ShardedOperator`, a placing `unravel`, the size."""
  for name, value, why in (
      ('devices', devices, 'the devices are the parameters\' mesh'),
      ('accum_dtype', accum_dtype, 'the products are summed in their own '
       'dtype')):
    if value is not None:
      raise ValueError(f'{name}: not available on sharded parameters ({why}); '
                       f'got {value!r}.')
  dataset_layout.check_form(dataset)
  if (callable(dataset) or isinstance(dataset, list) or
      dataset_layout.is_random_access(dataset)):
    raise ValueError(
        'dataset: sharded parameters take a pytree of arrays with a leading '
        'example axis (dealt over the mesh\'s data axes), not streamed '
        'batches.')
  if batch_size is None:
    raise ValueError('batch_size: required on sharded parameters (examples '
                     'per batch; it must divide the number of examples).')
  op = sharded.sharded_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      matmul_precision=precision.check_matmul_precision(matmul_precision))
  if dtype is not None:
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f'dtype: must be a floating dtype, got {dtype!r}.')
    precision.check_float64_available('dtype', dtype)
    op = op.astype(dtype)
  def unravel(flat):
    """A flat ``[num_params]`` vector as a pytree laid out like the
    parameters (placed from the host)."""
    flat_like, unravel_host = ravel_pytree(jax.tree.map(
        lambda p: np.zeros(p.shape, p.dtype), params))
    flat = np.asarray(flat, flat_like.dtype)
    if flat.shape != flat_like.shape:
      raise ValueError(f'flat: must have shape {flat_like.shape}, got '
                       f'{flat.shape}.')
    return mesh_layout.place(unravel_host(flat), op.shardings)

  return op, unravel, op.num_params
