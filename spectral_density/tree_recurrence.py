"""The Lanczos step, once, over vectors that are pytrees; and the loop of steps.

Both Lanczos paths run this step: `recurrence` (flat ``[n]`` vectors, a
pytree of one leaf, replicated or a slice per device) and `sharded` (vectors
laid out like sharded parameters). The step: three-term recurrence,
`reorth_passes` classical Gram-Schmidt passes against the whole basis ("twice
is enough"), breakdown at ``beta <= tol * ||T_j||``, the first non-finite
product recorded. It is written over a small vector space of pytrees: `dot`,
`basis_coefficients`, `basis_combination`. A vector is a
pytree whose leaves have the parameters' shapes; the basis is ``[order,
*leaf.shape]`` per leaf. Nothing here ravels a pytree into one flat array:
under `jit`, each leaf of every vector and of the basis keeps the layout that
`constrain` gives it (the parameters' sharding), and the inner products are
sums over leaves of per-leaf products, which GSPMD completes by reductions
over the devices. Two options carry the flat path's extras: `total` completes
inner products of per-device slices (a `psum`, for a basis split by rows of
``dim``), `mask` projects every product (Lanczos on a diagonal block).

Memory: the basis is held once in the loop. A step reads the basis (the
Gram-Schmidt passes) and then writes the next vector into it (`steps`
records ``v_{j+1}`` at the end of step ``j``, not ``v_j`` at its start), so
XLA updates the loop's buffer in place; recorded first, the written basis
fed both the loop's carry and the products, and XLA made two more copies of
it (measured, `benchmarks/sharded_params.py`).

A program here is ``program(reduce, constrain, ...)``: ``reduce`` maps a
batch of vectors (leaves ``[k, *leaf.shape]``) to their products;
``constrain(tree, lead, basis=False)`` pins a pytree whose leaves have `lead`
leading axes (a batch of vectors, a basis: `basis` True) to its layout (the
identity when nothing is sharded). Several draws run as one `vmap`-ed batch.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

STARTS = ('gaussian', 'rademacher')


class State(NamedTuple):
  basis: object           # pytree, leaves [order, *leaf.shape] (or [0, ...])
  alphas: jax.Array       # [order]
  betas: jax.Array        # [order]; betas[j] couples steps j and j + 1
  v_prev: object          # pytree like the parameters
  v: object               # pytree like the parameters; zero after breakdown
  beta_prev: jax.Array    # []
  norm_est: jax.Array     # [] running max of |alpha_j| + beta_{j-1} + beta_j
  num_steps: jax.Array    # [] int
  done: jax.Array         # [] bool
  bad_step: jax.Array     # [] int, first step with a non-finite product or -1


# The vector space: pytrees with the parameters' structure and shapes.

def _sum(terms):
  return functools.reduce(jnp.add, terms)


def dot(a, b):
  """``sum_leaves vdot(a_leaf, b_leaf)``: one scalar, a global reduction when
  the leaves are sharded."""
  return _sum([jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                               jax.tree.leaves(b))])


def norm(x):
  return jnp.sqrt(dot(x, x))


def scale(alpha, x):
  return jax.tree.map(lambda xi: alpha * xi, x)


def basis_coefficients(basis, w):
  """``B w``: ``[order]``, the inner products of every basis row with `w`."""
  return _sum([jnp.tensordot(b, x, axes=x.ndim) for b, x in zip(
      jax.tree.leaves(basis), jax.tree.leaves(w))])


def basis_combination(basis, c):
  """``B^T c``: the combination of the basis rows with coefficients `c`."""
  return jax.tree.map(lambda b: jnp.tensordot(c, b, axes=1), basis)


def start_vector(key, like, dtype, start):
  """A random unit vector shaped like the pytree `like`: leaf ``i`` drawn with
  ``fold_in(key, i)`` (so each leaf is drawn where it lives), normalised by the
  global norm."""
  leaves, treedef = jax.tree.flatten(like)
  draw = jax.random.normal if start == 'gaussian' else jax.random.rademacher
  v = treedef.unflatten([draw(jax.random.fold_in(key, i), jnp.shape(x), dtype)
                         for i, x in enumerate(leaves)])
  return scale(1 / norm(v), v)


def init_state(v, order, reorthogonalize):
  """The state before step 0, from the unit start vector `v`."""
  dtype = jax.tree.leaves(v)[0].dtype
  zero = jnp.zeros((), dtype)
  rows = order if reorthogonalize else 0
  return State(
      basis=jax.tree.map(lambda x: jnp.zeros((rows,) + x.shape, x.dtype), v),
      alphas=jnp.zeros((order,), dtype), betas=jnp.zeros((order,), dtype),
      v_prev=jax.tree.map(jnp.zeros_like, v), v=v,
      beta_prev=zero, norm_est=zero, num_steps=jnp.zeros((), jnp.int32),
      done=jnp.zeros((), bool), bad_step=jnp.full((), -1, jnp.int32))


def _rows(state):
  return jax.tree.leaves(state.basis)[0].shape[0]


def record(state, step):
  """Stores the current vector in row `step` of the basis; `step` past the
  last row (after the last step) leaves the basis as it is."""
  rows = _rows(state)
  if rows == 0:
    return state
  def put(b, x, x_prev):
    # Past the last row, the update clamps `step` to it and writes `x_prev`,
    # which that row holds after the last step (each step's `v_prev` is the
    # vector recorded for it): no read of the basis, no temporary.
    x = jnp.where(step < rows, x, x_prev)
    # dynamic_update_index_in_dim, not .at[step].set: the scatter's
    # out-of-bounds handling made XLA copy the basis every step (measured).
    return jax.lax.dynamic_update_index_in_dim(b, x, step, 0)
  return state._replace(basis=jax.tree.map(put, state.basis, state.v,
                                           state.v_prev))


def _same(x):
  return x


def update(state, step, w, tol, reorth_passes, mask=None, total=None):
  """One Lanczos step given ``w = A v`` (a pytree like `v`).

  Args:
    state: a `State`, or any NamedTuple with its fields (`recurrence.State`).
    step: the step's index ``j``.
    w: ``A v``, a pytree like ``state.v``.
    tol: relative breakdown tolerance.
    reorth_passes: classical Gram-Schmidt passes against the whole basis;
      rows not yet filled are zero and so drop out of the projection.
    mask: a pytree like `w` of 0/1, or None: ``P w`` replaces `w`, so the
      recurrence runs on the block ``P A P``.
    total: completes every inner product of per-device slices (a `psum`
      over the devices) or None (whole vectors, or GSPMD completes them).

  Returns:
    `state` after step ``j``: ``alphas[j]``, ``betas[j]``, the next vector.
  """
  total = total or _same
  dtype = state.alphas.dtype
  w = jax.tree.map(lambda x: x.astype(dtype), w)
  finite = total(_sum([jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)
                       for x in jax.tree.leaves(w)])) == 0
  bad_step = jnp.where((state.bad_step < 0) & ~finite & ~state.done,
                       jnp.asarray(step, jnp.int32), state.bad_step)
  w = jax.tree.map(lambda x: jnp.where(finite, x, 0), w)
  if mask is not None:
    w = jax.tree.map(jnp.multiply, w, mask)
  alpha = total(dot(w, state.v))
  w = jax.tree.map(lambda x, v, u: x - alpha * v - state.beta_prev * u,
                   w, state.v, state.v_prev)
  for _ in range(reorth_passes if _rows(state) else 0):
    w = jax.tree.map(jnp.subtract, w, basis_combination(
        state.basis, total(basis_coefficients(state.basis, w))))
  beta = jnp.sqrt(total(dot(w, w)))
  norm_est = jnp.maximum(state.norm_est,
                         jnp.abs(alpha) + state.beta_prev + beta)
  live = ~state.done
  breakdown = live & (beta <= tol * norm_est)
  beta = jnp.where(breakdown | state.done, jnp.zeros_like(beta), beta)
  safe = jnp.where(beta > 0, beta, 1)
  v_next = jax.tree.map(lambda x: jnp.where(beta > 0, x / safe, 0), w)
  return state._replace(
      alphas=state.alphas.at[step].set(jnp.where(live, alpha, 0)),
      betas=state.betas.at[step].set(beta),
      v_prev=state.v, v=v_next, beta_prev=beta,
      norm_est=norm_est, num_steps=state.num_steps + live.astype(jnp.int32),
      done=state.done | breakdown, bad_step=bad_step)


def steps(states, start, stop, product, update_one):
  """Steps ``start .. stop - 1`` of a batch of draws, as one `while_loop`.

  Stops early when a product was not finite (the run will raise: no more
  passes over the data) or every draw broke down (the rest of the
  tridiagonal is zeros either way).

  Args:
    states: a batch of states (every leaf ``[k, ...]``): `State` or
      `recurrence.State`.
    start, stop: the steps (ints or traced scalars).
    product: maps the current vectors (leaves ``[k, ...]``) to their
      products.
    update_one: ``(state, step, w) -> state``, one draw's `update`.

  Returns:
    The states after the steps.
  """
  def go_on(carry):
    i, states = carry
    return (i < stop) & ~jnp.any(states.bad_step >= 0) & ~jnp.all(
        states.done)
  first = jnp.asarray(start, jnp.int32)
  # Each step records the next vector: row `start` first (saved states may
  # hold it already, rewritten with the same values).
  if states.alphas.shape[0] == 1:
    # One draw: unbatched code (the products of a batch of one, as before).
    squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
    expand = lambda t: jax.tree.map(lambda x: x[None], t)
    def step_one(carry):
      i, state = carry
      state = update_one(state, i, squeeze(product(expand(state.v))))
      return i + 1, record(state, i + 1)
    state = record(squeeze(states), first)
    _, state = jax.lax.while_loop(go_on, step_one, (first, state))
    return expand(state)
  record_all = jax.vmap(record, in_axes=(0, None))
  update_all = jax.vmap(update_one, in_axes=(0, None, 0))
  def step(carry):
    i, states = carry
    states = update_all(states, i, product(states.v))
    return i + 1, record_all(states, i + 1)
  # The loop's carry keeps the layout it enters with (`init` pins it): no
  # constraint inside the body, where one cost copies of the basis.
  _, states = jax.lax.while_loop(go_on, step,
                                 (first, record_all(states, first)))
  return states


def tridiag(alphas, betas):
  """``[m, m]`` symmetric tridiagonal of ``alphas [m]`` and ``betas [m]``
  (``betas[j]`` couples ``j`` and ``j + 1``; the last one is not used);
  numpy in, numpy out (host progress reports), else `jax.numpy`."""
  xp = np if isinstance(alphas, np.ndarray) else jnp
  off = betas[:-1]
  return xp.diag(alphas) + xp.diag(off, 1) + xp.diag(off, -1)


class Config(NamedTuple):
  """Static description of a program (hashable: one compile each)."""
  order: int
  dtype: str          # Lanczos vectors and recurrence
  matvec_dtype: str   # what the product is handed
  start: str
  reorthogonalize: bool
  reorth_passes: int
  tol: float


class Programs(NamedTuple):
  """Each is ``program(reduce, constrain, ...)``."""
  init: Callable      # (keys [k], like) or (starts, like) -> states
  segment: Callable   # (states, start, stop) -> states
  finish: Callable    # (states) -> (tridiag [k, m, m], num_steps, bad_step)


@functools.lru_cache(maxsize=64)
def programs(config):
  """The Lanczos programs of a config (cached: one function object each)."""
  dtype, mv_dtype = jnp.dtype(config.dtype), jnp.dtype(config.matvec_dtype)

  def constrain_state(constrain, states, lead=1):
    # lead: 1 for a batch of states, 0 for one draw's state
    return states._replace(basis=constrain(states.basis, lead + 1, True),
                           v=constrain(states.v, lead),
                           v_prev=constrain(states.v_prev, lead))

  def init(reduce, constrain, keys, like, starts=None):
    """`starts`: given unit start vectors (leaves ``[k, ...]``) or None."""
    del reduce
    if starts is None:
      starts = jax.vmap(lambda k: start_vector(k, like, dtype, config.start))(
          keys)
    starts = constrain(jax.tree.map(lambda x: x.astype(dtype), starts), 1)
    states = jax.vmap(lambda v: init_state(v, config.order,
                                           config.reorthogonalize))(starts)
    return constrain_state(constrain, states)

  def segment(reduce, constrain, states, start, stop):
    del constrain
    product = lambda vs: reduce(jax.tree.map(lambda x: x.astype(mv_dtype),
                                             vs))
    update_one = lambda state, i, w: update(state, i, w, config.tol,
                                            config.reorth_passes)
    return steps(states, start, stop, product, update_one)

  def finish(reduce, constrain, states):
    del reduce, constrain
    return (jax.vmap(tridiag)(states.alphas, states.betas), states.num_steps,
            states.bad_step)

  return Programs(init, segment, finish)
