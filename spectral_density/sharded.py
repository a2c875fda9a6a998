"""Curvature products and Lanczos runs over parameters sharded on a mesh.

For models that do not fit one device. The parameters are `jax.Array`s laid
out by `NamedSharding`s on one `jax.sharding.Mesh`: fully sharded (each leaf
split along an ``'fsdp'`` axis, `mesh_layout.fsdp_shardings`), tensor
parallel as the model defines it, or replicated. The data are dealt over the
mesh's `data_axes`.

* `sharded_hvp_fn(loss, params, dataset, batch_size=...)`: the operator
  ``v -> H v`` (or Gauss-Newton, empirical Fisher) whose vectors are pytrees
  laid out like the parameters. Inside one `jit`: a `jax.shard_map` that is
  manual over the data axes only. Each group of devices along the data axes
  runs its own batches in a `fori_loop` and sums their products; one `psum`
  over the data axes (and so over hosts) completes the sum. The other axes
  stay automatic: GSPMD splits every leaf of the parameters, of the tangent
  and of the product as the parameters are split, gathering a layer's weights
  only where that layer is computed.
* `sharded_lanczos(op, order, key)`: the Lanczos recurrence of
  `tree_recurrence` with every vector and the basis ``[order, ...]`` of every
  leaf laid out like the leaf; its dot products are sums of per-leaf `vdot`s
  that GSPMD completes over the devices. The whole run is one compiled
  `while_loop` (or one per checkpoint segment). With `checkpoint_dir` the
  state is saved sharded (each process writes its own slices) and a rerun
  resumes.

* With a kept basis (`keep_vecs`): its Gram matrix (`basis_gram`), Ritz
  vectors (`basis_combination`) and projections (`basis_projection`), as
  sums of per-leaf contractions on the devices, small outputs.

`get_hvp_fn`, `hessian_spectrum`, `slq` and `block_spectra` route sharded
parameters here (`mesh_layout.is_sharded`) and return the flat path's types
(`SpectrumResult`, `BlockSpectra`); block spectra run with the
`LeafMaskedOperator`, whose products are masked leaf by leaf.

Exact: the product is jvp-of-grad, as in `hessian.hvp` (no finite
differences); only the order of floating-point sums differs from the
replicated path. No device ever holds all parameters, a whole tangent, a whole
product or a whole Lanczos vector (unless the layout replicates a leaf).
"""

import collections
import contextlib
import copy
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectral_density import arguments
from spectral_density import hessian
from spectral_density import mesh_layout
from spectral_density import precision as precision_lib
from spectral_density import recurrence
from spectral_density import tree_recurrence


def _default_axes(mesh, names):
  return tuple(n for n in names if n in mesh.shape)


def _check_axes(name, axes, mesh):
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  for a in axes:
    if a not in mesh.shape:
      raise ValueError(f'{name}: {a!r} is not an axis of the mesh '
                       f'{dict(mesh.shape)}.')
  return axes


def _spec_axes(sharding):
  names = set()
  for entry in sharding.spec:
    if entry is None:
      continue
    names.update(entry if isinstance(entry, tuple) else (entry,))
  return names


