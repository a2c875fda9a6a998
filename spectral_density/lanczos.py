"""Lanczos tridiagonalisation with full reorthogonalisation, compiled once.

The whole run is one `lax.fori_loop` over a fixed-shape state, so compile time
does not grow with the order. Several draws (independent start vectors) run as
one `vmap`-ed batch: their matrix-vector products become one batched product,
which for a dataset operator shares every forward pass over the data.

Precision (`precision`):

* ``'float32'`` / ``'float64'``: Lanczos vectors and the products in that dtype.
* ``'mixed'``: the product in the operator's own dtype (e.g. the float32
  model), the Lanczos vectors, the reorthogonalisation and the recurrence in
  float64. Needs ``jax_enable_x64``.
* None: the operator's dtype.

Breakdown: when ``beta_j <= tol * ||T_j||`` the Krylov space is exhausted
(low-rank matrix, ``order >= dim``, the zero matrix). The run stops recording
there: later alphas and betas are exact zeros, so the tridiagonal is
block-diagonal and its trailing zero block carries zero quadrature weight.
`num_steps` reports the size of the valid leading block.
"""

import functools
import logging
import sys
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from spectral_density import collectives

PRECISIONS = ('float32', 'float64', 'mixed')
STARTS = ('gaussian', 'rademacher')
BASES = ('device', 'sharded', 'host', 'none')


class LanczosResult(NamedTuple):
  """Output of `lanczos_draws`.

  Attributes:
    tridiag: ``[num_draws, order, order]`` symmetric tridiagonal matrices.
    vecs: ``[num_draws, order, dim]`` Lanczos basis (rows), or None.
    num_steps: ``[num_draws]`` valid steps (``order`` unless breakdown).
  """
  tridiag: np.ndarray
  vecs: Optional[np.ndarray]
  num_steps: np.ndarray


class _State(NamedTuple):
  # Vectors are [dim], or this device's [dim_local] slice with basis='sharded'.
  basis: jax.Array        # [order, dim] or [0, dim] without reorthogonalisation
  alphas: jax.Array       # [order]
  betas: jax.Array        # [order]; betas[j] couples steps j and j + 1
  v_prev: jax.Array       # [dim]
  v: jax.Array            # [dim]; zero after breakdown
  beta_prev: jax.Array    # []
  norm_est: jax.Array     # [] running max of |alpha_j| + beta_{j-1} + beta_j
  num_steps: jax.Array    # [] int
  done: jax.Array         # [] bool
  bad_step: jax.Array     # [] int, first step with a non-finite product or -1
  mask: jax.Array         # [dim] 0/1 projection of the draw, or [1] ones: none
                          # (orbax saves no zero-size arrays)


def _dtypes(precision, matvec_dtype):
  """(Lanczos vector dtype, dtype handed to the matvec)."""
  if precision is None:
    return matvec_dtype, matvec_dtype
  if precision not in PRECISIONS:
    raise ValueError(
        f'precision must be one of {PRECISIONS} or None, got {precision!r}.')
  if precision in ('float64', 'mixed') and not jax.config.jax_enable_x64:
    raise ValueError(
        f"precision={precision!r} needs float64: call "
        "jax.config.update('jax_enable_x64', True) first (or use "
        "`with jax.enable_x64(True):`).")
  if precision == 'float32':
    return jnp.float32, jnp.float32
  if precision == 'float64':
    return jnp.float64, jnp.float64
  return jnp.float64, matvec_dtype


def _start_vector(key, dim, dtype, start, mask=None):
  if start == 'gaussian':
    v = jax.random.normal(key, (dim,), dtype)
  else:
    v = jax.random.rademacher(key, (dim,), dtype)
  if mask is not None:
    v = v * mask
  return v / jnp.linalg.norm(v)


