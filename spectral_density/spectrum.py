"""Stochastic Lanczos quadrature in one call, and the estimators of one run.

`slq(matvec, dim, ...)` works on any symmetric operator; `hessian_spectrum`
builds the dataset operator first. Both return a `SpectrumResult`, from which
the density and every estimator below come without further products.

Estimators and why they are computed as they are:

* top-k / lambda_min: Ritz values interlace, the k-th largest Ritz value of any
  draw is a lower bound of the k-th largest eigenvalue, so the best estimate is
  the maximum over draws (the minimum for the smallest).
* trace: ``n * E[v^T A v]`` for a unit Gaussian (or Rademacher) ``v``; ``v^T A
  v`` is ``T[0, 0]``, the first alpha, so it comes free. With kept bases and
  >= 2 draws, the other draws' Krylov spaces deflate it first
  (`deflation.deflated_trace_samples`); spectral sums deflate the converged
  Ritz pairs of the same spaces (`deflation.deflated_sum_samples`).
* CDF band: Gauss quadrature interlacing per draw plus the sample-average
  bound over draws (Chen, Trogdon & Ubaru 2021; `cdf_band`).
* negative mass: the integral of the density below 0; unsmoothed it is the
  quadrature weight on negative nodes.
"""

import dataclasses
import functools
import inspect
import json
import os
from typing import Any, Optional

import jax
from jax import flatten_util
import numpy as np
from scipy import special

from spectral_density import arguments
from spectral_density import cdf_band as cdf_band_lib
from spectral_density import deflation
from spectral_density import density as density_lib
from spectral_density import estimators
from spectral_density import lanczos
from spectral_density import operators