class ShardedOperator:
  """``v -> A v`` over sharded parameters; `v` and the result are pytrees
  laid out like the parameters. Build with `sharded_hvp_fn`.

  Attributes:
    params, data: the global arrays (data ``[num_batches, batch_size, ...]``).
    shardings: the parameters' `NamedSharding`s; mesh: their mesh.
    num_params: the number of entries of a vector.
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    matmul_precision: the `jax.default_matmul_precision` its products and
      the Lanczos runs on it are traced under (`precision.context`), or
      None for JAX's default.
  """

  def __init__(self, loss, params, data, *, curvature, data_axes,
               basis_rows_over_data=True, matmul_precision=None):
    self.loss, self.params, self.data = loss, params, data
    self.curvature, self.data_axes = curvature, data_axes
    self.basis_rows_over_data = basis_rows_over_data
    self.matmul_precision = matmul_precision
    self.shardings, self.mesh = mesh_layout.named_shardings(params)
    self.num_params = sum(int(np.prod(x.shape))
                          for x in jax.tree.leaves(params))
    self.num_batches = jax.tree.leaves(data)[0].shape[0]
    self.dtype = jnp.result_type(*jax.tree.leaves(params))

  def astype(self, dtype):
    """The same operator with floating params cast to `dtype` (in place on
    their devices: the layout stays)."""
    cast = jax.jit(lambda p: jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
        else x, p), out_shardings=self.shardings)
    op = copy.copy(self)
    op.params = cast(self.params)
    op.dtype = jnp.result_type(*jax.tree.leaves(op.params))
    return op

  def precision_context(self):
    """The context its programs are traced in: `matmul_precision`'s (for
    the products' dtype), or none."""
    if self.matmul_precision is None:
      return contextlib.nullcontext()
    return precision_lib.context(self.matmul_precision, self.dtype)

  def layout(self, lead, basis=False):
    """The layouts of a pytree like the parameters with `lead` leading axes:
    a vector (0), a batch of vectors (1); a basis ``[order, ...]`` (1) or a
    batch of bases ``[k, order, ...]`` (2) with `basis`, whose rows are also
    dealt over the data axes (the parameters are replicated there: a basis
    split only like them would cost every data-parallel device as much)."""
    rows = self.data_axes if basis and self.basis_rows_over_data else ()
    return jax.tree.map(lambda s: mesh_layout.with_lead(s, lead, rows),
                        self.shardings)

  def constrain(self, tree, lead, basis=False):
    """Pins a pytree like the parameters (with `lead` leading axes on every
    leaf) to its layout (`layout`)."""
    return jax.tree.map(jax.lax.with_sharding_constraint, tree,
                        self.layout(lead, basis))

  def product(self, params, data, vs):
    """Traceable: ``vs`` leaves ``[k, *leaf.shape]`` -> their products, the
    mean of the per-batch products over all batches."""
    per_batch = hessian.curvature_fns(self.curvature, self.loss)[0]
    total_batches = self.num_batches

    def local(params, data, vs):
      def body(i, carry):
        # The parameters pass through the loop behind an optimisation
        # barrier: else XLA hoists their all-gathers out of the loop as
        # loop-invariant, and every device holds all of them (measured).
        params, acc = jax.lax.optimization_barrier(carry)
        batch = jax.tree.map(lambda x: x[i], data)
        # Tangents in the parameters' own dtypes (as `jvp` needs).
        vs_like = jax.tree.map(lambda v, p: v.astype(p.dtype), vs, params)
        hv = jax.vmap(lambda v: per_batch(params, batch, v))(vs_like)
        return params, jax.tree.map(lambda a, h: a + h.astype(a.dtype), acc,
                                    hv)
      count = jax.tree.leaves(data)[0].shape[0]
      _, acc = jax.lax.fori_loop(
          0, count, body, (params, jax.tree.map(jnp.zeros_like, vs)))
      if self.data_axes:  # the one reduction over devices and hosts
        acc = jax.lax.psum(acc, self.data_axes)
      return jax.tree.map(lambda a: a / total_batches, acc)

    if not self.data_axes:
      return self.constrain(local(params, data, vs), 1)
    axes = self.data_axes[0] if len(self.data_axes) == 1 else self.data_axes
    run = jax.shard_map(
        local, mesh=self.mesh, in_specs=(P(), P(axes), P()), out_specs=P(),
        axis_names=set(self.data_axes), check_vma=False)
    return self.constrain(run(params, data, vs), 1)

  @property
  def static_key(self):
    """What the compiled programs depend on besides the parameters' and
    data's values: operators with equal keys share them."""
    return (self.loss, self.curvature, self.data_axes,
            self.basis_rows_over_data, self.matmul_precision,
            self.num_batches,
            jax.tree.structure(self.params),
            tuple((x.shape, x.dtype.name, s) for x, s in zip(
                jax.tree.leaves(self.params),
                jax.tree.leaves(self.shardings))),
            tuple((x.shape, x.dtype.name) for x in jax.tree.leaves(self.data)))

  @property
  def _jitted(self):
    return _jitted_product(self.static_key, self)

  def __call__(self, v):
    """``A v`` for one vector `v` (a pytree like the parameters)."""
    vs = jax.tree.map(lambda x: x[None], v)
    with self.precision_context():
      out = self._jitted(self.params, self.data, vs)
    return jax.tree.map(lambda x: x[0], out)

  def lower_product(self, num_vectors=1):
    """The lowered product program of `num_vectors` vectors (for XLA's
    memory and cost analyses: ``.compile().memory_analysis()``)."""
    vs = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct((num_vectors,) + x.shape, x.dtype,
                                          sharding=s),
        self.params, self.layout(1))
    with self.precision_context():
      return self._jitted.lower(self.params, self.data, vs)


