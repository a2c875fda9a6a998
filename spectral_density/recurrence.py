"""The Lanczos recurrence: a fixed-shape state, one step, and the programs.

The whole run is one `lax.while_loop` over a fixed-shape state, so compile time
does not grow with the order. Several draws (independent start vectors) run as
one `vmap`-ed batch: their matrix-vector products become one batched product,
which for a dataset operator shares every forward pass over the data.

Precision (`precision`):

* ``'float32'`` / ``'float64'``: Lanczos vectors and the products in that dtype.
* ``'mixed'``: the product in the operator's own dtype (e.g. the float32
  model), the Lanczos vectors, the reorthogonalisation and the recurrence in
  float64. Needs ``jax_enable_x64``.
* None: the operator's dtype.

bfloat16 and float16 operators run in float32 (`precision.product_dtype`).
The matmuls of the recurrence (inner products, reorthogonalisation) and of a
plain matvec are traced under `Config.matmul_precision` (see `precision`).

Breakdown: when ``beta_j <= tol * ||T_j||`` the Krylov space is exhausted
(low-rank matrix, ``order >= dim``, the zero matrix). The run stops recording
there: later alphas and betas are exact zeros, so the tridiagonal is
block-diagonal and its trailing zero block carries zero quadrature weight.
`num_steps` reports the size of the valid leading block.

A program here is ``program(reduce, *args)``: ``reduce`` maps the batch of
current vectors ``[k, dim]`` to their products. Who calls it with which
``reduce`` (under `jit`, inside an operator's data-parallel program, split
over devices) is `execution`'s business.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import parallel
from spectral_density import precision as precision_lib

PRECISIONS = ('float32', 'float64', 'mixed')
STARTS = ('gaussian', 'rademacher')
BASES = ('device', 'sharded', 'host', 'none')


class State(NamedTuple):
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
  mask: jax.Array         # [dim] 0/1 projection of every product, or [0]


def dtypes(precision, matvec_dtype):
  """(Lanczos vector dtype, dtype handed to the matvec)."""
  matvec_dtype = precision_lib.product_dtype(matvec_dtype)
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
  """A random unit vector ``[dim]``, in the range of the 0/1 `mask`."""
  if start == 'gaussian':
    v = jax.random.normal(key, (dim,), dtype)
  else:
    v = jax.random.rademacher(key, (dim,), dtype)
  if mask is not None:
    v = v * mask
  return v / jnp.linalg.norm(v)


def init_state(key, mask, dim, order, dtype, start, reorthogonalize, num_shards=1):
  """The state before step 0. `mask`: ``[dim]`` or None (no projection: the
  state holds an empty ``[0]`` mask)."""
  zero = jnp.zeros((), dtype)
  v = _start_vector(key, dim, dtype, start, mask)
  mask = jnp.zeros((0,), dtype) if mask is None else mask.astype(dtype)
  if num_shards > 1:  # the same start vector as unsharded, sliced
    v = parallel.local_slice(v, num_shards)
    if mask.size:
      mask = parallel.local_slice(mask, num_shards)
  size = v.shape[0]
  return State(
      basis=jnp.zeros((order if reorthogonalize else 0, size), dtype),
      alphas=jnp.zeros((order,), dtype), betas=jnp.zeros((order,), dtype),
      v_prev=jnp.zeros((size,), dtype), v=v,
      beta_prev=zero, norm_est=zero, num_steps=jnp.zeros((), jnp.int32),
      done=jnp.zeros((), bool), bad_step=jnp.full((), -1, jnp.int32),
      mask=mask)


def record(state, step):
  """Stores the current vector in the basis (before its product is used)."""
  if state.basis.shape[0] == 0:
    return state
  return state._replace(basis=state.basis.at[step].set(state.v))


def update(state, step, w, tol, reorth_passes, sharded=False):
  """One Lanczos step given ``w = A v``.

  Three-term recurrence, then `reorth_passes` classical Gram-Schmidt passes
  against the whole basis ("twice is enough"); rows not yet filled are zero and
  so drop out of the projection. `sharded`: vectors are this device's slices,
  so every inner product is completed by a `psum` over the devices.
  """
  total = parallel.psum if sharded else (lambda x: x)
  dtype = state.v.dtype
  w = w.astype(dtype)
  finite = total(jnp.sum(~jnp.isfinite(w), dtype=jnp.int32)) == 0
  bad_step = jnp.where((state.bad_step < 0) & ~finite & ~state.done,
                       jnp.asarray(step, jnp.int32), state.bad_step)
  w = jnp.where(finite, w, 0)
  if state.mask.shape[-1]:  # P w: Lanczos on the block P A P
    w = w * state.mask
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
  return State(
      basis=state.basis,
      alphas=state.alphas.at[step].set(jnp.where(live, alpha, 0)),
      betas=state.betas.at[step].set(beta),
      v_prev=state.v, v=v_next.astype(dtype), beta_prev=beta,
      norm_est=norm_est, num_steps=state.num_steps + live.astype(jnp.int32),
      done=state.done | breakdown, bad_step=bad_step, mask=state.mask)


def record_all(states, step):
  """`record` of every draw of a batch of states."""
  return jax.vmap(record, in_axes=(0, None))(states, step)


def update_all(config, states, step, w, sharded=False):
  """`update` of every draw of a batch of states; `w` ``[k, dim]``."""
  return jax.vmap(update, in_axes=(0, None, 0, None, None, None))(
      states, step, w, config.tol, config.reorth_passes, sharded)


def tridiag(alphas, betas):
  """``[m, m]`` symmetric tridiagonal of ``alphas [m]`` and ``betas [m]``
  (``betas[j]`` couples ``j`` and ``j + 1``; the last one is not used);
  numpy in, numpy out (host progress reports), else `jax.numpy`."""
  xp = np if isinstance(alphas, np.ndarray) else jnp
  off = betas[:-1]
  return xp.diag(alphas) + xp.diag(off, 1) + xp.diag(off, -1)


# A pass of k draws of order m returns the Gram matrix ``[k m, k m]`` of its
# bases (for the deflated trace and spectral sums, `deflation`) when k m is at
# most this: 32 MiB in float64, and as many flops as the reorthogonalisation
# of a few more steps. Bigger pools keep the plain estimates unless the
# bases are kept (`keep_vecs`).
MAX_POOLED_ROWS = 2048


def pooled_gram(basis, sharded=False):
  """``[k m, k m]`` inner products of the basis rows of the ``k`` draws of a
  pass (draw-major), from ``basis [k, m, dim]`` (this device's slices when
  `sharded`), at full precision of the basis dtype."""
  rows = basis.reshape(basis.shape[0] * basis.shape[1], basis.shape[2])
  gram = jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
  return parallel.psum(gram) if sharded else gram


def finish_one(state, keep_vecs):
  vecs = state.basis if keep_vecs else None
  return (tridiag(state.alphas, state.betas), vecs, state.num_steps,
          state.bad_step)


class Config(NamedTuple):
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
  masked: bool = False  # projection_masks given
  matmul_precision: str = precision_lib.DEFAULT_MATMUL_PRECISION


class Programs(NamedTuple):
  """Each is ``program(reduce, *args)``; ``reduce`` maps ``[k, dim] -> [k,
  dim]``, ``keys`` is ``[num_draws]`` and ``masks`` ``[num_draws, dim]``."""
  full: Callable      # (keys, masks) -> (tridiag, vecs, num_steps, bad_step,
                      #                  gram [k m, k m] or None)
  init: Callable      # (keys, masks) -> states
  segment: Callable   # (states, start, stop) -> states
  finish: Callable    # (states) -> as `full`


@functools.lru_cache(maxsize=64)
def programs(config):
  """The Lanczos programs of a config.

  Cached on the config so that the same function objects, hence the same
  compiled programs, serve every call with the same settings.
  """
  dtype, mv_dtype = jnp.dtype(config.dtype), jnp.dtype(config.matvec_dtype)
  sharded = config.num_shards > 1
  # Every program is traced under the matmul precision: the recurrence's in
  # its dtype, the products (a plain matvec's; an operator's own setting
  # applies inside) in theirs.
  traced = lambda fn: precision_lib.traced_under(
      fn, config.matmul_precision, dtype)
  on_products = lambda reduce: precision_lib.traced_under(
      reduce, config.matmul_precision, mv_dtype)

  def init(reduce, keys, masks):
    del reduce
    return jax.vmap(lambda k, m: init_state(
        k, m, config.dim, config.order, dtype, config.start,
        config.reorthogonalize, config.num_shards),
                    in_axes=(0, None if masks is None else 0))(keys, masks)

  def segment(reduce, states, start, stop):
    reduce = on_products(reduce)
    # Steps until `stop`, or until a product was not finite (the run will
    # raise: no more passes over the data) or every draw broke down (the
    # rest of the tridiagonal is zeros either way).
    def go_on(carry):
      i, states = carry
      return (i < stop) & ~jnp.any(states.bad_step >= 0) & ~jnp.all(
          states.done)
    first = jnp.asarray(start, jnp.int32)
    if states.v.shape[0] == 1:
      # One draw: unbatched code. XLA keeps two extra copies of a [1, order,
      # dim] basis in the loop (measured), but updates [order, dim] in place.
      def step_one(carry):
        i, state = carry
        state = record(state, i)
        w = reduce(state.v.astype(mv_dtype)[None])[0]
        return i + 1, update(state, i, w, config.tol, config.reorth_passes,
                             sharded)
      state = jax.tree.map(lambda x: x[0], states)
      _, state = jax.lax.while_loop(go_on, step_one, (first, state))
      return jax.tree.map(lambda x: x[None], state)
    def step(carry):
      i, states = carry
      states = record_all(states, i)
      w = reduce(states.v.astype(mv_dtype))
      return i + 1, update_all(config, states, i, w, sharded)
    _, states = jax.lax.while_loop(go_on, step, (first, states))
    return states

  def finish(reduce, states):
    del reduce
    out = jax.vmap(finish_one, in_axes=(0, None))(states, config.keep_vecs)
    # The bases are dropped here unless kept: what the deflated estimators
    # need from them (their Gram matrix) is computed now. Kept bases give it
    # on the host; one draw has no other draw to deflate with.
    num_draws, order = states.basis.shape[:2]
    gram = None
    if (config.reorthogonalize and not config.keep_vecs and num_draws >= 2
        and num_draws * order <= MAX_POOLED_ROWS):
      gram = pooled_gram(states.basis, sharded)
    return out + (gram,)

  def full(reduce, keys, masks):
    states = segment(reduce, init(reduce, keys, masks), 0, config.order)
    return finish(reduce, states)

  return Programs(traced(full), traced(init), traced(segment),
                  traced(finish))