@dataclasses.dataclass
class SpectrumResult:
  """Quadrature of `num_draws` Lanczos runs of order `order` on a `dim` operator.

  Attributes:
    tridiag: ``[num_draws, order, order]``.
    nodes: ``[num_draws, order]`` Gauss nodes (Ritz values), ascending.
    weights: ``[num_draws, order]`` Gauss weights, summing to 1 per draw.
    num_steps: ``[num_draws]`` valid Lanczos steps (``order`` unless breakdown).
    dim: operator size ``n``.
    vecs: ``[num_draws, order, dim]`` Lanczos bases, or None.
    params_like: the parameter pytree's structure (leaves
      `jax.ShapeDtypeStruct`) when the operator is a model's curvature
      (`hessian_spectrum` keeps it), else None; lets `ritz_vectors` and
      `subspace_fraction` give and take parameter pytrees. Not saved.

  Two results compare equal (``==``) when their arrays are equal.
  """
  tridiag: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  num_steps: np.ndarray
  dim: int
  vecs: Optional[np.ndarray] = None
  params_like: Optional[Any] = dataclasses.field(
      default=None, repr=False, compare=False, metadata={'saved': False})

  def __post_init__(self):
    self.dim = arguments.positive_int('dim', self.dim)
    self.tridiag = np.asarray(self.tridiag)
    if self.tridiag.ndim != 3 or (self.tridiag.shape[1] !=
                                  self.tridiag.shape[2]):
      raise ValueError('tridiag: must be [num_draws, order, order], got shape '
                       f'{self.tridiag.shape}.')
    draws, order = self.tridiag.shape[:2]
    for name, shape in (('nodes', (draws, order)), ('weights', (draws, order)),
                        ('num_steps', (draws,))):
      value = np.asarray(getattr(self, name))
      if value.shape != shape:
        raise ValueError(f'{name}: must have shape {shape} (from tridiag), '
                         f'got {value.shape}.')
      setattr(self, name, value)

  def __eq__(self, other):
    # The generated __eq__ compares tuples of arrays, whose truth value
    # raises; fields are compared as arrays here.
    if other.__class__ is not self.__class__:
      return NotImplemented
    return all(_same(getattr(self, f.name), getattr(other, f.name))
               for f in dataclasses.fields(self) if f.compare)

  @classmethod
  def from_lanczos(cls, result, dim):
    """From a `lanczos.LanczosResult`."""
    nodes, weights = density_lib.tridiag_to_eigv(result.tridiag)
    return cls(np.asarray(result.tridiag), nodes, weights,
               np.asarray(result.num_steps), int(dim), result.vecs)

  @property
  def num_draws(self):
    return self.tridiag.shape[0]

  @property
  def order(self):
    return self.tridiag.shape[1]

  def _valid(self):
    return np.arange(self.order)[None, :] < self.num_steps[:, None]

  def density(self, grid=None, sigma=None, **kwargs):
    """``(density [grid_len], grid [grid_len])``; see `eigv_to_density`."""
    return density_lib.eigv_to_density(self.nodes, self.weights, grid,
                                       sigma=sigma, **kwargs)

  def _check_k(self, k, steps):
    k = arguments.positive_int('k', k)
    if k > steps:
      raise ValueError(f'k: must be in [1, {steps}] (valid Lanczos steps), '
                       f'got {k}.')
    return k

  def top_eigenvalues(self, k):
    """``[k]`` estimates of the k largest eigenvalues, descending."""
    k = self._check_k(k, int(self.num_steps.max()))
    ritz = np.where(self._valid(), self.nodes, -np.inf)
    top = -np.sort(-ritz, axis=1)[:, :k]
    return top.max(axis=0)

  @property
  def lambda_max(self):
    return float(self.top_eigenvalues(1)[0])

  @property
  def lambda_min(self):
    return float(np.where(self._valid(), self.nodes, np.inf).min())

  def eigenvalue_ratio(self, k):
    """``lambda_1 / lambda_k``, the paper's outlier measure (k = classes)."""
    top = self.top_eigenvalues(k)
    if top[k - 1] == 0:
      raise ValueError(f'k: the estimate of lambda_{k} is 0, so lambda_1 / '
                       f'lambda_{k} is undefined.')
    return float(top[0] / top[k - 1])

  @property
  def trace(self):
    """The trace: deflated by the other draws' Krylov spaces when the bases
    are kept and there are >= 2 draws (`deflation.deflated_trace_samples`),
    else ``n * mean over draws of v^T A v`` (Hutchinson with unit vectors)."""
    return float(np.mean(self._trace_samples()))

  def negative_mass(self, sigma=None):
    """Integral of the density below 0, averaged over draws.

    Args:
      sigma: kernel width; None gives the unsmoothed quadrature's mass.
    """
    if sigma is None:
      mass = np.sum(self.weights * (self.nodes < 0), axis=1)
    else:
      sigma = arguments.positive_float('sigma', sigma)
      mass = np.sum(self.weights * special.ndtr(-self.nodes / sigma), axis=1)
    return float(np.mean(mass))

  def ritz_vectors(self, k, draw=None, *, pytree=False):
    """``[k, dim]`` unit Ritz vectors of the k largest Ritz values.

    Args:
      k: number of vectors.
      draw: which draw's basis; default the draw whose top Ritz value is
        largest.
      pytree: give the vectors as one parameter pytree whose leaves have a
        leading axis ``[k, *leaf.shape]`` (needs `params_like`, which
        `hessian_spectrum` keeps); default a ``[k, dim]`` array.
    """
    if self.vecs is None:
      raise ValueError('ritz_vectors needs the Lanczos basis: run with '
                       'keep_vecs=True.')
    if draw is None:
      draw = int(np.argmax(np.where(self._valid(), self.nodes, -np.inf).max(1)))
    draw = arguments.positive_int('draw', draw, minimum=0)
    if draw >= self.num_draws:
      raise ValueError(f'draw: must be < num_draws = {self.num_draws}, got '
                       f'{draw}.')
    steps = int(self.num_steps[draw])
    k = self._check_k(k, steps)
    _, s = np.linalg.eigh(self.tridiag[draw, :steps, :steps])
    top = s[:, ::-1][:, :k]
    vectors = top.T @ np.asarray(self.vecs[draw, :steps], np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if not arguments.boolean('pytree', pytree):
      return vectors
    flat_like, unravel = self._unravel('pytree')
    return jax.vmap(unravel)(vectors.astype(flat_like.dtype))

  def _unravel(self, name):
    """``(flat zeros [dim], unravel)`` of `params_like`."""
    if self.params_like is None:
      raise ValueError(f'{name}: this result does not know the parameter '
                       'structure (it comes from slq or load); use flat '
                       '[dim] vectors, or set params_like.')
    return flatten_util.ravel_pytree(jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), self.params_like))

  def subspace_fraction(self, vector, k):
    """``||P_k g||^2 / ||g||^2`` for the span of the top-k Ritz vectors.

    With `vector` the full-batch gradient this is the paper's gradient
    concentration in the outlier eigenspace.

    Args:
      vector: ``[dim]`` flat vector, or a parameter pytree (raveled in
        `jax.flatten_util.ravel_pytree` order, the order of `get_hvp_fn`).
      k: number of top Ritz vectors spanning the subspace.
    """
    if not isinstance(vector, (np.ndarray, jax.Array)):
      if self.params_like is not None:
        expected = jax.tree.structure(self.params_like)
        if jax.tree.structure(vector) != expected:
          raise ValueError(f'vector: a pytree of structure '
                           f'{jax.tree.structure(vector)}, not the '
                           f'parameters\' {expected}.')
      vector, _ = flatten_util.ravel_pytree(vector)
    g = arguments.real_array('vector', vector, (1,))
    if g.shape != (self.dim,):
      raise ValueError(f'vector: must have shape ({self.dim},), got '
                       f'{g.shape}.')
    if not np.any(g):
      raise ValueError('vector: is zero, so its fraction in a subspace is '
                       'undefined.')
    q, _ = np.linalg.qr(self.ritz_vectors(k).T)
    proj = q.T @ g
    return float(proj @ proj / (g @ g))

  # Estimators of issue 13 (see `estimators`): no further products.

  def _deflates(self):
    return self.vecs is not None and self.num_draws >= 2

  @functools.cached_property
  def _pool(self):
    """`deflation.PooledBases` of the kept bases, computed once."""
    return deflation.pooled_bases(self.tridiag, self.vecs, self.num_steps)

  @functools.cached_property
  def _ritz_pairs(self):
    """Per draw, the converged Ritz pairs of the other draws' bases."""
    return [deflation.converged_ritz_pairs(self._pool, d)
            for d in range(self.num_draws)]

  def _trace_samples(self):
    """``[num_draws]`` unbiased trace estimates."""
    if self._deflates():
      return deflation.deflated_trace_samples(self.tridiag, self._pool)
    return self.dim * np.asarray(self.tridiag[:, 0, 0], np.float64)

  @property
  def trace_stderr(self):
    """Standard error of `trace`: the spread of its per-draw estimates over
    the square root of the number of draws (needs >= 2 draws)."""
    if self.num_draws < 2:
      raise ValueError('trace_stderr: needs num_draws >= 2, got 1.')
    samples = self._trace_samples()
    return float(np.std(samples, ddof=1) / np.sqrt(self.num_draws))

  def _sum_samples(self, fn):
    if self._deflates():
      return deflation.deflated_sum_samples(self.nodes, self.weights,
                                            self.dim, self._ritz_pairs, fn)
    return deflation.spectral_sum_samples(self.nodes, self.weights, self.dim,
                                          fn)

  def spectral_sum(self, fn):
    """``tr f(A) = sum_j f(lambda_j)`` by quadrature, averaged over draws.

    With kept bases and >= 2 draws, the converged Ritz pairs of the other
    draws' Krylov spaces (the outliers) are summed exactly and the rest
    estimated (`deflation.deflated_sum_samples`), as for `trace`; else
    ``n sum_i w_i f(theta_i)`` per draw.

    Args:
      fn: vectorised ``f`` on eigenvalues, e.g. ``lambda x: np.log(x + d)``
        (a log-determinant) or ``np.square`` (the squared Frobenius norm).
    """
    return float(np.mean(self._sum_samples(fn)))

  def spectral_sum_stderr(self, fn):
    """Standard error of `spectral_sum` from the spread over draws."""
    if self.num_draws < 2:
      raise ValueError('spectral_sum_stderr: needs num_draws >= 2, got 1.')
    samples = self._sum_samples(fn)
    return float(np.std(samples, ddof=1) / np.sqrt(self.num_draws))

  def cdf_band(self, level=0.9, grid=None, uniform=False):
    """The spectral CDF ``#{lambda_i <= x} / n`` with an a-posteriori band.

    The band is Chen, Trogdon & Ubaru (2021)'s: per draw, the Gauss
    quadrature interlacing (Chebyshev-Markov-Stieltjes) inequalities bound
    the draw's weighted CDF between its quadrature CDF shifted one node each
    way; over the ``n_v`` draws, the sample-average bound adds ``t =
    sqrt(ln(2 / eta) / (n_v (n + 2)))`` (``ln(2 n / eta)`` with `uniform`),
    ``eta = 1 - level``. It holds with probability ``>= level`` at each
    point (at all points at once with `uniform`) for Gaussian start vectors
    (the default); see `cdf_band`.

    Returns:
      `cdf_band.CDFBand`: ``(cdf, lower, upper, grid)``.
    """
    return cdf_band_lib.cdf_band(self.nodes, self.weights, self.num_steps,
                                 self.dim, level, grid, uniform)

  def effective_rank(self, z):
    """``sum_j lambda_j / (lambda_j + z)`` over the positive eigenvalues: the
    number of directions with curvature above `z` (the effective
    dimensionality of MacKay 1992 and Maddox, Benton & Wilson 2020)."""
    if not z > 0:
      raise ValueError(f'z: must be > 0, got {z}.')
    positive = lambda x: np.maximum(x, 0.0)
    return self.spectral_sum(lambda x: positive(x) / (positive(x) + z))

  def density_band(self, sigma, level=0.9, grid=None):
    """``(lower, upper, grid)``: a pointwise `level` confidence band of the
    smoothed density (not renormalised) from the spread over draws; see
    `estimators.density_band`."""
    return estimators.density_band(self.nodes, self.weights, sigma, level,
                                   grid)

  def summary(self, k=10):
    """A dict of the scalar estimators (JSON-ready)."""
    k = min(arguments.positive_int('k', k), int(self.num_steps.min()))
    return {
        'lambda_max': self.lambda_max, 'lambda_min': self.lambda_min,
        f'lambda_1/lambda_{k}': self.eigenvalue_ratio(k),
        'trace': self.trace, 'negative_mass': self.negative_mass(),
        'order': self.order, 'num_draws': self.num_draws, 'dim': self.dim,
    }

  def save(self, path):
    """Writes the arrays to `path` as `.npz`, readable by `load(path)`.

    Like `numpy.savez`, adds ``.npz`` to a name without it; `load` does the
    same, so ``save('x')`` and ``load('x')`` name one file, ``x.npz``.

    Returns:
      The file name written.
    """
    path = _npz_path(path)
    arrays = {f.name: getattr(self, f.name)
              for f in dataclasses.fields(self)
              if f.metadata.get('saved', True) and
              getattr(self, f.name) is not None}
    np.savez(path, **arrays)
    return path

  @classmethod
  def load(cls, path):
    """The result `save(path)` wrote (``.npz`` added as `save` adds it)."""
    with np.load(_npz_path(path)) as f:
      kw = {k: f[k] for k in f.files}
    kw['dim'] = int(kw['dim'])
    return cls(**kw)

  def to_json(self, k=10):
    return json.dumps(self.summary(k))