def _init(key, dim, order, dtype, start, reorthogonalize, num_shards=1,
          mask=None):
  zero = jnp.zeros((), dtype)
  v = _start_vector(key, dim, dtype, start, mask)
  mask = jnp.ones((1,), dtype) if mask is None else mask.astype(dtype)
  if num_shards > 1:  # the same start vector as unsharded, sliced
    v = collectives.local_slice(v, num_shards)
    if mask.shape[0] > 1:
      mask = collectives.local_slice(mask, num_shards)
  size = v.shape[0]
  return _State(
      basis=jnp.zeros((order if reorthogonalize else 0, size), dtype),
      alphas=jnp.zeros((order,), dtype), betas=jnp.zeros((order,), dtype),
      v_prev=jnp.zeros((size,), dtype), v=v,
      beta_prev=zero, norm_est=zero, num_steps=jnp.zeros((), jnp.int32),
      done=jnp.zeros((), bool), bad_step=jnp.full((), -1, jnp.int32),
      mask=mask)


def _record(state, step):
  """Stores the current vector in the basis (before its product is used)."""
  if state.basis.shape[0] == 0:
    return state
  return state._replace(basis=state.basis.at[step].set(state.v))


def _update(state, step, w, tol, reorth_passes, sharded=False):
  """One Lanczos step given ``w = A v``.

  Three-term recurrence, then `reorth_passes` classical Gram-Schmidt passes
  against the whole basis ("twice is enough"); rows not yet filled are zero and
  so drop out of the projection. `sharded`: vectors are this device's slices,
  so every inner product is completed by a `psum` over the devices.
  """
  total = collectives.psum if sharded else (lambda x: x)
  dtype = state.v.dtype
  w = w.astype(dtype)
  if state.mask.shape[0] > 1:  # Lanczos on P H P: the Krylov space stays in P
    w = w * state.mask
  finite = total(jnp.sum(~jnp.isfinite(w), dtype=jnp.int32)) == 0
  bad_step = jnp.where((state.bad_step < 0) & ~finite & ~state.done,
                       jnp.asarray(step, jnp.int32), state.bad_step)
  w = jnp.where(finite, w, 0)
  alpha = total(jnp.vdot(w, state.v))
  w = w - alpha * state.v - state.beta_prev * state.v_prev
  for _ in range(reorth_passes if state.basis.shape[0] else 0):
    w = w - state.basis.T @ total(state.basis @ w)
  beta = jnp.sqrt(total(jnp.vdot(w, w))) if sharded else jnp.linalg.norm(w)
  norm_est = jnp.maximum(state.norm_est,
                         jnp.abs(alpha) + state.beta_prev + beta)
  live = ~state.done
  breakdown = live & (beta <= tol * norm_est)
  beta = jnp.where(breakdown | state.done, jnp.zeros_like(beta), beta)
  v_next = jnp.where(beta > 0, w / jnp.where(beta > 0, beta, 1), 0)
  return _State(
      basis=state.basis,
      alphas=state.alphas.at[step].set(jnp.where(live, alpha, 0)),
      betas=state.betas.at[step].set(beta),
      v_prev=state.v, v=v_next.astype(dtype), beta_prev=beta,
      norm_est=norm_est, num_steps=state.num_steps + live.astype(jnp.int32),
      done=state.done | breakdown, bad_step=bad_step, mask=state.mask)


def _tridiag(alphas, betas):
  off = betas[:-1]
  return jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _finish(state, keep_vecs):
  vecs = state.basis if keep_vecs else None
  return (_tridiag(state.alphas, state.betas), vecs, state.num_steps,
          state.bad_step)


class _Config(NamedTuple):
  """Static description of a Lanczos program (hashable: one compile each)."""
  dim: int
  order: int
  dtype: str
  matvec_dtype: str
  start: str
  reorthogonalize: bool
  reorth_passes: int
  keep_vecs: bool
  tol: float
  num_shards: int = 1  # > 1: basis='sharded' over this many devices


