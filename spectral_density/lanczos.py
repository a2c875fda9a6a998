"""Lanczos tridiagonalisation with full reorthogonalisation: the public entry
points `lanczos_draws` and `lanczos_alg` (the original's signature).

They check the arguments (`arguments`), pick how the run executes
(`execution`: one compiled program, a host loop, a basis split over devices)
and run the recurrence of `recurrence` draw batch by draw batch. Precision
modes and breakdown: see `recurrence`. Inside `jax.jit` or `jax.vmap` (a
traceable matvec, no host-side mode) the result stays traced.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import arguments
from spectral_density import execution
from spectral_density import operators
from spectral_density import precision as precision_lib
from spectral_density import recurrence
from spectral_density.recurrence import BASES
# PRECISIONS, STARTS, BASES: their public home (configs import them here).
from spectral_density.recurrence import PRECISIONS  # pylint: disable=unused-import
from spectral_density.tree_recurrence import STARTS


class LanczosResult(NamedTuple):
  """Output of `lanczos_draws`.

  Attributes:
    tridiag: ``[num_draws, order, order]`` symmetric tridiagonal matrices.
    vecs: ``[num_draws, order, dim]`` Lanczos basis (rows), or None.
    num_steps: ``[num_draws]`` valid steps (``order`` unless breakdown).
    gram: ``[num_draws x order, num_draws x order]`` inner products of the
      basis rows of all draws (draw-major), NaN between draws of different
      passes (`draws_per_pass`), for the deflated estimators; None without
      a basis, with one draw, with kept `vecs` (they give it) or beyond
      `recurrence.MAX_POOLED_ROWS` rows per pass.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> run = sd.lanczos_draws(lambda v: d * v, 10, 4, jax.random.key(0),
    ...                        num_draws=2, keep_vecs=True)
    >>> run.tridiag.shape, run.vecs.shape, run.num_steps
    ((2, 4, 4), (2, 4, 10), array([4, 4]...))
  """
  tridiag: np.ndarray
  vecs: Optional[np.ndarray]
  num_steps: np.ndarray
  gram: Optional[np.ndarray] = None


def select_draws(run, draws):
  """The `LanczosResult` of some draws of `run` (`draws`: a slice or
  indices)."""
  gram = run.gram
  if gram is not None:
    num_draws, order = run.tridiag.shape[:2]
    rows = np.arange(num_draws * order).reshape(num_draws, order)[draws]
    rows = rows.ravel()
    gram = gram[np.ix_(rows, rows)]
  vecs = None if run.vecs is None else run.vecs[draws]
  return LanczosResult(run.tridiag[draws], vecs, run.num_steps[draws], gram)


def _pooled_gram(grams, sizes, order):
  """The whole run's Gram matrix from its passes' (NaN across passes), or
  None."""
  rows = sum(sizes) * order
  if any(g is None for g in grams) or rows > recurrence.MAX_POOLED_ROWS:
    return None
  gram = np.full((rows, rows), np.nan)
  first = 0
  for g, size in zip(grams, sizes):
    block = slice(first, first + size * order)
    gram[block, block] = g
    first += size * order
  return gram


def _is_traced(tree):
  """Whether any leaf of `tree` is a tracer (inside `jit`, `vmap`, ...)."""
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _refuse_traced(*, traceable, basis, checkpoint_dir, checkpoint_every,
                   progress):
  """Raises for the host-side modes, which cannot run under a transformation:
  they read values on the host between steps."""
  host_side = [what for what, used in [
      ('a streamed operator (its batches come from the host)', not traceable),
      ("basis='host'", basis == 'host'),
      ('checkpoint_dir', checkpoint_dir is not None),
      ('checkpoint_every', bool(checkpoint_every)),
      ('progress', bool(progress))] if used]
  if host_side:
    raise ValueError(
        f'{host_side[0]}: runs on the host and cannot be traced (jax.jit, '
        'jax.vmap): call lanczos_draws outside the transformation, or trace '
        "a traceable matvec with basis='device', 'sharded' or 'none' and "
        'no checkpoint_dir, checkpoint_every or progress.')


def _traced_result(outs, keep_vecs):
  """`LanczosResult` of traced arrays. A draw whose product was not finite
  cannot raise inside a transformation: its tridiagonal is all NaN."""
  tridiag = jnp.concatenate([o[0] for o in outs])
  bad = jnp.concatenate([o[3] for o in outs])
  tridiag = jnp.where((bad >= 0)[:, None, None], jnp.nan, tridiag)
  vecs = jnp.concatenate([o[1] for o in outs]) if keep_vecs else None
  gram = outs[0][4] if len(outs) == 1 else None
  return LanczosResult(tridiag, vecs,
                       jnp.concatenate([o[2] for o in outs]), gram)


def _function_dtype(matvec, dim, precision):
  """The dtype a plain function's products are computed in: with
  ``precision='mixed'``, what it returns for a float32 vector (traced, no
  product: a float32 function stays float32, and its breakdown tolerance is
  float32's); otherwise JAX's default float, as before."""
  default = jnp.dtype(jnp.result_type(float))
  if precision != 'mixed' or not callable(matvec):
    return default
  try:
    out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((dim,), jnp.float32))
  except Exception:  # pylint: disable=broad-except
    return default  # check_matvec reports it, with the dtype it hands over
  dtype = getattr(out, 'dtype', None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return default
  return jnp.dtype(dtype)


def lanczos_draws(matvec, dim, order, rng_key, *, num_draws=1,
                  draws_per_pass=None, precision=None, start='gaussian',
                  basis='device', reorth_passes=2, keep_vecs=False, tol=None,
                  checkpoint_dir=None, checkpoint_every=None, progress=False,
                  projection_masks=None, matmul_precision=None):
  """Independent Lanczos runs from `num_draws` random start vectors.

  Args:
    matvec: symmetric linear operator ``[dim] -> [dim]``: a traceable
      function, or an operator from `get_hvp_fn`.
    dim: size of the operator.
    order: Lanczos steps (``>= 1``; beyond `dim` the run breaks down by
      step `dim` and the tridiagonal is padded: the exact spectrum).
    rng_key: PRNG key; draw ``i`` uses ``jax.random.split(rng_key,
      num_draws)[i]``, so results do not depend on `draws_per_pass`.
    num_draws: number of start vectors.
    draws_per_pass: draws run together as one batch (bounds memory: the basis
      is ``draws_per_pass x order x dim``); default all.
    precision: the recurrence's dtype: ``'float32'``, ``'float64'``,
      ``'mixed'`` or None (the operator's dtype; see `recurrence`).
      With ``'float64'`` an operator from `get_hvp_fn` computes its products
      in float64 (floating params and data cast inside each product);
      ``'mixed'`` keeps the products in the operator's dtype (a plain
      function's: the dtype it returns for a float32 vector) and runs the
      recurrence in float64. bfloat16 and float16 operators run in float32.
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
      Ritz values repeat and the bulk's weights drift; see the
      guide, docs/guide/multi_device.md).
    reorth_passes: Gram-Schmidt passes per step (2: "twice is enough").
    keep_vecs: return the basis (not with ``basis='none'``). Without it, a
      run of >= 2 draws with a basis still returns the bases' Gram matrix
      (`LanczosResult.gram`), for the deflated trace and spectral sums.
    tol: relative breakdown tolerance in ``[0, 1)``; default ``10 x eps`` of
      the matvec dtype, since products are only accurate to that level.
    checkpoint_dir: if set, the state (step, alphas, betas, basis, keys) is
      saved there with orbax every `checkpoint_every` steps, with the
      identity of the computation (settings, and the product of a fixed probe
      vector: one extra product); a rerun of the same computation resumes
      from the latest save, another one is refused.
    checkpoint_every: steps between saves (and progress reports).
    progress: True prints one updating line (step, seconds per product,
      ETA, extreme Ritz values of draw 0) and logs it; a callable receives
      the same as a dict.
    projection_masks: optional ``[num_draws, dim]`` 0/1 floats: draw ``d``
      starts from its random vector times ``projection_masks[d]``,
      renormalised, and every product is multiplied by the mask before the
      recurrence, so the draw runs Lanczos on the diagonal block ``P_d A
      P_d`` (the submatrix of the mask's ones). Any `basis`.
    matmul_precision: how float32 matmuls of the recurrence (and of a plain
      `matvec`) are computed: ``'highest'`` (the default: full float32),
      ``'default'`` (JAX's reduced-precision default on TPU and NVIDIA
      GPUs), or a `jax.lax.DotAlgorithmPreset` name; float64 stays float64.
      An operator from `get_hvp_fn` computes its products with its own
      `matmul_precision`. See `precision`.

  Returns:
    `LanczosResult`: numpy arrays; traced arrays when called inside `jit` or
    `vmap` (a traceable matvec with ``basis='device'``, ``'sharded'`` or
    ``'none'`` and no checkpointing or progress), where a draw with a
    non-finite product comes back as an all-NaN tridiagonal instead of
    raising.

  Raises:
    ValueError, TypeError: a bad argument, named in the message (the checks
      are in `arguments`).
    FloatingPointError: a product returned a non-finite value; the run stops
      at that step and the message names the step and the draw.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> run = sd.lanczos_draws(lambda v: d * v, 10, 10, jax.random.key(0),
    ...                        num_draws=3)
    >>> run.tridiag.shape                    # [num_draws, order, order]
    (3, 10, 10)
    >>> np.round(np.linalg.eigvalsh(run.tridiag[0]), 3)   # order = dim: exact
    array([ 1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10.], dtype=float32)
    >>> long = sd.lanczos_draws(lambda v: d * v, 10, 11, jax.random.key(0))
    >>> long.num_steps, long.tridiag.shape   # order > dim: breaks down at dim
    (array([10], dtype=int32), (1, 11, 11))
    >>> sd.lanczos_draws(lambda v: d * v, 10, 0, jax.random.key(0))
    Traceback (most recent call last):
    ...
    ValueError: order: ...
  """
  dim, order, num_draws = arguments.check_sizes(matvec, dim, order, num_draws)
  arguments.check_rng_key(rng_key)
  matmul_precision = precision_lib.check_matmul_precision(matmul_precision)
  is_operator = isinstance(matvec, operators.Operator)
  draws_per_pass = arguments.optional_int('draws_per_pass', draws_per_pass)
  reorth_passes = arguments.positive_int('reorth_passes', reorth_passes,
                                         minimum=0)
  checkpoint_every = arguments.optional_int('checkpoint_every',
                                            checkpoint_every)
  if start not in STARTS:
    raise ValueError(f'start must be one of {STARTS}, got {start!r}.')
  if basis not in BASES:
    raise ValueError(f'basis must be one of {BASES}, got {basis!r}.')
  if keep_vecs and basis == 'none':
    raise ValueError("keep_vecs=True needs a basis: basis='device' or "
                     "'host', not 'none'.")
  op_dtype = (matvec.dtype if is_operator
              else _function_dtype(matvec, dim, precision))
  dtype, mv_dtype = recurrence.dtypes(precision, jnp.dtype(op_dtype))
  if precision == 'float64' and is_operator:
    matvec = matvec.astype(jnp.float64)  # float64 products, not just vectors
  traceable = not is_operator or matvec.traceable
  if not is_operator:
    # Compiled programs are keyed on the function object (`function_keys`).
    arguments.check_matvec(matvec, dim, mv_dtype)
  tol = arguments.check_tol(tol, mv_dtype)
  masks = arguments.check_masks(projection_masks, num_draws, dim, dtype)
  if _is_traced(rng_key) or _is_traced(masks):
    _refuse_traced(traceable=traceable, basis=basis,
                   checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, progress=progress)
  num_shards = 1
  if basis == 'sharded':  # a function or a streamed operator: all devices
    num_shards = len(matvec.devices if isinstance(
        matvec, operators.ProgramRunner) else jax.devices())
  config = recurrence.Config(
      dim, order, jnp.dtype(dtype).name, jnp.dtype(mv_dtype).name, start,
      basis != 'none', reorth_passes, bool(keep_vecs), tol, num_shards,
      masks is not None, matmul_precision)
  runner = execution.executor(config, matvec, basis)
  one_program = runner.one_program and not (checkpoint_dir or
                                            checkpoint_every or progress)
  identity = None
  if checkpoint_dir is not None:
    from spectral_density import checkpoint  # pylint: disable=g-import-not-at-top
    identity = checkpoint.identity(matvec, dim, mv_dtype, masks)
  keys = jax.random.split(rng_key, num_draws)
  per_pass = draws_per_pass or num_draws
  outs = []
  for first in range(0, num_draws, per_pass):
    chunk = keys[first:first + per_pass]
    chunk_masks = None if masks is None else masks[first:first + per_pass]
    if one_program:
      out = runner.full(chunk, chunk_masks)
      if _is_traced(out):  # inside jit / vmap: the arrays stay traced
        outs.append(runner.to_traced(out))
        continue
    else:
      out = execution.run_segments(
          runner, chunk, chunk_masks, first, checkpoint_dir=checkpoint_dir,
          checkpoint_every=checkpoint_every, progress=progress,
          identity=identity)
    outs.append(runner.to_host(out))
    if np.any(outs[-1][3] >= 0):
      raise execution.non_finite_error(outs[-1][3], first)
  if _is_traced(outs):
    return _traced_result(outs, keep_vecs)
  tridiag = np.concatenate([o[0] for o in outs])
  vecs = np.concatenate([o[1] for o in outs]) if keep_vecs else None
  num_steps = np.concatenate([o[2] for o in outs])
  gram = _pooled_gram([o[4] for o in outs], [o[0].shape[0] for o in outs],
                      order)
  return LanczosResult(tridiag, vecs, num_steps, gram)


def lanczos_alg(matvec, dim, order, rng_key, **kwargs):
  """One Lanczos run, the original signature.

  Args:
    matvec: ``[dim] -> [dim]`` symmetric operator (function or `get_hvp_fn`
      operator).
    dim: operator size.
    order: number of steps.
    rng_key: PRNG key for the start vector.
    **kwargs: `precision`, `matmul_precision`, `start`, `basis`,
      `keep_vecs` (default True here, as the original returned the basis,
      unless ``basis='none'``), `tol`, checkpointing and progress; see
      `lanczos_draws`.

  Returns:
    ``(tridiag [order, order], vecs [order, dim] or None)``.

  Raises:
    ValueError, TypeError, FloatingPointError: as `lanczos_draws`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> tridiag, vecs = sd.lanczos_alg(lambda v: d * v, 10, 4,
    ...                                jax.random.key(0))
    >>> tridiag.shape, vecs.shape            # [order, order], [order, dim]
    ((4, 4), (4, 10))
    >>> get_tridiag = jax.jit(
    ...     lambda key: sd.lanczos_alg(lambda v: d * v, 10, 4, key)[0])
    >>> get_tridiag(jax.random.key(0)).shape          # traceable, as the original
    (4, 4)
  """
  kwargs.setdefault('keep_vecs', kwargs.get('basis', 'device') != 'none')
  result = lanczos_draws(matvec, dim, order, rng_key, **kwargs)
  vecs = None if result.vecs is None else result.vecs[0]
  return result.tridiag[0], vecs