def _npz_path(path):
  """`path` as `numpy.savez` names the file: ``.npz`` appended if missing."""
  if isinstance(path, (str, os.PathLike)):
    path = os.fspath(path)
    return path if path.endswith('.npz') else path + '.npz'
  return path  # an open file


def _same(a, b):
  """Field equality, arrays compared elementwise (shapes must agree)."""
  if a is None or b is None:
    return a is b
  if isinstance(a, (np.ndarray, jax.Array)) or isinstance(
      b, (np.ndarray, jax.Array)):
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
  return a == b


def slq(matvec, dim, *, order=90, num_draws=1, rng_key=None, **kwargs):
  """Stochastic Lanczos quadrature of a symmetric operator.

  Args:
    matvec: ``[dim] -> [dim]`` (function or `get_hvp_fn` operator).
    dim: operator size.
    order: Lanczos steps per draw (the paper: 90).
    num_draws: independent start vectors.
    rng_key: PRNG key; default ``jax.random.key(0)``.
    **kwargs: passed to `lanczos.lanczos_draws` (`draws_per_pass`,
      `precision`, `start`, `basis`, `keep_vecs`, `tol`, `checkpoint_dir`,
      `checkpoint_every`, `progress`).

  Returns:
    `SpectrumResult`.
  """
  if not callable(matvec):
    raise TypeError(f'matvec: must be callable [dim] -> [dim], got '
                    f'{type(matvec).__name__}.')
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  result = lanczos.lanczos_draws(matvec, dim, order, rng_key,
                                 num_draws=num_draws, **kwargs)
  return SpectrumResult.from_lanczos(result, dim)