class LeafMaskedOperator(ShardedOperator):
  """A `ShardedOperator` whose product of row ``i`` of a batch of vectors
  is multiplied leaf by leaf by ``leaf_masks[i % M]`` (``[M, num_leaves]``
  0/1): with start vectors masked alike, Lanczos on that row runs on the
  diagonal block ``P A P`` of the masked leaves (`block_spectra`). The
  masks are constants of its programs (part of `static_key`)."""

  def __init__(self, op, leaf_masks):  # pylint: disable=super-init-not-called
    self.__dict__.update(op.__dict__)
    masks = np.asarray(leaf_masks, np.float64)
    if masks.ndim != 2 or masks.shape[1] != len(jax.tree.leaves(op.params)):
      raise ValueError(
          f'leaf_masks: must be [M, {len(jax.tree.leaves(op.params))}] (one '
          f'0/1 entry per parameter leaf), got shape {masks.shape}.')
    self.leaf_masks = tuple(tuple(float(x) for x in row) for row in masks)

  def product(self, params, data, vs):
    out = super().product(params, data, vs)
    leaves, treedef = jax.tree.flatten(out)
    k = leaves[0].shape[0]
    rows = np.asarray(self.leaf_masks)[np.arange(k) % len(self.leaf_masks)]
    masked = []
    for i, x in enumerate(leaves):
      column = rows[:, i]
      if np.all(column == 1):
        masked.append(x)
      else:
        scale = jnp.asarray(column, x.dtype).reshape((k,) + (1,) * (x.ndim - 1))
        masked.append(x * scale)
    return self.constrain(treedef.unflatten(masked), 1)

  @property
  def static_key(self):
    return super().static_key + (self.leaf_masks,)


_CACHE = collections.OrderedDict()  # (kind, static key, ...) -> program
_CACHE_SIZE = 32


def _cached(key, build):
  """One compiled program per key (kept for the last `_CACHE_SIZE` keys),
  so that a new operator of the same model, layout and data shapes (new
  parameter values: a later training step) reuses it."""
  if key not in _CACHE:
    _CACHE[key] = build()
    while len(_CACHE) > _CACHE_SIZE:
      _CACHE.popitem(last=False)
  _CACHE.move_to_end(key)
  return _CACHE[key]


def _jitted_product(key, op):
  # `op`: the first operator of this key; only its static attributes enter
  # the program (the parameters and data are arguments).
  return _cached(('product', key), lambda: jax.jit(
      op.product, out_shardings=op.layout(1)))


def _batched(dataset, batch_size, data_size, example_size):
  """``[num_batches, batch_size, ...]`` of an example-axis dataset, checked."""
  leaves = jax.tree.leaves(dataset)
  if not leaves:
    raise ValueError('dataset: has no arrays.')
  n = int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0
  for x in leaves:
    if np.ndim(x) == 0 or np.shape(x)[0] != n:
      raise ValueError('dataset: every leaf needs the same leading example '
                       'axis.')
  if n == 0 or n % batch_size:
    raise ValueError(f'batch_size: {batch_size} must divide the number of '
                     f'examples, {n} (the sharded path has no padding).')
  num_batches = n // batch_size
  if num_batches % data_size:
    raise ValueError(
        f'batch_size: {num_batches} batches cannot be dealt evenly over the '
        f'{data_size} devices of the data axes.')
  if batch_size % example_size:
    raise ValueError(
        f'batch_size: {batch_size} is not a multiple of {example_size}, the '
        'number of devices of the example axes each batch is split over.')
  return jax.tree.map(
      lambda x: np.reshape(np.asarray(x), (num_batches, batch_size) +
                           np.shape(x)[1:]), dataset)