class _Programs(NamedTuple):
  """Each is ``program(reduce, *args)``; ``reduce`` maps ``[k, dim] -> [k,
  dim]`` and ``keys`` is ``[num_draws, 2]``."""
  full: Callable      # (keys) -> (tridiag, vecs, num_steps, bad_step)
  init: Callable      # (keys) -> states
  segment: Callable   # (states, start, stop) -> states
  finish: Callable    # (states) -> as `full`


@functools.lru_cache(maxsize=None)
def _programs(config):
  """The Lanczos programs of a config.

  Cached on the config so that the same function objects, hence the same
  compiled programs, serve every call with the same settings.
  """
  dtype, mv_dtype = jnp.dtype(config.dtype), jnp.dtype(config.matvec_dtype)
  sharded = config.num_shards > 1

  def init(reduce, keys, masks=None):
    del reduce
    return jax.vmap(lambda k, m: _init(
        k, config.dim, config.order, dtype, config.start,
        config.reorthogonalize, config.num_shards, m))(keys, masks)

  def segment(reduce, states, start, stop):
    if states.v.shape[0] == 1:
      # One draw: unbatched code. XLA keeps two extra copies of a [1, order,
      # dim] basis in the loop (measured), but updates [order, dim] in place.
      def step_one(i, state):
        state = _record(state, i)
        w = reduce(state.v.astype(mv_dtype)[None])[0]
        return _update(state, i, w, config.tol, config.reorth_passes, sharded)
      state = jax.tree.map(lambda x: x[0], states)
      state = jax.lax.fori_loop(start, stop, step_one, state)
      return jax.tree.map(lambda x: x[None], state)
    def step(i, states):
      states = jax.vmap(_record, in_axes=(0, None))(states, i)
      w = reduce(states.v.astype(mv_dtype))
      return jax.vmap(_update, in_axes=(0, None, 0, None, None, None))(
          states, i, w, config.tol, config.reorth_passes, sharded)
    return jax.lax.fori_loop(start, stop, step, states)

  def finish(reduce, states):
    del reduce
    return jax.vmap(_finish, in_axes=(0, None))(states, config.keep_vecs)

  def full(reduce, keys, masks=None):
    states = segment(reduce, init(reduce, keys, masks), 0, config.order)
    return finish(reduce, states)

  return _Programs(full, init, segment, finish)


def _batched(matvec):
  """``[k, dim] -> [k, dim]`` from a matvec of ``[dim] -> [dim]``."""
  return lambda vs: jax.vmap(matvec)(vs)


@functools.partial(jax.jit, static_argnums=(0,))
def _run_jit(program, matvec, *args):
  return program(_batched(matvec), *args)


def _as_matvec_pytree(matvec):
  """jit arguments must be pytrees: a plain function becomes a static leaf-less
  `Partial`, so the compiled program is cached per function object."""
  if isinstance(matvec, jax.tree_util.Partial):
    return matvec
  return jax.tree_util.Partial(matvec)


def _executor(matvec):
  """``execute(program, *args)`` running a Lanczos program with the products
  inside: in the operator's own pmapped program, or under `jit`."""
  if hasattr(matvec, 'run'):
    return matvec.run
  tree = _as_matvec_pytree(matvec)
  return lambda program, *args: _run_jit(program, tree, *args)


@functools.lru_cache(maxsize=None)
def _sharded_function_runner(devices):
  """``run(program, dim, matvec, sharded_args, replicated_args)`` for a plain
  matvec with basis='sharded': every device makes the whole product (the
  function is not data parallel) and keeps its slice."""
  num_shards = len(devices)
  spec = PartitionSpec(collectives.AXIS)

  def run(program, dim, matvec, sharded_args, replicated_args):
    def body(sharded_args):
      def reduce(v_local):
        w = jax.vmap(matvec)(collectives.gather(v_local, dim))
        return collectives.local_slice(w, num_shards)
      return program(reduce, *sharded_args, *replicated_args)
    return jax.shard_map(
        collectives.on_blocks(body, 1), mesh=collectives.mesh(devices),
        in_specs=spec,
        out_specs=spec, check_vma=False)(sharded_args)
  return jax.jit(run, static_argnums=(0, 1))