def _option_names(fn, positional):
  return set(inspect.signature(fn).parameters) - set(positional)


def hessian_spectrum(loss, params, dataset, *, order=90, num_draws=1,
                     rng_key=None, **kwargs):
  """The spectrum of the full-dataset curvature at `params`, in one call.

  Args:
    loss, params, dataset: as `get_hvp_fn`.
    order, num_draws, rng_key: as `slq`.
    **kwargs: every option of `get_hvp_fn` (`batch_size`, `curvature`,
      `devices`, `dtype`, `accum_dtype`, ...) goes to it, every option of
      `lanczos_draws` (`precision`, `basis`, `keep_vecs`, ...) to `slq`.

  Returns:
    `SpectrumResult`.

  Raises:
    TypeError: an option that neither `get_hvp_fn` nor `lanczos_draws` takes.
  """
  operator_names = _option_names(operators.get_hvp_fn,
                                 ('loss', 'params', 'dataset'))
  lanczos_names = _option_names(lanczos.lanczos_draws,
                                ('matvec', 'dim', 'order', 'rng_key',
                                 'num_draws'))
  for name in kwargs:
    if name not in operator_names | lanczos_names:
      raise TypeError(f'{name}: not an option of get_hvp_fn '
                      f'({", ".join(sorted(operator_names))}) nor of '
                      f'lanczos_draws ({", ".join(sorted(lanczos_names))}).')
  operator_kwargs = {k: v for k, v in kwargs.items() if k in operator_names}
  lanczos_kwargs = {k: v for k, v in kwargs.items() if k not in operator_names}
  hvp_fn, _, num_params = operators.get_hvp_fn(loss, params, dataset,
                                               **operator_kwargs)
  result = slq(hvp_fn, num_params, order=order, num_draws=num_draws,
               rng_key=rng_key, **lanczos_kwargs)
  # Kept so that Ritz vectors and gradients can be parameter pytrees.
  result.params_like = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(
          np.shape(p), getattr(p, 'dtype', None) or np.result_type(p)),
      params)
  return result