def sharded_hvp_fn(loss, params, dataset, *, batch_size, curvature='hessian',
                   data_axes=None, example_axes=None,
                   basis_rows_over_data=True, matmul_precision=None):
  """The curvature-vector product of a dataset, over sharded parameters.

  Args:
    loss: as `get_hvp_fn` (``loss(params, batch) -> scalar`` for
      ``'hessian'``; ``(model_fn, output_loss)`` for ``'ggn'``; per-example
      losses for ``'fisher'``).
    params: pytree of `jax.Array`s, each on a `NamedSharding` of one mesh
      (e.g. `jax.device_put(params, mesh_layout.fsdp_shardings(params,
      mesh))`; on several processes, `mesh_layout.place`). A leaf may not be
      split over the data axes.
    dataset: pytree of host arrays with a common leading example axis (on
      several processes each passes the same arrays; each process places
      only its own devices' slices).
    batch_size: examples per batch; must divide the number of examples (the
      batches are dealt evenly over the data axes).
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    data_axes: mesh axes the batches are dealt over; default ``('data',)``
      when the mesh has that axis, else none.
    example_axes: mesh axes each batch's examples are split over; default
      ``('fsdp',)`` when the mesh has that axis, else none.
    basis_rows_over_data: deal the Lanczos basis's rows over the data axes
      too (default), so that data parallelism also divides the basis; False
      keeps each basis row laid out exactly like the parameters (the
      library's replicated design when the parameters are replicated).
    matmul_precision: how float32 matmuls of the products (and of the
      Lanczos runs on the operator) are computed, as `get_hvp_fn`'s
      (``'highest'``, ``'default'``, a `jax.lax.DotAlgorithmPreset` name);
      None: ``'highest'`` (full float32), as every entry point.

  Returns:
    A `ShardedOperator`: call it on a pytree like `params`.

  Raises:
    ValueError, TypeError: a bad argument, named in the message (params not
      on `NamedSharding`s of one mesh or split over a data axis, a
      `batch_size` that does not divide the examples or the axes, an unknown
      axis or curvature, a loss of the wrong form or output).

  Example:
    ``H = diag(1, ..., 8)`` over parameters split over every device:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jax.sharding import Mesh
    >>> import spectral_density as sd
    >>> mesh = Mesh(np.array(jax.devices()), ('model',))   # 1, 2, 4 or 8 devices
    >>> params = {'w': jnp.zeros(8)}
    >>> params = jax.device_put(params, sd.fsdp_shardings(params, mesh, 'model'))
    >>> data = np.tile(np.arange(1., 9.), (4, 1))          # 4 examples of [8]
    >>> loss = lambda p, x: 0.5 * jnp.mean(x @ p['w'] ** 2)  # H = diag(1..8)
    >>> op = sd.sharded_hvp_fn(loss, params, data, batch_size=2)
    >>> np.asarray(op({'w': jnp.ones(8)})['w'])
    array([1., 2., 3., 4., 5., 6., 7., 8.], dtype=float32)
    >>> sd.sharded_hvp_fn(loss, params, data, batch_size=3)
    Traceback (most recent call last):
    ...
    ValueError: batch_size: 3 must divide the number of examples, 4 ...
  """
  if curvature not in hessian.CURVATURES:
    raise ValueError(
        f'curvature must be one of {hessian.CURVATURES}, got {curvature!r}.')
  arguments.check_loss_form(curvature, loss)
  batch_size = arguments.positive_int('batch_size', batch_size)
  matmul_precision = precision_lib.check_matmul_precision(matmul_precision)
  mesh_layout.named_shardings(params)  # a ValueError unless laid out
  params = mesh_layout.auto_axes(params)
  shardings, mesh = mesh_layout.named_shardings(params)
  data_axes = (_default_axes(mesh, ('data',)) if data_axes is None
               else _check_axes('data_axes', data_axes, mesh))
  example_axes = (_default_axes(mesh, ('fsdp',)) if example_axes is None
                  else _check_axes('example_axes', example_axes, mesh))
  if set(data_axes) & set(example_axes):
    raise ValueError('example_axes: must not repeat an axis of data_axes.')
  for s in jax.tree.leaves(shardings):
    if _spec_axes(s) & set(data_axes):
      raise ValueError(
          f'params: a leaf is split over a data axis ({s.spec}); split '
          'parameters over other axes (e.g. fsdp) or pass other data_axes.')
  size = lambda axes: int(np.prod([mesh.shape[a] for a in axes]))
  data = _batched(dataset, batch_size, size(data_axes), size(example_axes))
  hessian.check_loss_output(curvature, loss, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
                            jax.tree.map(lambda x: x[0], data))
  data = mesh_layout.place(
      data, mesh_layout.data_sharding(mesh, data_axes, example_axes))
  return ShardedOperator(loss, params, data,
                         curvature=curvature, data_axes=data_axes,
                         basis_rows_over_data=arguments.boolean(
                             'basis_rows_over_data', basis_rows_over_data),
                         matmul_precision=matmul_precision)


class ShardedLanczosResult(NamedTuple):
  """numpy arrays of a sharded run (`sharded_lanczos`).

  Attributes:
    tridiag: ``[num_draws, order, order]`` Lanczos tridiagonals, as
      `LanczosResult.tridiag` (`tridiag_to_density`, `tridiag_to_eigv`).
    num_steps: ``[num_draws]`` valid steps (``order`` unless breakdown).
    resumed_from: the step a checkpoint resumed at (0 for a fresh run).
    gram: ``[num_draws x order, num_draws x order]`` inner products of the
      draws' basis rows (draw-major; `basis_gram`), computed on the devices,
      with a basis, >= 2 draws and ``keep_vecs=True``; else None.
    basis: with ``keep_vecs=True``, the bases as a pytree laid out like the
      parameters on their devices (leaves ``[num_draws, order,
      *leaf.shape]``, rows also dealt over the data axes), else None.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> result = sd.ShardedLanczosResult(np.diag([1., 2.])[None], np.array([2]),
    ...                                  0)
    >>> result.tridiag.shape, result.num_steps, result.resumed_from
    ((1, 2, 2), array([2]), 0)
  """
  tridiag: np.ndarray
  num_steps: np.ndarray
  resumed_from: int
  gram: Optional[np.ndarray] = None
  basis: Optional[Any] = None


def _config(op, order, precision, start, reorth_passes, tol):
  order = arguments.positive_int('order', order)
  if order > op.num_params:
    raise ValueError(f'order: must be <= the number of parameters, '
                     f'{op.num_params}; got {order}.')
  if start not in tree_recurrence.STARTS:
    raise ValueError(f'start must be one of {tree_recurrence.STARTS}, got '
                     f'{start!r}.')
  reorth_passes = arguments.positive_int('reorth_passes', reorth_passes,
                                         minimum=0)
  dtype, mv_dtype = recurrence.dtypes(precision, jnp.dtype(op.dtype))
  tol = arguments.check_tol(tol, mv_dtype)
  return tree_recurrence.Config(
      order, jnp.dtype(dtype).name, jnp.dtype(mv_dtype).name, start,
      reorth_passes > 0, reorth_passes, tol)