def _sharded_layout(matvec, dim):
  """(devices, executor) of a basis='sharded' run: ``execute(program,
  sharded_args, replicated_args)`` runs `program` on every device with the
  state arguments split over devices (leading axis) and returns the same."""
  if hasattr(matvec, 'run_sharded'):
    return tuple(matvec.devices), matvec.run_sharded
  devices = tuple(jax.devices())
  runner = _sharded_function_runner(devices)
  tree = _as_matvec_pytree(matvec)
  return devices, lambda program, sharded, replicated: runner(
      program, dim, tree, sharded, replicated)


@functools.lru_cache(maxsize=None)
def _host_step_fns(config):
  """Compiled pieces of one step, for runs whose products happen outside."""
  record = jax.jit(jax.vmap(_record, in_axes=(0, None)))
  update = jax.jit(jax.vmap(
      lambda s, i, w: _update(s, i, w, config.tol, config.reorth_passes),
      in_axes=(0, None, 0)))
  return record, update


@functools.lru_cache(maxsize=None)
def _sharded_host_step_fns(config, devices):
  """``(record, gather, update)`` for a host loop over split states: the
  products come from outside (a streamed operator) as whole vectors."""
  mesh = collectives.mesh(devices)
  split, whole = PartitionSpec(collectives.AXIS), PartitionSpec()

  def record(states, i):
    return jax.vmap(_record, in_axes=(0, None))(states, i)

  def gather(v):  # [1, k, dim_local] -> [k, dim] on every device
    return collectives.gather(v[0], config.dim)

  def update(states, i, w):  # w: [k, dim] on every device
    w = collectives.local_slice(w, config.num_shards)
    return jax.vmap(_update, in_axes=(0, None, 0, None, None, None))(
        states, i, w, config.tol, config.reorth_passes, True)

  def compiled(fn, in_specs, out_specs):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                                 out_specs=out_specs, check_vma=False))
  return (compiled(collectives.on_blocks(record, 1), (split, whole), split),
          compiled(gather, split, whole),
          compiled(collectives.on_blocks(update, 1), (split, whole, whole),
                   split))


