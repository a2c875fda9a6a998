"""Stochastic Lanczos quadrature in one call, and the estimators of one run.

`slq(matvec, dim, ...)` works on any symmetric operator; `hessian_spectrum`
builds the dataset operator first. Both return a `SpectrumResult`, from which
the density and every estimator below come without further products.

Estimators and why they are computed as they are:

* top-k / lambda_min: Ritz values interlace, the k-th largest Ritz value of any
  draw is a lower bound of the k-th largest eigenvalue, so the best estimate is
  the maximum over draws (the minimum for the smallest).
* trace: ``n * E[v^T A v]`` for a unit Gaussian (or Rademacher) ``v``; ``v^T A
  v`` is ``T[0, 0]``, the first alpha, so it comes free. Whenever the run had
  a basis (every `basis` but ``'none'``) and >= 2 draws, the other draws'
  Krylov spaces deflate it first (`deflation.deflated_trace_samples`); spectral
  sums deflate the converged Ritz pairs of the same spaces
  (`deflation.deflated_sum_samples`). The run computes what these need (the
  Gram matrix of its bases, `gram`) before its bases are dropped.
* CDF band: Gauss quadrature interlacing per draw plus the sample-average
  bound over draws (Chen, Trogdon & Ubaru 2021; `cdf_band`).
* negative mass: the quadrature weight on negative nodes, with the CDF band's
  interval at 0 (`cdf_band.mass_below`); smoothed, the integral of the
  density below 0.

Every ``sigma`` (kernel width) is a standard deviation in eigenvalue units.
"""

import dataclasses
import functools
import inspect
import json
from typing import Optional

import jax
import numpy as np
from scipy import special
from scipy import stats