class _Run:
  """The compiled programs of one operator and config, their layouts."""

  def __init__(self, op, config):
    # `op`: the first operator of its static key; the programs take the
    # parameters and data as arguments, so they serve every such operator.
    self.op, self.config = op, config
    self.programs = tree_recurrence.programs(config)
    mesh = op.mesh
    replicated = NamedSharding(mesh, P())
    dtype = jnp.dtype(config.dtype)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                        op.params)
    self.like = like

    def reduce(params, data):
      return lambda vs: op.product(params, data, vs)

    wrap = lambda data: jax.random.wrap_key_data(data, impl=self.impl)

    def full(params, data, keys):
      keys = wrap(keys)
      r = reduce(params, data)
      states = self.programs.init(r, op.constrain, keys, like)
      states = self.programs.segment(r, op.constrain, states, 0, config.order)
      return self.programs.finish(r, op.constrain, states)

    def init(params, data, keys):
      keys = wrap(keys)
      return self.programs.init(reduce(params, data), op.constrain, keys,
                                like)

    def segment(params, data, states, start, stop):
      return self.programs.segment(reduce(params, data), op.constrain,
                                   states, start, stop)

    self.full = jax.jit(full, out_shardings=replicated)
    self.init = jax.jit(init)
    self.segment = jax.jit(segment, static_argnums=(3, 4), donate_argnums=2)
    self.finish = jax.jit(lambda s: self.programs.finish(None, None, s),
                          out_shardings=replicated)
    self.replicated = replicated
    # A fixed vector (checkpoint identity), drawn where each leaf lives.
    self.probe = jax.jit(lambda k: tree_recurrence.start_vector(
        k, like, op.dtype, 'gaussian'), out_shardings=op.shardings)

  def keys(self, rng_key, num_draws):
    """The draws' keys as raw key data ``[num_draws, ...]`` on every device
    (`place` works on several processes, where `device_put` cannot reach
    other processes' devices); the programs wrap them back."""
    keys = jax.random.split(rng_key, num_draws)
    self.impl = jax.random.key_impl(keys)
    return mesh_layout.place(np.asarray(jax.random.key_data(keys)),
                             self.replicated)

  def abstract_states(self, num_draws):
    """Shapes, dtypes and layouts of the states of `num_draws` draws."""
    keys = jax.ShapeDtypeStruct((num_draws,), jax.random.key(0).dtype)
    shapes = jax.eval_shape(
        lambda k: self.programs.init(None, lambda t, *_: t, k, self.like),
        keys)
    op = self.op
    def laid(tree, lead, basis=False):
      return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=s), tree, op.layout(lead, basis))
    rep = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                         sharding=self.replicated)
    return shapes._replace(
        basis=laid(shapes.basis, 2, True), v=laid(shapes.v, 1),
        v_prev=laid(shapes.v_prev, 1),
        **{f: rep(getattr(shapes, f)) for f in (
            'alphas', 'betas', 'beta_prev', 'norm_est', 'num_steps', 'done',
            'bad_step')})


def _run(op, config):
  """The `_Run` of an operator's static key and a config (cached)."""
  return _cached(('run', op.static_key, config), lambda: _Run(op, config))


def lanczos_program(op, order, *, num_draws=1, precision=None,
                    start='gaussian', reorth_passes=2, tol=None):
  """The whole sharded Lanczos run as one lowered program (for XLA's memory
  and cost analyses), without running it."""
  run = _run(op, _config(op, order, precision, start, reorth_passes, tol))
  return run.full.lower(op.params, op.data,
                        run.keys(jax.random.key(0), num_draws))