class _Segments:
  """Runs the Lanczos steps in segments: the products either inside compiled
  segments (`execute`) or from a host loop (`matvec` on host-placed states).

  With ``config.num_shards > 1`` (basis='sharded') the states are global
  arrays whose leading axis is split over `devices`: device ``i`` holds
  ``[1, num_draws, ...]``, its slice of every vector and a copy of the rest.
  """

  def __init__(self, config, matvec, host_loop, state_device):
    self.config = config
    self.programs = _programs(config)
    # Dataset operators take [k, dim] themselves (sharing the forward pass).
    self.matvec = (matvec if getattr(matvec, 'accepts_batches', False)
                   else jax.jit(jax.vmap(matvec)))
    self.host_loop = host_loop
    self.state_device = state_device
    self.sharded = config.num_shards > 1
    if self.sharded:
      # A host loop (streamed products) runs only init and finish compiled,
      # with no product inside: over all devices, as for a function.
      self.devices, execute = _sharded_layout(
          _no_matvec if host_loop else matvec, config.dim)
      self.execute = lambda program, states, *args: execute(
          program, () if states is None else (states,), args)
    elif host_loop:
      self.execute = None
    else:
      run = _executor(matvec)
      self.execute = lambda program, states, *args: run(
          program, *(() if states is None else (states,)), *args)

  def _jit(self, program, *args):
    return _run_jit(program, _as_matvec_pytree(_no_matvec), *args)

  state_type = _State  # for restoring checkpoints

  def abstract_states(self, num_draws):
    """Shapes, dtypes and shardings of the states (None: saved as numpy)."""
    if not self.sharded:
      return None
    sharding = collectives.sharding(self.devices)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        saved_shapes(self.config, num_draws))

  def from_whole(self, states):
    """Host states with whole vectors (`whole_states`), in this run's layout
    and place."""
    if not self.sharded:
      return self.place(jax.tree.map(np.asarray, states))
    sharding = collectives.sharding(self.devices)
    split = _split_states(states, self.config.num_shards)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        x.shape, sharding, lambda index: x[index]), split)

  def place(self, states):
    """States restored from a checkpoint, where this run keeps them."""
    if self.sharded:
      return states
    if self.host_loop:
      return jax.device_put(states, self.state_device)
    return jax.tree.map(jax.numpy.asarray, states)

  def replica(self, x):
    """One device's copy of a field every device holds (host numpy)."""
    if self.sharded:
      return np.asarray(x.addressable_shards[0].data)[0]
    return np.asarray(x)

  def init(self, keys, masks=None):
    if self.host_loop and not self.sharded:
      return jax.device_put(self._jit(self.programs.init, keys, masks),
                            self.state_device)
    return self.execute(self.programs.init, None, keys, masks)

  def run(self, states, start, stop):
    if not self.host_loop:
      return self.execute(self.programs.segment, states, start, stop)
    mv_dtype = jnp.dtype(self.config.matvec_dtype)
    if self.sharded:
      record, gather, update = _sharded_host_step_fns(self.config,
                                                      self.devices)
      for i in range(start, stop):
        states = record(states, i)
        v = gather(states.v).addressable_data(0)  # [k, dim], one device
        w = self.matvec(v.astype(mv_dtype))
        states = update(states, i, collectives.replicate(w, self.devices))
      return states
    record, update = _host_step_fns(self.config)
    for i in range(start, stop):
      states = record(states, i)
      w = self.matvec(states.v.astype(mv_dtype))
      states = update(states, i, jax.device_put(w, self.state_device))
    return states

  def finish(self, states):
    if self.host_loop and not self.sharded:
      return self._jit(self.programs.finish, states)
    return self.execute(self.programs.finish, states)

  def full(self, keys, masks=None):
    """init, every step and finish as one compiled program."""
    return self.execute(self.programs.full, None, keys, masks)

  def to_host(self, out):
    """The output of `finish` as host numpy arrays ``(tridiag [k, order,
    order], vecs [k, order, dim] or None, num_steps [k], bad_step [k])``."""
    tridiag, vecs, num_steps, bad = out
    if not self.sharded:
      return jax.tree.map(np.asarray, out)
    if vecs is not None:
      if not vecs.is_fully_addressable:  # other processes hold some slices
        vecs = multihost_utils.process_allgather(vecs, tiled=True)
      vecs = _join_slices(vecs, self.config.dim)
    return (self.replica(tridiag), vecs, self.replica(num_steps),
            self.replica(bad))


_VECTOR_FIELDS = ('basis', 'v_prev', 'v')  # the last axis runs over dim


def saved_shapes(config, num_draws):
  """`_State` of `jax.ShapeDtypeStruct`: a run's states as saved, split
  (``[num_shards, num_draws, ..., dim_local]``) or not."""
  size = collectives.slice_size(config.dim, config.num_shards)
  shapes = jax.eval_shape(jax.vmap(lambda k: _init(
      k, size, config.order, jnp.dtype(config.dtype), config.start,
      config.reorthogonalize)), jax.random.split(jax.random.key(0), num_draws))
  lead = (config.num_shards,) if config.num_shards > 1 else ()
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(lead + s.shape, s.dtype),
                      shapes)


def _join_slices(x, dim):
  """``[S, k, ..., size]`` slices (host) -> ``[k, ..., dim]`` whole vectors."""
  x = np.moveaxis(np.asarray(x), 0, -2)
  return x.reshape(x.shape[:-2] + (-1,))[..., :dim]


