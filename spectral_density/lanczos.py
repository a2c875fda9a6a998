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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

PRECISIONS = ('float32', 'float64', 'mixed')
STARTS = ('gaussian', 'rademacher')


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


def _start_vector(key, dim, dtype, start):
  if start == 'gaussian':
    v = jax.random.normal(key, (dim,), dtype)
  else:
    v = jax.random.rademacher(key, (dim,), dtype)
  return v / jnp.linalg.norm(v)


def _init(key, dim, order, dtype, start, reorthogonalize):
  zero = jnp.zeros((), dtype)
  return _State(
      basis=jnp.zeros((order if reorthogonalize else 0, dim), dtype),
      alphas=jnp.zeros((order,), dtype), betas=jnp.zeros((order,), dtype),
      v_prev=jnp.zeros((dim,), dtype),
      v=_start_vector(key, dim, dtype, start),
      beta_prev=zero, norm_est=zero, num_steps=jnp.zeros((), jnp.int32),
      done=jnp.zeros((), bool), bad_step=jnp.full((), -1, jnp.int32))


def _record(state, step):
  """Stores the current vector in the basis (before its product is used)."""
  if state.basis.shape[0] == 0:
    return state
  return state._replace(basis=state.basis.at[step].set(state.v))


def _update(state, step, w, tol, reorth_passes):
  """One Lanczos step given ``w = A v``.

  Three-term recurrence, then `reorth_passes` classical Gram-Schmidt passes
  against the whole basis ("twice is enough"); rows not yet filled are zero and
  so drop out of the projection.
  """
  dtype = state.v.dtype
  w = w.astype(dtype)
  finite = jnp.all(jnp.isfinite(w))
  bad_step = jnp.where((state.bad_step < 0) & ~finite & ~state.done,
                       step, state.bad_step)
  w = jnp.where(finite, w, 0)
  alpha = jnp.vdot(w, state.v)
  w = w - alpha * state.v - state.beta_prev * state.v_prev
  for _ in range(reorth_passes if state.basis.shape[0] else 0):
    w = w - state.basis.T @ (state.basis @ w)
  beta = jnp.linalg.norm(w)
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
      done=state.done | breakdown, bad_step=bad_step)


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


@functools.lru_cache(maxsize=None)
def _program(config):
  """``program(reduce, keys) -> (tridiag, vecs, num_steps, bad_step)``.

  ``reduce`` maps ``[k, dim] -> [k, dim]``; ``keys`` is ``[num_draws, 2]``.
  Cached on the config so that the same object, hence the same compiled
  program, serves every call with the same settings.
  """
  dtype, mv_dtype = jnp.dtype(config.dtype), jnp.dtype(config.matvec_dtype)

  def program(reduce, keys):
    states = jax.vmap(lambda k: _init(k, config.dim, config.order, dtype,
                                      config.start, config.reorthogonalize))(
                                          keys)
    def step(i, states):
      states = jax.vmap(_record, in_axes=(0, None))(states, i)
      w = reduce(states.v.astype(mv_dtype))
      return jax.vmap(_update, in_axes=(0, None, 0, None, None))(
          states, i, w, config.tol, config.reorth_passes)
    states = jax.lax.fori_loop(0, config.order, step, states)
    return jax.vmap(_finish, in_axes=(0, None))(states, config.keep_vecs)

  return program


def _batched(matvec):
  """``[k, dim] -> [k, dim]`` from a matvec of ``[dim] -> [dim]``."""
  return lambda vs: jax.vmap(matvec)(vs)


@functools.partial(jax.jit, static_argnums=(0,))
def _run_jit(program, matvec, keys):
  return program(_batched(matvec), keys)


def _run_host_loop(config, matvec, keys):
  """For operators that stream data from the host: the products run outside,
  the (compiled) Lanczos update inside, one call per step."""
  dtype, mv_dtype = jnp.dtype(config.dtype), jnp.dtype(config.matvec_dtype)
  init, record, update, finish = _host_step_fns(config)
  states = init(keys)
  for i in range(config.order):
    states = record(states, i)
    w = matvec(states.v.astype(mv_dtype))
    states = update(states, i, jnp.asarray(w, dtype))
  return finish(states)


@functools.lru_cache(maxsize=None)
def _host_step_fns(config):
  dtype = jnp.dtype(config.dtype)
  init = jax.jit(jax.vmap(lambda k: _init(
      k, config.dim, config.order, dtype, config.start,
      config.reorthogonalize)))
  record = jax.jit(jax.vmap(_record, in_axes=(0, None)))
  update = jax.jit(jax.vmap(
      lambda s, i, w: _update(s, i, w, config.tol, config.reorth_passes),
      in_axes=(0, None, 0)))
  finish = jax.jit(jax.vmap(lambda s: _finish(s, config.keep_vecs)))
  return init, record, update, finish


def _as_matvec_pytree(matvec):
  """jit arguments must be pytrees: a plain function becomes a static leaf-less
  `Partial`, so the compiled program is cached per function object."""
  if isinstance(matvec, jax.tree_util.Partial):
    return matvec
  return jax.tree_util.Partial(matvec)


def lanczos_draws(matvec, dim, order, rng_key, *, num_draws=1,
                  draws_per_pass=None, precision=None, start='gaussian',
                  reorthogonalize=True, reorth_passes=2, keep_vecs=False,
                  tol=None):
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
    reorthogonalize: full reorthogonalisation against the stored basis.
    reorth_passes: Gram-Schmidt passes per step (2: "twice is enough").
    keep_vecs: return the basis.
    tol: relative breakdown tolerance; default ``10 x eps`` of the matvec
      dtype, since products are only accurate to that level.

  Returns:
    `LanczosResult` (numpy arrays).

  Raises:
    ValueError: bad `order`, `dim`, `num_draws`, `precision` or `start`.
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
  if keep_vecs and not reorthogonalize:
    raise ValueError('keep_vecs=True needs reorthogonalize=True (the basis '
                     'is only stored for reorthogonalisation).')
  op_dtype = getattr(matvec, 'dtype', None) or jnp.result_type(float)
  dtype, mv_dtype = _dtypes(precision, jnp.dtype(op_dtype))
  if tol is None:
    tol = 10 * float(jnp.finfo(mv_dtype).eps)
  config = _Config(dim, order, jnp.dtype(dtype).name, jnp.dtype(mv_dtype).name,
                   start, bool(reorthogonalize), int(reorth_passes),
                   bool(keep_vecs), float(tol))
  keys = jax.random.split(rng_key, num_draws)
  per_pass = int(draws_per_pass or num_draws)
  outs = []
  for first in range(0, num_draws, per_pass):
    chunk = keys[first:first + per_pass]
    if not getattr(matvec, 'traceable', True):
      out = _run_host_loop(config, matvec, chunk)
    elif hasattr(matvec, 'run'):
      out = matvec.run(_program(config), chunk)
    else:
      out = _run_jit(_program(config), _as_matvec_pytree(matvec), chunk)
    outs.append(jax.tree.map(np.asarray, out))
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
    **kwargs: `precision`, `start`, `reorthogonalize`, `keep_vecs` (default
      True here, as the original returned the basis), `tol`; see
      `lanczos_draws`.

  Returns:
    ``(tridiag [order, order], vecs [order, dim] or None)``.
  """
  kwargs.setdefault('keep_vecs', kwargs.get('reorthogonalize', True))
  result = lanczos_draws(matvec, dim, order, rng_key, **kwargs)
  vecs = None if result.vecs is None else result.vecs[0]
  return result.tridiag[0], vecs