def sharded_lanczos(op, order, rng_key, *, num_draws=1, precision=None,
                    start='gaussian', reorth_passes=2, tol=None,
                    checkpoint_dir=None, checkpoint_every=None,
                    keep_vecs=False):
  """Lanczos runs of a `ShardedOperator`, vectors and basis sharded like the
  parameters.

  Args:
    op: from `sharded_hvp_fn`.
    order: Lanczos steps.
    rng_key: PRNG key; draw ``i`` starts from
      `tree_recurrence.start_vector` of ``jax.random.split(rng_key,
      num_draws)[i]`` (each leaf drawn with its own `fold_in`).
    num_draws: start vectors, run as one batch sharing every data pass.
    precision: ``'float32'``, ``'float64'`` (products in float64 too: the
      params are cast on their devices), ``'mixed'`` or None, as
      `lanczos_draws`.
    start: ``'gaussian'`` or ``'rademacher'``.
    reorth_passes: Gram-Schmidt passes per step (0: no basis).
    tol: relative breakdown tolerance; default ``10 x eps`` of the product.
    checkpoint_dir: save the state there (orbax, each process its own
      slices) every `checkpoint_every` steps; a rerun of the same
      computation resumes from the latest save; another one is refused.
    checkpoint_every: steps between saves (default: order, one save at the
      end).
    keep_vecs: keep the bases on the devices, laid out like the parameters
      (`ShardedLanczosResult.basis`), and with >= 2 draws their Gram matrix
      (`ShardedLanczosResult.gram`, computed on the devices). Needs a basis
      (``reorth_passes >= 1``).

  Returns:
    `ShardedLanczosResult`: ``tridiag [num_draws, order, order]``,
    ``num_steps [num_draws]``, ``resumed_from``; ``gram`` and ``basis``
    with `keep_vecs`.

  Raises:
    ValueError, TypeError: a bad argument, named in the message (`op` not a
      `ShardedOperator`, `order` above the number of parameters, an unknown
      `start`, `checkpoint_every` without `checkpoint_dir`, `keep_vecs`
      without a basis).
    FloatingPointError: a product was not finite.

  Example:
    Order 8 of ``H = diag(1, ..., 8)`` (8 parameters) is its exact spectrum:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jax.sharding import Mesh
    >>> import spectral_density as sd
    >>> mesh = Mesh(np.array(jax.devices()), ('model',))   # 1, 2, 4 or 8 devices
    >>> params = {'w': jnp.zeros(8)}
    >>> params = jax.device_put(params, sd.fsdp_shardings(params, mesh, 'model'))
    >>> data = np.tile(np.arange(1., 9.), (4, 1))          # 4 examples of [8]
    >>> loss = lambda p, x: 0.5 * jnp.mean(x @ p['w'] ** 2)  # H = diag(1..8)
    >>> op = sd.sharded_hvp_fn(loss, params, data, batch_size=2)
    >>> run = sd.sharded_lanczos(op, 8, jax.random.key(0), num_draws=2)
    >>> run.tridiag.shape, run.num_steps        # [num_draws, order, order]
    ((2, 8, 8), array([8, 8], dtype=int32))
    >>> np.linalg.eigvalsh(run.tridiag[0]).round(3)
    array([1., 2., 3., 4., 5., 6., 7., 8.], dtype=float32)
    >>> kept = sd.sharded_lanczos(op, 8, jax.random.key(0), num_draws=2,
    ...                           keep_vecs=True)
    >>> kept.basis['w'].shape, kept.gram.shape   # bases stay on the devices
    ((2, 8, 8), (16, 16))
    >>> sd.sharded_lanczos(op, 9, jax.random.key(0))
    Traceback (most recent call last):
    ...
    ValueError: order: must be <= the number of parameters, 8; got 9.
  """
  return run_lanczos(op, order, rng_key, num_draws=num_draws,
                     precision=precision, start=start,
                     reorth_passes=reorth_passes, tol=tol,
                     checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every, keep_vecs=keep_vecs,
                     gram=keep_vecs)


def run_lanczos(op, order, rng_key, *, num_draws=1, precision=None,
                start='gaussian', reorth_passes=2, tol=None,
                checkpoint_dir=None, checkpoint_every=None, keep_vecs=False,
                gram=False, leaf_masks=None):
  """`sharded_lanczos`, with the options of the library's entry points:
  `gram` (the pooled Gram matrix of the bases, computed on the devices, with
  >= 2 draws and at most `recurrence.MAX_POOLED_ROWS` rows) and
  `leaf_masks` (``[num_draws, num_leaves]`` 0/1: draw ``d`` starts in, and
  its products are projected on, the leaves that ``leaf_masks[d]`` keeps:
  Lanczos on that diagonal block)."""
  if not isinstance(op, ShardedOperator):
    raise TypeError(f'op: must be a ShardedOperator (sharded_hvp_fn), got '
                    f'{type(op).__name__}.')
  num_draws = arguments.positive_int('num_draws', num_draws)
  keep_vecs = arguments.boolean('keep_vecs', keep_vecs)
  if leaf_masks is not None:
    op = LeafMaskedOperator(op, leaf_masks)
    if len(op.leaf_masks) != num_draws:
      raise ValueError(f'leaf_masks: needs one row per draw ({num_draws}), '
                       f'got {len(op.leaf_masks)}.')
  if precision == 'float64':
    op = op.astype(jnp.float64)
  config = _config(op, order, precision, start, reorth_passes, tol)
  if keep_vecs and not config.reorthogonalize:
    raise ValueError('keep_vecs: needs a basis (reorth_passes >= 1).')
  with op.precision_context():
    return _run_lanczos(op, config, rng_key, num_draws, checkpoint_dir,
                        checkpoint_every, keep_vecs, gram)