def whole_states(states, num_shards, dim):
  """Host states saved with `num_shards` slices, with whole vectors: vector
  fields ``[num_draws, ..., dim]``, the rest ``[num_draws, ...]``."""
  if num_shards == 1:
    return states
  fields = {}
  for name, x in states._asdict().items():
    x = np.asarray(x)
    if name in _VECTOR_FIELDS:
      x = _join_slices(x, dim)
    else:  # every device holds the same copy
      x = x[0]
    fields[name] = x
  return _State(**fields)


def _split_states(states, num_shards):
  """The inverse of `whole_states`: ``[S, k, ..., size]`` host arrays."""
  fields = {}
  for name, x in states._asdict().items():
    x = np.asarray(x)
    if name in _VECTOR_FIELDS:
      size = collectives.slice_size(x.shape[-1], num_shards)
      pad = size * num_shards - x.shape[-1]
      x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
      x = np.moveaxis(x.reshape(x.shape[:-1] + (num_shards, size)), -2, 0)
    else:
      x = np.broadcast_to(x, (num_shards,) + x.shape)
    fields[name] = x
  return _State(**fields)


def _no_matvec(v):
  raise AssertionError('this program makes no products')


def _ritz_extremes(segments, states):
  """(smallest, largest) Ritz value of draw 0 so far (host numpy)."""
  steps = int(segments.replica(states.num_steps)[0])
  if steps == 0:
    return np.nan, np.nan
  alphas = segments.replica(states.alphas)[0, :steps].astype(np.float64)
  betas = segments.replica(states.betas)[0, :steps - 1].astype(np.float64)
  ritz = np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas, 1) +
                            np.diag(betas, -1))
  return float(ritz[0]), float(ritz[-1])


def _report(progress, info):
  """Prints one updating status line (and logs it), or calls `progress`."""
  if callable(progress):
    progress(info)
    return
  line = (f"Lanczos draws {info['draws']}: step {info['step']}/"
          f"{info['order']}, {info['seconds_per_product']:.3g} s/Hv, "
          f"ETA {info['eta_seconds']:.0f} s, Ritz "
          f"[{info['ritz_min']:.6g}, {info['ritz_max']:.6g}]")
  logging.info(line)
  end = '\n' if info['step'] == info['order'] else ''
  print('\r' + line, end=end, file=sys.stderr, flush=True)