from spectral_density import arguments
from spectral_density import cdf_band as cdf_band_lib
from spectral_density import deflation as deflation_lib
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
    dim: operator size ``n`` (with `projection_masks`, the block's size).
    vecs: ``[num_draws, order, dim]`` Lanczos bases, or None.
    gram: ``[num_draws x order, num_draws x order]`` inner products of the
      draws' basis rows (`lanczos.LanczosResult.gram`), computed at the end
      of a run with a basis and >= 2 draws, before the bases are dropped:
      what the deflated trace and spectral sums need; None otherwise (they
      then use `vecs` when kept).
  """
  tridiag: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  num_steps: np.ndarray
  dim: int
  vecs: Optional[np.ndarray] = None
  gram: Optional[np.ndarray] = None

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
    """From a `lanczos.LanczosResult` (its `gram`, when present, gives the
    deflated estimators)."""
    tridiag = np.asarray(result.tridiag)
    nodes, weights = density_lib.tridiag_to_eigv(tridiag)
    gram = None if result.vecs is not None else result.gram
    return cls(tridiag, nodes, weights, np.asarray(result.num_steps),
               int(dim), result.vecs, gram)

  @property
  def num_draws(self):
    return self.tridiag.shape[0]

  @property
  def order(self):
    return self.tridiag.shape[1]

  def _valid(self):
    return np.arange(self.order)[None, :] < self.num_steps[:, None]

  def density(self, grid=None, sigma=None, **kwargs):
    """``(density [grid_len], grid [grid_len])``; see `eigv_to_density`.

    `sigma` is the Gaussian kernel's standard deviation in eigenvalue units;
    the default follows the spectrum's width (`density.default_sigma`). A
    `sigma` below the grid spacing warns: the density would be spiky.
    """
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
    """The trace, deflated by the other draws' Krylov spaces whenever the run
    had a basis (any `basis` but ``'none'``, kept or not) and >= 2 draws
    (`deflation.deflated_trace_samples`). With ``basis='none'`` or one draw
    it is plain Hutchinson with unit vectors, ``n * mean over draws of v^T A
    v``: unbiased, but a Hessian's few outliers make it 5-20% off at 10
    draws."""
    return float(np.mean(self._trace_samples()))

  def negative_mass(self, sigma=None, level=0.9):
    """The fraction of eigenvalues below 0, with an interval.

    Unsmoothed (the default) the estimate is the quadrature weight on
    negative nodes, which is not accurate when a bulk of eigenvalues sits
    near 0 (each draw puts it on one node, whose sign decides); the interval
    is `cdf_band`'s at 0 (`cdf_band.mass_below`), and holds the exact
    fraction with probability >= `level` (Gaussian starts). Smoothed, it is
    the integral below 0 of the density of kernel width `sigma`, with the
    Student-t interval of the draws (NaN with one draw).

    Args:
      sigma: kernel standard deviation in eigenvalue units; None: unsmoothed.
      level: the interval's probability, in (0, 1).

    Returns:
      `cdf_band.Estimate`: a float with ``.lower``, ``.upper``, ``.level``.
    """
    if sigma is None:
      return cdf_band_lib.mass_below(self.nodes, self.weights,
                                     self.num_steps, self.dim, 0.0, level)
    sigma = arguments.positive_float('sigma', sigma)
    if not 0 < level < 1:
      raise ValueError(f'level: must be in (0, 1), got {level}.')
    mass = np.sum(self.weights * special.ndtr(-self.nodes / sigma), axis=1)
    half = np.nan
    if self.num_draws >= 2:
      half = (stats.t.ppf(0.5 + level / 2, self.num_draws - 1) *
              np.std(mass, ddof=1) / np.sqrt(self.num_draws))
    value = float(np.mean(mass))
    return cdf_band_lib.Estimate(value, max(value - half, 0.0),
                                 min(value + half, 1.0), level)

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

  @functools.cached_property
  def _deflated(self):
    """`deflation.Deflation` from `gram` or kept bases, or None. Its pieces
    are computed on first use (``num_draws`` eigendecompositions of
    ``(num_draws - 1) x order`` rows)."""
    if self.num_draws < 2:
      return None
    if self.gram is not None:
      return deflation_lib.Deflation(self.tridiag, self.gram, self.num_steps,
                                     self.dim, self.tridiag.dtype)
    if self.vecs is not None:
      return deflation_lib.Deflation(
          self.tridiag, deflation_lib.basis_gram(self.vecs), self.num_steps,
          self.dim, self.vecs.dtype)
    return None

  def _trace_samples(self):
    """``[num_draws]`` unbiased trace estimates."""
    if self._deflated is not None:
      return self._deflated.trace_samples
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
    if self._deflated is not None:
      return deflation_lib.deflated_sum_samples(
          self.nodes, self.weights, self.dim, self._deflated.ritz_pairs, fn)
    return deflation_lib.spectral_sum_samples(self.nodes, self.weights,
                                              self.dim, fn)

  def spectral_sum(self, fn):
    """``tr f(A) = sum_j f(lambda_j)`` by quadrature, averaged over draws.

    With a basis (any `basis` but ``'none'``) and >= 2 draws, the converged
    Ritz pairs of the other draws' Krylov spaces (the outliers) are summed
    exactly and the rest estimated (`deflation.deflated_sum_samples`), as
    for `trace`; else ``n sum_i w_i f(theta_i)`` per draw.

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
    smoothed density (not renormalised; kernel standard deviation `sigma` in
    eigenvalue units) from the spread over draws; see
    `estimators.density_band`."""
    return estimators.density_band(self.nodes, self.weights, sigma, level,
                                   grid)

  def summary(self, k=10):
    """A dict of the scalar estimators (JSON-ready). The negative mass comes
    with its 90% interval (``negative_mass_interval``): alone it misleads
    when a bulk sits near 0; the trace with its standard error (two or more
    draws) and ``trace_deflated`` (whether the run's bases deflated it)."""
    k = min(arguments.positive_int('k', k), int(self.num_steps.min()))
    negative = self.negative_mass()
    out = {
        'lambda_max': self.lambda_max, 'lambda_min': self.lambda_min,
        f'lambda_1/lambda_{k}': self.eigenvalue_ratio(k),
        'trace': self.trace,
        'trace_stderr': (self.trace_stderr if self.num_draws >= 2 else None),
        'trace_deflated': self._deflated is not None,
        'negative_mass': float(negative),
        'negative_mass_interval': [negative.lower, negative.upper],
        'negative_mass_level': negative.level,
        'order': self.order, 'num_draws': self.num_draws, 'dim': self.dim,
    }
    return out

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
      `precision`, `start`, `basis`, `keep_vecs`, `tol`, `checkpoint_dir`,
      `checkpoint_every`, `progress`).

  Returns:
    `SpectrumResult`.
  """
  if not callable(matvec):
    raise TypeError(f'matvec: must be callable [dim] -> [dim], got '
                    f'{type(matvec).__name__}.')
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  masks = kwargs.get('projection_masks')
  if masks is not None and not isinstance(masks, jax.core.Tracer):
    masks = np.asarray(masks)
    if masks.ndim == 2 and masks.shape[0] > 1 and np.any(masks != masks[:1]):
      raise ValueError(
          'projection_masks: slq estimates one spectrum, so every draw must '
          'have the same mask (one block); for several blocks use '
          'block_spectra, or lanczos_draws and block_result per block.')
  result = lanczos.lanczos_draws(matvec, dim, order, rng_key,
                                 num_draws=num_draws, **kwargs)
  if masks is None:
    return SpectrumResult.from_lanczos(result, dim)
  return block_result(result, masks[0])


def block_result(run, mask):
  """The `SpectrumResult` of a block ``P A P`` from a run whose draws were
  all projected on it (`projection_masks`).

  Its operator is the block, of size ``n_b = sum(mask)``: the trace and the
  spectral sums scale the quadrature by ``n_b``, not by the full dimension,
  and kept bases hold only the block's coordinates (``[num_draws, order,
  n_b]``). `blocks.block_spectra` uses the same rule.

  Args:
    run: `lanczos.LanczosResult` of the block's draws.
    mask: ``[dim]`` 0/1, the block's coordinates.
  """
  keep = np.asarray(mask) > 0
  vecs = None if run.vecs is None else np.asarray(run.vecs)[..., keep]
  return SpectrumResult.from_lanczos(run._replace(vecs=vecs),
                                     int(keep.sum()))


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
  return slq(hvp_fn, num_params, order=order, num_draws=num_draws,
             rng_key=rng_key, **lanczos_kwargs)