def _run_lanczos(op, config, rng_key, num_draws, checkpoint_dir,
                 checkpoint_every, keep_vecs, gram):
  run = _run(op, config)
  keys = run.keys(rng_key, num_draws)
  masked = isinstance(op, LeafMaskedOperator)
  rows = num_draws * config.order
  gram = (gram and config.reorthogonalize and num_draws >= 2 and
          rows <= recurrence.MAX_POOLED_ROWS)
  if checkpoint_dir is None:
    if checkpoint_every is not None:
      raise ValueError('checkpoint_every: needs checkpoint_dir.')
    resumed = 0
    if masked or gram or keep_vecs:
      states = _init(op, run, keys)
      states = run.segment(op.params, op.data, states, 0, config.order)
      tridiag, num_steps, bad_step = run.finish(states)
    else:  # the bases are not needed: one program
      states = None
      tridiag, num_steps, bad_step = run.full(op.params, op.data, keys)
  else:
    every = arguments.optional_int('checkpoint_every', checkpoint_every)
    states, resumed = _checkpointed(op, run, keys, checkpoint_dir,
                                    every or config.order)
    tridiag, num_steps, bad_step = run.finish(states)
  bad_step = np.asarray(bad_step)
  if np.any(bad_step >= 0):
    draw = int(np.argmax(bad_step >= 0))
    raise FloatingPointError(
        f'the product at Lanczos step {int(bad_step[draw])} of draw {draw} '
        'was not finite (a NaN or inf in the loss, the model or the data).')
  return ShardedLanczosResult(
      np.asarray(tridiag), np.asarray(num_steps), resumed,
      basis_gram(states.basis) if gram else None,
      states.basis if keep_vecs else None)


def _init(op, run, keys):
  """The states before step 0: `run.init`'s, or for a `LeafMaskedOperator`
  from start vectors masked leaf by leaf (each drawn as `run.init` draws it,
  then multiplied by its draw's mask and renormalised)."""
  if not isinstance(op, LeafMaskedOperator):
    return run.init(op.params, op.data, keys)
  masks = mesh_layout.place(np.asarray(op.leaf_masks, run.config.dtype),
                            run.replicated)
  return _cached(('masked_init', op.static_key, run.config),
                 lambda: jax.jit(functools.partial(_masked_init, op, run)))(
                     op.params, op.data, keys, masks)


def _masked_init(op, run, params, data, keys, masks):
  config = run.config
  keys = jax.random.wrap_key_data(keys, impl=run.impl)

  def start(key, mask):
    v = tree_recurrence.start_vector(key, run.like, jnp.dtype(config.dtype),
                                     config.start)
    leaves, treedef = jax.tree.flatten(v)
    v = treedef.unflatten([x * mask[i] for i, x in enumerate(leaves)])
    return tree_recurrence.scale(1 / tree_recurrence.norm(v), v)

  starts = jax.vmap(start)(keys, masks)
  reduce = lambda vs: op.product(params, data, vs)
  return run.programs.init(reduce, op.constrain, None, run.like,
                           starts=starts)


def _checkpointed(op, run, keys, directory, every):
  """``(states, resumed_from)`` of a run saved every `every` steps."""
  # Imported here: orbax is an optional dependency.
  from spectral_density import tree_checkpoint  # pylint: disable=g-import-not-at-top
  config = run.config
  probe = run.probe(jax.random.key(tree_checkpoint.PROBE_KEY))
  saves = tree_checkpoint.TreeCheckpoints(
      directory, config._asdict(), np.asarray(keys),
      tree_checkpoint.identity(op, probe))
  step, states = saves.restore(run.abstract_states(keys.shape[0]))
  resumed = step
  if states is None:
    states = _init(op, run, keys)
  while step < config.order and not bool(np.all(np.asarray(states.done))):
    stop = min(step + every, config.order)
    states = run.segment(op.params, op.data, states, step, stop)
    if bool(np.any(np.asarray(states.bad_step) >= 0)):
      break  # raised by the caller; the last good save stays
    step = stop
    saves.save(step, states)
  return states, resumed


# On-device products with a kept basis (pytree, leaves [num_draws, order,
# *leaf.shape], laid out like the parameters with rows dealt over the data
# axes): small outputs, nothing gathered to one device.

def _leaf_layouts(tree, lead):
  """The layouts of a pytree like the basis's leaves without their two
  leading axes (draws, rows), plus `lead` unsplit leading axes."""
  def one(x):
    spec = tuple(x.sharding.spec)[2:]
    return NamedSharding(x.sharding.mesh, P(*([None] * lead), *spec))
  return jax.tree.map(one, tree)


def _basis_key(kind, basis):
  leaves, treedef = jax.tree.flatten(basis)
  return (kind, treedef, tuple((x.shape, x.dtype.name, x.sharding)
                               for x in leaves))


