"""Estimators from Lanczos runs: density bands, subspace overlaps, and a
dedicated trace estimator (Hutch++, Krylov-aware). Deflated traces and
spectral sums are in `deflation`, CDF bounds in `cdf_band`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from spectral_density import density as density_lib
from spectral_density import function_keys
from spectral_density import lanczos


def density_band(nodes, weights, sigma, level=0.9, grid=None):
  """Pointwise confidence band of the smoothed density from the draws.

  Each draw's smoothed quadrature ``rho_d(t)`` is an unbiased estimate of the
  smoothed density (up to the quadrature error of the order); the band is the
  Student-t interval of their mean at `level`, clipped below at 0.

  Args:
    nodes, weights: ``[num_draws, order]`` (>= 2 draws).
    sigma: kernel standard deviation.
    level: two-sided coverage of each point, in (0, 1).
    grid: ``[grid_len]``; default `density.default_grid`.

  Returns:
    ``(lower [grid_len], upper [grid_len], grid [grid_len])``, not
    renormalised (the mean is `eigv_to_density(..., normalize=False)`).
  """
  nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
  num_draws = nodes.shape[0]
  if num_draws < 2:
    raise ValueError('num_draws: a band from the spread over draws needs >= 2 '
                     'draws, got 1.')
  if not 0 < level < 1:
    raise ValueError(f'level: must be in (0, 1), got {level}.')
  if not sigma > 0:
    raise ValueError(f'sigma: must be > 0, got {sigma}.')
  if grid is None:
    grid = density_lib.default_grid(nodes, weights, sigma)
  grid = np.asarray(grid, np.float64)
  per_draw = np.stack([
      density_lib.gaussian_kernel(grid, nodes[d], sigma) @ weights[d]
      for d in range(num_draws)])                         # [D, grid_len]
  mean = per_draw.mean(axis=0)
  half = (stats.t.ppf(0.5 + level / 2, num_draws - 1) *
          per_draw.std(axis=0, ddof=1) / np.sqrt(num_draws))
  return np.maximum(mean - half, 0.0), mean + half, grid


def principal_angles(a, b):
  """Principal angles ``[k]`` (radians, ascending) between the row spaces of
  ``a [k, n]`` and ``b [k, n]``."""
  qa, _ = np.linalg.qr(np.asarray(a, np.float64).T)
  qb, _ = np.linalg.qr(np.asarray(b, np.float64).T)
  cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
  return np.arccos(np.clip(cosines, 0.0, 1.0))


def subspace_overlap(a, b, k):
  """Principal angles between the top-k Ritz subspaces of two spectra.

  Args:
    a, b: `SpectrumResult`s run with ``keep_vecs=True`` on operators of the
      same size (e.g. two training snapshots). Results of runs on sharded
      parameters work too: their Ritz vectors stay on the devices and only
      ``k x k`` inner products come to the host.
    k: subspace dimension.

  Returns:
    ``[k]`` angles in radians, ascending; ``mean(cos(angles)**2)`` is the
    overlap (1: the same space, ~k/n: unrelated).

  Raises:
    ValueError: `a` and `b` of different sizes, a result without its basis
      (``keep_vecs=False``), or `k` outside ``[1, valid steps]``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> a = sd.slq(lambda v: d * v, 10, order=10, keep_vecs=True)
    >>> b = sd.slq(lambda v: d * v, 10, order=10, keep_vecs=True,
    ...            rng_key=jax.random.key(1))
    >>> angles = sd.subspace_overlap(a, b, k=2)   # both span e_10, e_9
    >>> angles.shape, bool(np.all(angles < 1e-2))
    ((2,), True)
  """
  if a.dim != b.dim:
    raise ValueError(f'a, b: operator sizes differ ({a.dim} vs {b.dim}).')
  if (getattr(a, 'sharded_vecs', None) is None and
      getattr(b, 'sharded_vecs', None) is None):
    return principal_angles(a.ritz_vectors(k), b.ritz_vectors(k))
  # Runs on sharded parameters: the Ritz vectors stay pytrees on the
  # devices; only their k x k inner products come to the host.
  ra, rb = a.ritz_vectors(k, pytree=True), b.ritz_vectors(k, pytree=True)
  if jax.tree.structure(ra) != jax.tree.structure(rb):
    raise ValueError('a, b: their parameter pytrees differ.')
  gaa, gbb, gab = (np.asarray(g, np.float64) for g in _tree_inner(ra, rb))
  return _principal_angles_from_gram(gaa, gbb, gab)


@jax.jit
def _tree_inner(x, y):
  """``(X X^T, Y Y^T, X Y^T)``, each ``[k, k]``, of two pytrees whose leaves
  are ``[k, ...]`` (summed over leaves: a global reduction when sharded)."""
  def inner(p, q):
    out = 0.
    for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
      axes = tuple(range(1, u.ndim))
      out = out + jnp.tensordot(u, v, axes=(axes, axes))
    return out
  return inner(x, x), inner(y, y), inner(x, y)


def _principal_angles_from_gram(gaa, gbb, gab):
  """`principal_angles` of row spaces known by their inner products: the
  singular values of ``La^-1 Gab Lb^-T`` (``Gaa = La La^T``, Cholesky)."""
  la, lb = np.linalg.cholesky(gaa), np.linalg.cholesky(gbb)
  m = np.linalg.solve(la, np.linalg.solve(lb, gab.T).T)
  cosines = np.linalg.svd(m, compute_uv=False)
  return np.arccos(np.clip(cosines, 0.0, 1.0))


def subspace_tracking(previous, current, gradient, k):
  """The snapshot metrics of the top eigenspace over training.

  Args:
    previous: the previous snapshot's `SpectrumResult` (kept basis) or None.
    current: this snapshot's `SpectrumResult` (kept basis).
    gradient: this snapshot's full-batch gradient ``[dim]``.
    k: subspace dimension (the paper: the number of classes).

  Returns:
    dict (JSON-ready): ``overlap`` (mean squared cosine of the principal
    angles with the previous top-k space), ``min_cosine``,
    ``gradient_fraction_previous`` (``||P_prev g||^2 / ||g||^2``) and
    ``gradient_fraction_current``; the first three are None without a
    previous snapshot.

  Raises:
    ValueError: as `subspace_overlap` and `SpectrumResult.subspace_fraction`
      (a zero gradient, one of another size, `k` out of range).

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> current = sd.slq(lambda v: d * v, 10, order=10, keep_vecs=True)
    >>> gradient = np.eye(10)[9]             # along the top eigenvector
    >>> metrics = sd.subspace_tracking(None, current, gradient, k=1)
    >>> round(metrics['gradient_fraction_current'], 4), metrics['overlap']
    (1.0, None)
  """
  out = {'gradient_fraction_current': current.subspace_fraction(gradient, k),
         'overlap': None, 'min_cosine': None,
         'gradient_fraction_previous': None}
  if previous is not None:
    angles = subspace_overlap(previous, current, k)
    out.update(overlap=float(np.mean(np.cos(angles) ** 2)),
               min_cosine=float(np.cos(angles.max())),
               gradient_fraction_previous=previous.subspace_fraction(
                   gradient, k))
  return out


@functools.lru_cache(maxsize=function_keys.MAX_FUNCTIONS)
def _vmapped(matvec):
  """One compiled batched product per function object (a new `jit` of a new
  `vmap` at every call compiled anew each time)."""
  return jax.jit(jax.vmap(matvec))


def _batched_products(matvec, vectors, chunk):
  """``A x`` for the rows of ``vectors [k, n]``, `chunk` rows per call."""
  if getattr(matvec, 'accepts_batches', False):
    apply = matvec
  else:
    apply = _vmapped(matvec)
  out = [np.asarray(apply(jnp.asarray(vectors[i:i + chunk])), np.float64)
         for i in range(0, vectors.shape[0], chunk)]
  return np.concatenate(out)


DISTRIBUTIONS = ('rademacher', 'gaussian')


def _probes(rng, shape, distribution):
  """Random probe vectors: Rademacher (+-1) or standard normal entries."""
  if distribution == 'rademacher':
    return rng.choice(np.array([-1.0, 1.0]), size=shape)
  return rng.standard_normal(shape)


def _hutchinson(matvec, q, r, rng, dtype, chunk, distribution):
  """``(mean, stderr)`` of `r` samples ``g^T (I - P) A (I - P) g``, ``P = Q
  Q^T``, ``q [dim, p]`` orthonormal. Rademacher ``g``: the variance of a
  sample of ``B = (I - P) A (I - P)`` is about ``2 (||B||_F^2 - sum_i
  B_ii^2)``, against ``2 ||B||_F^2`` for Gaussian ``g``, and a Hessian's
  diagonal carries much of its Frobenius norm."""
  g = _probes(rng, (r, q.shape[0]), distribution)
  g = g - (g @ q) @ q.T
  rest = np.sum(g * _batched_products(matvec, g.astype(dtype), chunk), axis=1)
  return rest.mean(), rest.std(ddof=1) / np.sqrt(r)


def _hutchpp(matvec, dim, num_products, rng, dtype, chunk, distribution):
  """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a third of the products
  find a range ``Q`` of ``A S``, a third give ``tr(Q^T A Q)``, a third are
  Hutchinson samples of the deflated rest."""
  s = num_products // 3
  r = num_products - 2 * s
  sketch = _probes(rng, (s, dim), distribution)
  q, _ = np.linalg.qr(_batched_products(matvec, sketch.astype(dtype),
                                        chunk).T)
  top = np.trace(q.T @ _batched_products(matvec, q.T.astype(dtype), chunk).T)
  rest, stderr = _hutchinson(matvec, q, r, rng, dtype, chunk, distribution)
  return top + rest, stderr


def _krylov_aware(matvec, dim, num_products, rng, dtype, chunk, distribution,
                  lanczos_kwargs):
  """One Lanczos run of ``num_products - r`` steps gives ``Q = V^T`` with
  ``tr(V A V^T) = tr(T)`` exactly (the top of the spectrum converges first);
  ``r = num_products // 5`` Hutchinson samples of the deflated rest, one
  product each."""
  r = max(2, num_products // 5)
  order = num_products - r
  run = lanczos.lanczos_draws(matvec, dim, order,
                              jax.random.key(int(rng.integers(2 ** 31))),
                              keep_vecs=True, **lanczos_kwargs)
  k = int(run.num_steps[0])
  usable = k if k < order else k - 1
  v = np.asarray(run.vecs[0, :usable], np.float64)        # A v_j known: j < k-1
  q, _ = np.linalg.qr(v.T)
  top = np.trace(run.tridiag[0, :usable, :usable])
  rest, stderr = _hutchinson(matvec, q, r, rng, dtype, chunk, distribution)
  return top + rest, stderr


def trace_estimate(matvec, dim, num_products, *, method='krylov', seed=0,
                   chunk=50, distribution='rademacher', **lanczos_kwargs):
  """The trace of a symmetric operator from `num_products` products.

  Args:
    matvec: ``[dim] -> [dim]`` (function or `get_hvp_fn` operator).
    dim: operator size.
    num_products: products to spend (>= 6 for 'hutch++', >= 4 for 'krylov').
    method: ``'krylov'`` (the default: one long Lanczos run deflates the top
      of the spectrum exactly, the rest are Hutchinson samples; best when a
      few outliers carry the trace, as for Hessians) or ``'hutch++'`` (a
      randomised range sketch deflates instead).
    seed: numpy seed of the random vectors.
    chunk: vectors per product call (bounds memory).
    distribution: ``'rademacher'`` (default: a sample's variance is never
      larger than with Gaussian probes, and smaller by what the diagonal
      carries) or ``'gaussian'`` probe vectors of the Hutchinson part (and
      of the Hutch++ sketch).
    **lanczos_kwargs: for 'krylov', passed to `lanczos_draws` (`precision`).

  Returns:
    ``(trace, stderr)``: the estimate and the standard error of its random
    part (the Hutchinson samples' spread over the square root of their
    number; the deflated part is exact given its space). It is a
    one-sigma error: about 68% of seeds fall within it, 95% within two
    (tests/test_estimators.py measures the coverage).

  Raises:
    ValueError: an unknown `method`, or too few products for it (or, for
      'krylov', more than the operator's size allows).

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 101.)             # diag(1, ..., 100): trace 5050
    >>> trace, stderr = sd.trace_estimate(lambda v: d * v, 100, 30)
    >>> abs(trace - 5050) < 3 * stderr
    True
  """
  num_products, dim = int(num_products), int(dim)
  if method not in ('hutch++', 'krylov'):
    raise ValueError(f"method: must be 'hutch++' or 'krylov', got {method!r}.")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f'distribution: must be one of {DISTRIBUTIONS}, got '
                     f'{distribution!r}.')
  least = 6 if method == 'hutch++' else 4
  if num_products < least:
    raise ValueError(f'num_products: must be >= {least} for {method!r}, got '
                     f'{num_products}.')
  rng = np.random.default_rng(seed)
  dtype = np.dtype(getattr(matvec, 'dtype', None) or jnp.result_type(float))
  if method == 'hutch++':
    trace, stderr = _hutchpp(matvec, dim, num_products, rng, dtype, chunk,
                             distribution)
  else:  # beyond `dim` steps the run breaks down: the trace is exact
    trace, stderr = _krylov_aware(matvec, dim, num_products, rng, dtype,
                                  chunk, distribution, lanczos_kwargs)
  return float(trace), float(stderr)
