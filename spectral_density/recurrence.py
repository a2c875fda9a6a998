"""The flat Lanczos recurrence: a fixed-shape state and the programs.

Vectors are flat ``[dim]`` arrays (or this device's slice of them with
``basis='sharded'``). The step and the loop of steps are `tree_recurrence`'s
(a flat vector is a pytree of one leaf); this module adds what the flat path
has beyond it: projection masks, a basis split by rows over devices (inner
products completed by a `psum`), start vectors drawn whole, the pooled Gram
matrix of a pass.

The whole run is one `lax.while_loop` over a fixed-shape state, so compile
time does not grow with the order. Several draws (independent start vectors)
run as one `vmap`-ed batch: their matrix-vector products become one batched
product, which for a dataset operator shares every forward pass over the
data.

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

from spectral_density import parallel
from spectral_density import precision as precision_lib
from spectral_density import tree_recurrence
from spectral_density.tree_recurrence import tridiag

PRECISIONS = ('float32', 'float64', 'mixed')
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
  v = _start_vector(key, dim, dtype, start, mask)
  mask = jnp.zeros((0,), dtype) if mask is None else mask.astype(dtype)
  if num_shards > 1:  # the same start vector as unsharded, sliced
    v = parallel.local_slice(v, num_shards)
    if mask.size:
      mask = parallel.local_slice(mask, num_shards)
  core = tree_recurrence.init_state(v, order, reorthogonalize)
  return State(*core, mask=mask)


def update(state, step, w, tol, reorth_passes, sharded=False):
  """One Lanczos step given ``w = A v``: `tree_recurrence.update` of a flat
  vector, projected by the state's mask if it has one. `sharded`: vectors
  are this device's slices, so every inner product is completed by a `psum`
  over the devices."""
  return tree_recurrence.update(
      state, step, w, tol, reorth_passes,
      mask=state.mask if state.mask.shape[-1] else None,
      total=parallel.psum if sharded else None)


def record_all(states, step):
  """Stores every draw's current vector in row `step` of its basis
  (`tree_recurrence.record`)."""
  return jax.vmap(tree_recurrence.record, in_axes=(0, None))(states, step)


def update_all(config, states, step, w, sharded=False):
  """`update` of every draw of a batch of states; `w` ``[k, dim]``."""
  return jax.vmap(update, in_axes=(0, None, 0, None, None, None))(
      states, step, w, config.tol, config.reorth_passes, sharded)


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
    product = lambda vs: reduce(vs.astype(mv_dtype))
    update_one = lambda state, i, w: update(state, i, w, config.tol,
                                            config.reorth_passes, sharded)
    return tree_recurrence.steps(states, start, stop, product, update_one)

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