def _dot_rows(a, b, lead_a, lead_b):
  """``sum_leaves`` of the contraction of `a`'s and `b`'s leaves over the
  leaf axes: ``[*a_lead, *b_lead]``."""
  total = None
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    axes = (tuple(range(lead_a, x.ndim)), tuple(range(lead_b, y.ndim)))
    term = jnp.tensordot(x, y, axes=axes,
                         precision=jax.lax.Precision.HIGHEST)
    total = term if total is None else total + term
  return total


def _mesh_of(tree):
  return jax.tree.leaves(tree)[0].sharding.mesh


def basis_gram(basis):
  """``[D m, D m]`` numpy Gram matrix of a sharded basis (leaves ``[D, m,
  *leaf.shape]``), draw-major, as `deflation.basis_gram` of the raveled
  bases: sums over the leaves of per-leaf contractions, reduced over the
  devices. A loop over the pairs of draws: one draw's rows at a time are
  gathered over the data axes, never a whole vector (on 8 CPU devices the
  compiled program's temporaries were 1.25 x the per-device basis; one
  contraction of the whole basis at once, 2 x)."""
  def build():
    rows_layout = _leaf_layouts(basis, 1)
    def gram(basis):
      leaves = jax.tree.leaves(basis)
      num_draws, order = leaves[0].shape[:2]
      take = lambda b, d: jax.lax.dynamic_index_in_dim(b, d, 0,
                                                       keepdims=False)
      def pair(p, g):
        d1, d2 = p // num_draws, p % num_draws
        rows = jax.tree.map(
            lambda b, s: jax.lax.with_sharding_constraint(take(b, d1), s),
            basis, rows_layout)
        block = _dot_rows(rows, jax.tree.map(lambda b: take(b, d2), basis),
                          1, 1)                                  # [m, m]
        return jax.lax.dynamic_update_slice(
            g, block[None, :, None, :].astype(g.dtype), (d1, 0, d2, 0))
      g = jax.lax.fori_loop(
          0, num_draws * num_draws, pair,
          jnp.zeros((num_draws, order, num_draws, order), leaves[0].dtype))
      return g.reshape(num_draws * order, num_draws * order)
    return jax.jit(gram, out_shardings=NamedSharding(_mesh_of(basis), P()))
  return np.asarray(_cached(_basis_key('gram', basis), build)(basis),
                    np.float64)


def basis_combination(basis, draw, coefficients):
  """Unit vectors ``[k, *leaf.shape]`` (a pytree laid out like the
  parameters, leading axis unsplit): the combinations ``coefficients [k,
  order] @ basis[draw]``, each normalised (Ritz vectors from a kept sharded
  basis)."""
  def build():
    layout = _leaf_layouts(basis, 1)
    def combine(basis, draw, coefficients):
      out = jax.tree.map(
          lambda b, s: jax.lax.with_sharding_constraint(jnp.tensordot(
              coefficients.astype(b.dtype),
              jax.lax.dynamic_index_in_dim(b, draw, 0, keepdims=False),
              axes=1, precision=jax.lax.Precision.HIGHEST), s),
          basis, layout)
      norms = jnp.sqrt(sum(
          jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))
          for x in jax.tree.leaves(out)))
      return jax.tree.map(
          lambda x: x / norms.reshape((-1,) + (1,) * (x.ndim - 1)).astype(
              x.dtype), out)
    return jax.jit(combine, out_shardings=layout)
  fn = _cached(_basis_key('combine', basis), build)
  return fn(basis, jnp.asarray(draw, jnp.int32),
            jnp.asarray(coefficients))


def basis_projection(basis, draw, vector):
  """``(B g [order], B B^T [order, order], g . g)`` as numpy float64, for
  ``B = basis[draw]`` and `vector` ``g`` (a pytree like the parameters,
  placed in their layout first): what the fraction of ``g`` in a span of
  Ritz vectors needs."""
  layout = _leaf_layouts(basis, 0)
  dtype = jax.tree.leaves(basis)[0].dtype
  vector = mesh_layout.place(
      jax.tree.map(lambda x: np.asarray(x, dtype) if not isinstance(
          x, jax.Array) else x.astype(dtype), vector), layout)
  def build():
    def project(basis, draw, g):
      rows = jax.tree.map(
          lambda b: jax.lax.dynamic_index_in_dim(b, draw, 0, keepdims=False),
          basis)
      return (_dot_rows(rows, g, 1, 0), _dot_rows(rows, rows, 1, 1),
              _dot_rows(g, g, 0, 0))
    return jax.jit(project,
                   out_shardings=NamedSharding(_mesh_of(basis), P()))
  fn = _cached(_basis_key('project', basis), build)
  return tuple(np.asarray(x, np.float64)
               for x in fn(basis, jnp.asarray(draw, jnp.int32), vector))
