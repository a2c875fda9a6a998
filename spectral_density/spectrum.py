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
import json
from typing import Optional

import jax
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
  """
  tridiag: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  num_steps: np.ndarray
  dim: int
  vecs: Optional[np.ndarray] = None

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

  def ritz_vectors(self, k, draw=None):
    """``[k, dim]`` unit Ritz vectors of the k largest Ritz values.

    Args:
      k: number of vectors.
      draw: which draw's basis; default the draw whose top Ritz value is
        largest.
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
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

  def subspace_fraction(self, vector, k):
    """``||P_k g||^2 / ||g||^2`` for the span of the top-k Ritz vectors.

    With `vector` the full-batch gradient this is the paper's gradient
    concentration in the outlier eigenspace.
    """
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
    """Writes an `.npz` (arrays) readable by `SpectrumResult.load`."""
    arrays = {f.name: getattr(self, f.name)
              for f in dataclasses.fields(self)
              if getattr(self, f.name) is not None}
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path):
    with np.load(path) as f:
      kw = {k: f[k] for k in f.files}
    kw['dim'] = int(kw['dim'])
    return cls(**kw)

  def to_json(self, k=10):
    return json.dumps(self.summary(k))


def slq(matvec, dim, *, order=90, num_draws=1, rng_key=None, **kwargs):
  """Stochastic Lanczos quadrature of a symmetric operator.

  Args:
    matvec: ``[dim] -> [dim]`` (function or `get_hvp_fn` operator).
    dim: operator size.
    order: Lanczos steps per draw (the paper: 90).
    num_draws: independent start vectors.
    rng_key: PRNG key; default ``jax.random.key(0)``.
    **kwargs: passed to `lanczos.lanczos_draws` (`draws_per_pass`,
      `precision`, `matmul_precision`, `start`, `basis`, `keep_vecs`, `tol`,
      `checkpoint_dir`, `checkpoint_every`, `progress`,
      `projection_masks`).

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


def hessian_spectrum(loss, params, dataset, *, order=90, num_draws=1,
                     rng_key=None, batch_size=None, curvature='hessian',
                     devices=None, dtype=None, accum_dtype=None,
                     precision=None, matmul_precision=None,
                     draws_per_pass=None, start='gaussian', basis='device',
                     reorth_passes=2, keep_vecs=False, tol=None,
                     checkpoint_dir=None, checkpoint_every=None,
                     progress=False, projection_masks=None):
  """The spectrum of the full-dataset curvature at `params`, in one call.

  The precision of the run is three knobs, one per concept (the table is in
  docs/guide/precision.md): `dtype` (the products), `precision` (the Lanczos
  recurrence) and `matmul_precision` (how float32 matmuls are computed).

  Args:
    loss: ``loss(params, batch)``, as `get_hvp_fn`.
    params: pytree of floating arrays, every entry a Hessian direction (as
      `get_hvp_fn`: integer leaves are refused; batch-norm statistics go
      through the loss).
    dataset: arrays with a leading example axis, a list of batches, a
      callable returning fresh batches, or a random-access source; as
      `get_hvp_fn`.
    order: Lanczos steps per draw (the paper: 90).
    num_draws: independent start vectors.
    rng_key: PRNG key (`jax.random.key(seed)`); default ``key(0)``.
    batch_size: examples per batch of an array dataset.
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    devices: the devices of the products; default all.
    dtype: the products' dtype (params cast to it); default the params' own,
      float32 for bfloat16 and float16 params.
    accum_dtype: the dtype of the sum over batches; default float64 under
      x64, else `dtype`.
    precision: the recurrence's dtype: ``'float32'``, ``'float64'`` (the
      products too), ``'mixed'`` (products in `dtype`, Lanczos in float64)
      or None (the products' dtype).
    matmul_precision: ``'highest'`` (default: full float32 products, loss,
      gradient and recurrence), ``'default'`` (JAX's reduced-precision
      default on TPU and NVIDIA GPUs) or a `jax.lax.DotAlgorithmPreset` name;
      float64 stays float64. Applies to the operator and the recurrence.
    draws_per_pass: draws computed together (memory); default all.
    start: ``'gaussian'`` or ``'rademacher'`` start vectors.
    basis: ``'device'``, ``'sharded'``, ``'host'`` or ``'none'``.
    reorth_passes: Gram-Schmidt passes per step.
    keep_vecs: keep the Lanczos bases in the result.
    tol: relative breakdown tolerance; default ``10 x eps`` of the products'
      dtype.
    checkpoint_dir: orbax checkpoints of the Lanczos state (resumable).
    checkpoint_every: steps between checkpoints and progress reports.
    progress: True prints a status line; a callable gets a dict.
    projection_masks: ``[num_draws, num_params]`` 0/1: Lanczos on diagonal
      blocks (see `lanczos_draws`).

  Returns:
    `SpectrumResult`.
  """
  hvp_fn, _, num_params = operators.get_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      devices=devices, dtype=dtype, accum_dtype=accum_dtype,
      matmul_precision=matmul_precision)
  return slq(hvp_fn, num_params, order=order, num_draws=num_draws,
             rng_key=rng_key, precision=precision,
             matmul_precision=matmul_precision,
             draws_per_pass=draws_per_pass, start=start, basis=basis,
             reorth_passes=reorth_passes, keep_vecs=keep_vecs, tol=tol,
             checkpoint_dir=checkpoint_dir,
             checkpoint_every=checkpoint_every, progress=progress,
             projection_masks=projection_masks)