def _run_chunk(segments, keys, first_draw, *, checkpoint_dir,
               checkpoint_every, progress, masks=None):
  """One batch of draws: init, segments (checkpointed), finish."""
  config = segments.config
  order = config.order
  every = checkpoint_every or (max(1, order // 20) if progress else order)
  draws = f'{first_draw}-{first_draw + keys.shape[0] - 1}'
  manager = None
  step, states = 0, None
  if checkpoint_dir is not None:
    from spectral_density import checkpoint  # pylint: disable=g-import-not-at-top
    manager = checkpoint.LanczosCheckpoints(
        checkpoint_dir, f'draws_{draws}', config._asdict(), keys)
    step, states = manager.restore(segments)
  if states is None:
    states = segments.init(keys, masks)
  start_time = time.perf_counter()
  start_step = step
  while step < order:
    stop = min(order, step + every)
    states = segments.run(states, step, stop)
    step = stop
    if manager is not None:
      manager.save(step, states)
    if progress:
      jax.block_until_ready(states)
      per = (time.perf_counter() - start_time) / (step - start_step)
      lo, hi = _ritz_extremes(segments, states)
      _report(progress, {'draws': draws, 'step': step, 'order': order,
                         'seconds_per_product': per,
                         'eta_seconds': per * (order - step),
                         'ritz_min': lo, 'ritz_max': hi})
  return segments.finish(states)


def lanczos_draws(matvec, dim, order, rng_key, *, num_draws=1,
                  draws_per_pass=None, precision=None, start='gaussian',
                  basis='device', reorth_passes=2, keep_vecs=False, tol=None,
                  checkpoint_dir=None, checkpoint_every=None, progress=False,
                  projection_masks=None):
  """Independent Lanczos runs from `num_draws` random start vectors.

  Args:
    matvec: symmetric linear operator ``[dim] -> [dim]``: a traceable
      function, or an operator from `get_hvp_fn`.
    dim: size of the operator.
    order: Lanczos steps (``1 <= order <= dim``).
    rng_key: PRNG key; draw ``i`` uses ``jax.random.split(rng_key,
      num_draws)[i]``, so results do not depend on `draws_per_pass`.
    num_draws: number of start vectors.
    draws_per_pass: draws run together as one batch (bounds memory: the basis
      is ``draws_per_pass x order x dim``); default all.
    precision: ``'float32'``, ``'float64'``, ``'mixed'`` or None (see module).
    start: ``'gaussian'`` (normalised, the paper's) or ``'rademacher'``.
    basis: where the Lanczos basis lives, for full reorthogonalisation:
      ``'device'`` (with the products: one compiled program), ``'sharded'``
      (split over the operator's devices, or all devices for a function or a
      streamed operator: each holds ``1 / num_devices`` of every vector,
      inner products by `psum`; one compiled program except for streamed
      operators; the same as 'device' on one device),
      ``'host'`` (host memory; the device holds only the vectors of one
      product, the recurrence runs on the host CPU), or ``'none'`` (no basis, no
      reorthogonalisation: three vectors; loses orthogonality, so converged
      Ritz values repeat and the bulk's weights drift; see README).
    reorth_passes: Gram-Schmidt passes per step (2: "twice is enough").
    keep_vecs: return the basis (not with ``basis='none'``).
    tol: relative breakdown tolerance; default ``10 x eps`` of the matvec
      dtype, since products are only accurate to that level.
    checkpoint_dir: if set, the state (step, alphas, betas, basis, keys) is
      saved there with orbax every `checkpoint_every` steps, and a rerun with
      the same arguments resumes from the latest save.
    checkpoint_every: steps between saves (and progress reports).
    progress: True prints one updating line (step, seconds per product,
      ETA, extreme Ritz values of draw 0) and logs it; a callable receives
      the same as a dict.
    projection_masks: optional 0/1 float array ``[num_draws, dim]``: draw
      ``d`` runs Lanczos on ``P_d A P_d`` (its start vector masked and
      renormalised, every product masked), so its Krylov space stays in the
      mask's coordinates and its Ritz values are those of the diagonal block
      ``A_bb``; the space ends by breakdown after at most ``sum(mask)`` steps.
      Not with `checkpoint_dir`.

  Returns:
    `LanczosResult` (numpy arrays).

  Raises:
    ValueError: bad `order`, `dim`, `num_draws`, `precision`, `start` or
      `basis`.
    FloatingPointError: a product returned a non-finite value (names the step).
  """
  dim, order, num_draws = int(dim), int(order), int(num_draws)
  if dim < 1:
    raise ValueError(f'dim: must be >= 1, got {dim}.')
  if not 1 <= order <= dim:
    raise ValueError(f'order: must satisfy 1 <= order <= dim = {dim}, '
                     f'got {order}.')
  if num_draws < 1:
    raise ValueError(f'num_draws: must be >= 1, got {num_draws}.')
  if start not in STARTS:
    raise ValueError(f'start must be one of {STARTS}, got {start!r}.')
  if basis not in BASES:
    raise ValueError(f'basis must be one of {BASES}, got {basis!r}.')
  if keep_vecs and basis == 'none':
    raise ValueError("keep_vecs=True needs a basis: basis='device' or "
                     "'host', not 'none'.")
  if checkpoint_every is not None and int(checkpoint_every) < 1:
    raise ValueError(f'checkpoint_every: must be >= 1, got {checkpoint_every}.')
  if projection_masks is not None:
    projection_masks = np.asarray(projection_masks)
    if projection_masks.shape != (num_draws, dim):
      raise ValueError(f'projection_masks: expected shape [num_draws, dim] = '
                       f'[{num_draws}, {dim}], got {projection_masks.shape}.')
    if not np.all((projection_masks == 0) | (projection_masks == 1)):
      raise ValueError('projection_masks: entries must be 0 or 1.')
    if not np.all(projection_masks.any(axis=1)):
      raise ValueError('projection_masks: every draw needs a nonzero mask.')
    if checkpoint_dir is not None:
      raise ValueError('projection_masks: not supported with checkpoint_dir.')
  op_dtype = getattr(matvec, 'dtype', None) or jnp.result_type(float)
  dtype, mv_dtype = _dtypes(precision, jnp.dtype(op_dtype))
  if tol is None:
    tol = 10 * float(jnp.finfo(mv_dtype).eps)
  traceable = getattr(matvec, 'traceable', True)
  num_shards = 1
  if basis == 'sharded':  # a streamed operator: over all devices
    num_shards = len((traceable and getattr(matvec, 'devices', None)) or
                     jax.devices())
  config = _Config(dim, order, jnp.dtype(dtype).name, jnp.dtype(mv_dtype).name,
                   start, basis != 'none', int(reorth_passes),
                   bool(keep_vecs), float(tol), num_shards)
  host_loop = basis == 'host' or not traceable
  state_device = (jax.local_devices(backend='cpu')[0] if basis == 'host'
                  else jax.local_devices()[0])
  segments = _Segments(config, matvec, host_loop, state_device)
  one_program = not (host_loop or checkpoint_dir or checkpoint_every or
                     progress)
  keys = jax.random.split(rng_key, num_draws)
  per_pass = int(draws_per_pass or num_draws)
  outs = []
  for first in range(0, num_draws, per_pass):
    chunk = keys[first:first + per_pass]
    masks = (None if projection_masks is None else
             jnp.asarray(projection_masks[first:first + per_pass], dtype))
    if one_program:
      out = segments.full(chunk, masks)
    else:
      out = _run_chunk(segments, chunk, first, checkpoint_dir=checkpoint_dir,
                       checkpoint_every=checkpoint_every, progress=progress,
                       masks=masks)
    outs.append(segments.to_host(out))
  tridiag = np.concatenate([o[0] for o in outs])
  vecs = np.concatenate([o[1] for o in outs]) if keep_vecs else None
  num_steps = np.concatenate([o[2] for o in outs])
  bad = np.concatenate([o[3] for o in outs])
  if np.any(bad >= 0):
    draw = int(np.argmax(bad >= 0))
    raise FloatingPointError(
        f'matvec returned a non-finite value at Lanczos step {int(bad[draw])} '
        f'(draw {draw}): check the loss, the data and the parameters.')
  return LanczosResult(tridiag, vecs, num_steps)


def lanczos_alg(matvec, dim, order, rng_key, **kwargs):
  """One Lanczos run, the original signature.

  Args:
    matvec: ``[dim] -> [dim]`` symmetric operator (function or `get_hvp_fn`
      operator).
    dim: operator size.
    order: number of steps.
    rng_key: PRNG key for the start vector.
    **kwargs: `precision`, `start`, `basis`, `keep_vecs` (default True here,
      as the original returned the basis, unless ``basis='none'``), `tol`,
      checkpointing and progress; see `lanczos_draws`.

  Returns:
    ``(tridiag [order, order], vecs [order, dim] or None)``.
  """
  kwargs.setdefault('keep_vecs', kwargs.get('basis', 'device') != 'none')
  result = lanczos_draws(matvec, dim, order, rng_key, **kwargs)
  vecs = None if result.vecs is None else result.vecs[0]
  return result.tridiag[0], vecs
