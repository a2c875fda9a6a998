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

import copy
import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
from jax import flatten_util
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
from spectral_density import precision as precision_lib
from spectral_density import sharded


@dataclasses.dataclass
class SpectrumResult:
  """Quadrature of `num_draws` Lanczos runs of order `order` on a `dim` operator.

  What `slq`, `hessian_spectrum` and `lanczos_draws` (through
  `from_lanczos`) give; every estimator below comes from it without further
  products. With kept bases (``keep_vecs=True``) and at least 2 draws, the
  trace and spectral sums are deflated, and `ritz_vectors`,
  `subspace_fraction` and `subspace_overlap` work.

  Attributes:
    tridiag: ``[num_draws, order, order]``.
    nodes: ``[num_draws, order]`` Gauss nodes (Ritz values), ascending.
    weights: ``[num_draws, order]`` Gauss weights, summing to 1 per draw.
    num_steps: ``[num_draws]`` valid Lanczos steps (``order`` unless breakdown).
    dim: operator size ``n`` (with `projection_masks`, the block's size).
    vecs: ``[num_draws, order, dim]`` Lanczos bases, or None.
    params_like: the parameter pytree's structure (leaves
      `jax.ShapeDtypeStruct`) when the operator is a model's curvature
      (`hessian_spectrum` keeps it), else None; lets `ritz_vectors` and
      `subspace_fraction` give and take parameter pytrees. Not saved.
    gram: ``[num_draws x order, num_draws x order]`` inner products of the
      draws' basis rows (`lanczos.LanczosResult.gram`), computed at the end
      of a run with a basis and >= 2 draws, before the bases are dropped:
      what the deflated trace and spectral sums need; None otherwise (they
      then use `vecs` when kept).
    sharded_vecs: the bases of a run on sharded parameters (``keep_vecs=True``
      on the sharded path), a pytree laid out like the parameters on their
      devices, leaves ``[num_draws, order, *leaf.shape]``; else None. Never
      gathered: `ritz_vectors` and `subspace_fraction` contract it on the
      devices. Not saved.

  Two results compare equal (``==``) when their arrays are equal.

  Raises:
    ValueError: `tridiag` not ``[num_draws, order, order]``, `nodes`,
      `weights` or `num_steps` shaped otherwise, or `dim` below 1.

  Example:
    The operator diag(1, ..., 10), order 8, 3 draws, bases kept (the
    examples of the methods use this `result`):

    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)
    >>> result = sd.slq(lambda v: d * v, 10, order=8, num_draws=3,
    ...                 keep_vecs=True)
    >>> result.num_draws, result.order, result.dim, result.nodes.shape
    (3, 8, 10, (3, 8))
    >>> round(result.lambda_max, 4), round(result.lambda_min, 4)
    (9.9999, 1.0)
  """
  tridiag: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  num_steps: np.ndarray
  dim: int
  vecs: Optional[np.ndarray] = None
  params_like: Optional[Any] = dataclasses.field(
      default=None, repr=False, compare=False, metadata={'saved': False})
  gram: Optional[np.ndarray] = None
  sharded_vecs: Optional[Any] = dataclasses.field(
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
    """From a `LanczosResult` (of `lanczos_draws`): its Gauss quadrature.

    Args:
      result: `LanczosResult` of a run on a `dim`-dimensional operator.
      dim: the operator's size.

    Returns:
      `SpectrumResult`; the run's `gram`, when present, gives the deflated
      estimators.

    Raises:
      ValueError: `dim` below 1, or `result`'s arrays of inconsistent shapes.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import spectral_density as sd
      >>> d = jnp.arange(1., 11.)
      >>> run = sd.lanczos_draws(lambda v: d * v, 10, 8, jax.random.key(0),
      ...                        num_draws=3, keep_vecs=True)
      >>> round(sd.SpectrumResult.from_lanczos(run, 10).lambda_max, 4)
      9.9999
    """
    tridiag = np.asarray(result.tridiag)
    nodes, weights = density_lib.tridiag_to_eigv(tridiag)
    gram = None if result.vecs is not None else result.gram
    return cls(tridiag, nodes, weights, np.asarray(result.num_steps),
               int(dim), result.vecs, gram=gram)

  @property
  def num_draws(self):
    """The number of draws (independent start vectors), an int.

    Example:
      >>> result.num_draws
      3
    """
    return self.tridiag.shape[0]

  @property
  def order(self):
    """Lanczos steps per draw (the tridiagonals' size), an int.

    Example:
      >>> result.order
      8
    """
    return self.tridiag.shape[1]

  def _valid(self):
    return np.arange(self.order)[None, :] < self.num_steps[:, None]

  def density(self, grid=None, sigma=None, **kwargs):
    """The smoothed spectral density: Gaussian kernels at the nodes, averaged
    over the draws.

    Args:
      grid: ``[grid_len]`` evaluation points; default a grid that holds every
        kernel.
      sigma: the kernel's standard deviation in eigenvalue units; the default
        follows the spectrum's width (`density.default_sigma`). A `sigma`
        below the grid spacing warns: the density would be spiky.
      **kwargs: `grid_len`, `normalize`, ...; see `eigv_to_density`.

    Returns:
      ``(density [grid_len], grid [grid_len])``, the density integrating to 1
      over the grid unless ``normalize=False``.

    Raises:
      ValueError, TypeError: `sigma` not finite and > 0, and the other checks
        of `eigv_to_density`.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import numpy as np
      >>> density, grid = result.density(sigma=0.1)
      >>> density.shape == grid.shape, round(float(np.trapezoid(density, grid)), 6)
      (True, 1.0)
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
    """Estimates of the `k` largest eigenvalues, descending.

    Per rank, the largest Ritz value over the draws (each is a lower bound of
    the eigenvalue of that rank).

    Args:
      k: how many, in ``[1, valid Lanczos steps]``.

    Returns:
      numpy array ``[k]``.

    Raises:
      TypeError: `k` not an int.
      ValueError: `k` outside ``[1, valid steps]``.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> result.top_eigenvalues(3).round(2)
      array([10.  ,  9.  ,  7.88])
    """
    k = self._check_k(k, int(self.num_steps.max()))
    ritz = np.where(self._valid(), self.nodes, -np.inf)
    top = -np.sort(-ritz, axis=1)[:, :k]
    return top.max(axis=0)

  @property
  def lambda_max(self):
    """The largest eigenvalue's estimate (the largest Ritz value), a float.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> round(result.lambda_max, 4)
      9.9999
    """
    return float(self.top_eigenvalues(1)[0])

  @property
  def lambda_min(self):
    """The smallest eigenvalue's estimate (the smallest valid Ritz value), a
    float.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> round(result.lambda_min, 4)
      1.0
    """
    return float(np.where(self._valid(), self.nodes, np.inf).min())

  def eigenvalue_ratio(self, k):
    """``lambda_1 / lambda_k``, the paper's outlier measure (k = classes).

    Args:
      k: the rank of the denominator, in ``[1, valid steps]``.

    Returns:
      float.

    Raises:
      TypeError, ValueError: as `top_eigenvalues`; ValueError also when the
        estimate of ``lambda_k`` is 0.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> round(result.eigenvalue_ratio(2), 3)      # exact: 10 / 9 = 1.111
      1.112
    """
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
    draws.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> round(result.trace, 3), result.trace_stderr < 1e-3   # exact: 55
      (55.0, True)

    The other draws' spaces span R^10, so the deflation covers the space and
    the trace is exact up to rounding. In general the rest of the space is
    a random sample, unbiased with the error `trace_stderr`. That error is
    the sampling error only: rounding adds up to about 5e-3 of the largest
    ``|eigenvalue|`` in float32 (a basis direction is kept down to a squared
    distance of 1e-3 to the others, `deflation.gram_noise`), about 1e-7 in
    float64.
    """
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

    Raises:
      ValueError: `sigma` not finite and > 0.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> float(result.negative_mass())           # a positive definite operator
      0.0
      >>> result.negative_mass(sigma=1.0) > 0       # kernels reach below 0
      True
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

  def ritz_vectors(self, k, draw=None, *, pytree=False):
    """Unit Ritz vectors of the `k` largest Ritz values of one draw.

    Args:
      k: number of vectors, in ``[1, the draw's valid steps]``.
      draw: which draw's basis; default the draw whose top Ritz value is
        largest.
      pytree: give the vectors as one parameter pytree whose leaves have a
        leading axis ``[k, *leaf.shape]`` (needs `params_like`, which
        `hessian_spectrum` keeps); default a ``[k, dim]`` array. A run on
        sharded parameters (`sharded_vecs`) gives only pytrees, computed
        on the devices and laid out like the parameters.

    Returns:
      numpy array ``[k, dim]``, rows in descending order of their Ritz values;
      with ``pytree=True`` a parameter pytree of ``[k, *leaf.shape]`` leaves.

    Raises:
      ValueError: the basis was not kept (``keep_vecs=False``), `draw` outside
        ``[0, num_draws)``, or `k` out of range; ``pytree=True``
        without `params_like`; ``pytree=False`` with `sharded_vecs`.
      TypeError: `k` or `draw` not an int.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import numpy as np
      >>> vectors = result.ritz_vectors(2)
      >>> vectors.shape, int(np.abs(vectors[0]).argmax())   # the top one is e_10
      ((2, 10), 9)
    """
    if self.vecs is None and self.sharded_vecs is None:
      raise ValueError('ritz_vectors needs the Lanczos basis: run with '
                       'keep_vecs=True.')
    draw, top = self._top_ritz(k, draw)
    if self.sharded_vecs is not None:
      if not arguments.boolean('pytree', pytree):
        raise ValueError(
            'pytree: the basis of a run on sharded parameters stays on the '
            'devices; its Ritz vectors are parameter pytrees laid out like '
            'the parameters: pass pytree=True.')
      return sharded.basis_combination(self.sharded_vecs, draw,
                                       self._padded(top.T))
    steps = top.shape[0]
    vectors = top.T @ np.asarray(self.vecs[draw, :steps], np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if not arguments.boolean('pytree', pytree):
      return vectors
    flat_like, unravel = self._unravel('pytree')
    return jax.vmap(unravel)(vectors.astype(flat_like.dtype))

  def _top_ritz(self, k, draw):
    """``(draw, top [steps, k])``: the draw (default: the one whose top
    Ritz value is largest) and the eigenvectors of its valid tridiagonal
    for its `k` largest Ritz values, descending."""
    if draw is None:
      draw = int(np.argmax(np.where(self._valid(), self.nodes, -np.inf).max(1)))
    draw = arguments.positive_int('draw', draw, minimum=0)
    if draw >= self.num_draws:
      raise ValueError(f'draw: must be < num_draws = {self.num_draws}, got '
                       f'{draw}.')
    steps = int(self.num_steps[draw])
    k = self._check_k(k, steps)
    _, s = np.linalg.eigh(self.tridiag[draw, :steps, :steps])
    return draw, s[:, ::-1][:, :k]

  def _padded(self, coefficients):
    """``[k, steps]`` coefficients of basis rows as ``[k, order]`` (the rows
    past the valid steps are zero)."""
    out = np.zeros((coefficients.shape[0], self.order))
    out[:, :coefficients.shape[1]] = coefficients
    return out

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
      vector: ``[dim]`` real, nonzero (e.g. ``hvp_fn.gradient()``), or a
        parameter pytree (raveled in `jax.flatten_util.ravel_pytree` order, the
        order of `get_hvp_fn`).
      k: the subspace's dimension, as `ritz_vectors`.

    Returns:
      float in ``[0, 1]``.

    Raises:
      ValueError: `vector` zero, not finite, not ``[dim]``, a pytree of
        another structure; the basis not kept; `k` out of range.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import numpy as np
      >>> round(result.subspace_fraction(np.eye(10)[9], k=1), 4)   # e_10
      1.0
      >>> round(result.subspace_fraction(np.ones(10), k=1), 4)     # exact: 1/10
      0.0985
    """
    if self.sharded_vecs is not None:
      return self._sharded_subspace_fraction(vector, k)
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

  def _sharded_subspace_fraction(self, vector, k):
    """`subspace_fraction` from `sharded_vecs`: ``B g``, ``B B^T`` and
    ``g . g`` on the devices, the rest (``k x order``) here."""
    if isinstance(vector, (np.ndarray, jax.Array)) and np.ndim(vector) == 1:
      flat_like, unravel = self._unravel('vector')   # all the parameters
      if np.shape(vector) != flat_like.shape:
        raise ValueError(f'vector: must have shape {flat_like.shape}, got '
                         f'{np.shape(vector)}.')
      vector = unravel(np.asarray(vector, flat_like.dtype))
    expected = jax.tree.structure(self.params_like)
    if jax.tree.structure(vector) != expected:
      raise ValueError(f'vector: a pytree of structure '
                       f'{jax.tree.structure(vector)}, not the parameters\' '
                       f'{expected}.')
    draw, top = self._top_ritz(k, None)
    coefficients = self._padded(top.T)              # [k, order]
    bg, gram, gg = sharded.basis_projection(self.sharded_vecs, draw, vector)
    if not np.isfinite(gg) or not np.all(np.isfinite(bg)):
      raise ValueError('vector: has a NaN or inf entry.')
    if gg == 0:
      raise ValueError('vector: is zero, so its fraction in a subspace is '
                       'undefined.')
    p = coefficients @ bg                           # V g
    vv = coefficients @ gram @ coefficients.T       # V V^T
    return float(p @ np.linalg.lstsq(vv, p, rcond=None)[0] / gg)

  # Estimators of issue 13 (see `estimators`): no further products.

  @functools.cached_property
  def _deflated(self):
    """`deflation.Deflation` from `gram` or kept bases, or None. Its pieces
    are computed on first use (``num_draws`` pivoted Cholesky
    factorisations of ``(num_draws - 1) x order`` rows)."""
    if self.num_draws < 2:
      return None
    if self.gram is not None:
      return deflation_lib.Deflation(self.tridiag, self.gram, self.num_steps,
                                     self.dim)
    if self.vecs is not None:
      return deflation_lib.Deflation(
          self.tridiag, deflation_lib.basis_gram(self.vecs), self.num_steps,
          self.dim)
    return None

  def _trace_samples(self):
    """``[num_draws]`` unbiased trace estimates."""
    if self._deflated is not None:
      return self._deflated.trace_samples
    return self.dim * np.asarray(self.tridiag[:, 0, 0], np.float64)

  @property
  def trace_stderr(self):
    """Standard error of `trace`, a float.

    Deflated (see `trace`): ``sqrt(sum_d var_d) / num_draws``, with each
    draw's variance given its deflation space estimated in closed form from
    the run (`deflation.trace_variances`), not from the spread of the
    draws' estimates, which has only ``num_draws - 1`` degrees of freedom
    and sees their correlation as less spread. So `trace` +- 2 `trace_stderr` holds the exact
    trace in about 95% of runs already at 2 draws (normalised Gaussian
    starts, the default; with Rademacher starts it is an upper bound). The
    correlation is still left out: at 8 draws it is 10-30% too small (the
    coverage measured in docs/guide/trace_and_error_bars.md). Plain Hutchinson
    (``basis='none'``): the spread of the per-draw estimates over
    ``sqrt(num_draws)``; use a Student-t quantile with ``num_draws - 1``
    degrees of freedom (12.7 for 95% at 2 draws, 3.18 at 4).

    Raises:
      ValueError: fewer than 2 draws.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> result.trace_stderr < 1e-3       # the deflation covers R^10
      True

    diag(1, ..., 100), where 3 draws of order 8 leave most of the space to
    sampling:

      >>> import jax.numpy as jnp
      >>> d = jnp.arange(1., 101.)
      >>> wide = sd.slq(lambda v: d * v, 100, order=8, num_draws=3)
      >>> abs(wide.trace - 5050) < 2 * wide.trace_stderr   # exact: 5050
      True
    """
    if self.num_draws < 2:
      raise ValueError('trace_stderr: needs num_draws >= 2, got 1.')
    if self._deflated is not None:
      return float(np.sqrt(np.sum(self._deflated.trace_variances)) /
                   self.num_draws)
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

    Returns:
      float.

    Raises:
      TypeError: `fn` cannot be called on an array of eigenvalues.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import numpy as np
      >>> exact = 385.0                              # sum of j^2
      >>> err = result.spectral_sum_stderr(np.square)
      >>> abs(result.spectral_sum(np.square) - exact) < 3 * err
      True
    """
    return float(np.mean(self._sum_samples(fn)))

  def spectral_sum_stderr(self, fn):
    """Standard error of `spectral_sum` from the spread over draws.

    Args:
      fn: as `spectral_sum`.

    Returns:
      float.

    Raises:
      ValueError: fewer than 2 draws.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import numpy as np
      >>> err = result.spectral_sum_stderr(np.square)   # sum of j^2: 385
      >>> abs(result.spectral_sum(np.square) - 385) < 3 * err
      True
    """
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

    Args:
      level: the band's confidence, in ``(0, 1)``.
      grid: ``[grid_len]`` evaluation points; default one spanning the nodes.
      uniform: a band that holds at all points at once (wider).

    Raises:
      ValueError: `level` outside ``(0, 1)``, or `grid` not 1-D.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> band = result.cdf_band(level=0.9)
      >>> bool((band.lower <= band.cdf).all() and (band.cdf <= band.upper).all())
      True
    """
    return cdf_band_lib.cdf_band(self.nodes, self.weights, self.num_steps,
                                 self.dim, level, grid, uniform)

  def effective_rank(self, z):
    """``sum_j lambda_j / (lambda_j + z)`` over the positive eigenvalues: the
    number of directions with curvature above `z` (the effective
    dimensionality of MacKay 1992 and Maddox, Benton & Wilson 2020).

    Args:
      z: the curvature scale, > 0.

    Returns:
      float in ``[0, dim]``.

    Raises:
      ValueError: `z` not > 0.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> exact = sum(j / (j + 1) for j in range(1, 11))   # 7.98
      >>> err = result.spectral_sum_stderr(lambda x: x / (x + 1))
      >>> abs(result.effective_rank(1.0) - exact) < 3 * err
      True
    """
    if not z > 0:
      raise ValueError(f'z: must be > 0, got {z}.')
    positive = lambda x: np.maximum(x, 0.0)
    return self.spectral_sum(lambda x: positive(x) / (positive(x) + z))

  def density_band(self, sigma, level=0.9, grid=None):
    """A pointwise confidence band of the smoothed density, from the spread over
    draws (not renormalised); see `estimators.density_band`.

    Args:
      sigma: the kernel's standard deviation in eigenvalue units.
      level: the band's confidence, in ``(0, 1)``.
      grid: ``[grid_len]`` evaluation points; default one that holds every
        kernel.

    Returns:
      ``(lower [grid_len], upper [grid_len], grid [grid_len])``.

    Raises:
      ValueError: `sigma` not finite and > 0, `level` outside ``(0, 1)``, or
        fewer than 2 draws.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> lower, upper, grid = result.density_band(sigma=0.5, level=0.9)
      >>> bool((lower <= upper).all()), lower.shape == grid.shape
      (True, True)
    """
    return estimators.density_band(self.nodes, self.weights, sigma, level,
                                   grid)

  def summary(self, k=10):
    """The scalar estimators, JSON-ready.

    The negative mass comes with its 90% interval
    (``negative_mass_interval``): alone it misleads when a bulk sits near 0;
    the trace with its standard error (two or more draws) and
    ``trace_deflated`` (whether the run's bases deflated it).

    Args:
      k: the rank of ``lambda_1 / lambda_k`` (capped at the fewest valid
        steps of any draw).

    Returns:
      dict: ``lambda_max``, ``lambda_min``, ``lambda_1/lambda_k``, ``trace``,
      ``negative_mass``, ``order``, ``num_draws``, ``dim``.

    Raises:
      TypeError, ValueError: `k` not a positive int.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> summary = result.summary(k=2)
      >>> summary['trace'] == result.trace, summary['trace_deflated']
      (True, True)
    """
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
    """Writes the arrays to an `.npz` file that `SpectrumResult.load` reads.

    Args:
      path: a file name or open file. Like `numpy.savez`, ``.npz`` is added to
        a name without it; `load` does the same, so ``save('x')`` and
        ``load('x')`` name one file, ``x.npz``.

    Returns:
      The file name written.

    Raises:
      OSError: the file cannot be written.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), 'spectrum.npz')
      >>> _ = result.save(path)
      >>> sd.SpectrumResult.load(path).lambda_max == result.lambda_max
      True
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
    """Reads a `SpectrumResult` written by `save`.

    Args:
      path: the file `save(path)` wrote (``.npz`` added as `save` adds it).

    Returns:
      `SpectrumResult`, with `vecs` if they were saved.

    Raises:
      OSError: the file cannot be read.
      ValueError: its arrays are not those of a `SpectrumResult`.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), 'spectrum.npz')
      >>> _ = result.save(path)
      >>> loaded = sd.SpectrumResult.load(path)
      >>> loaded.num_draws, loaded.vecs.shape
      (3, (3, 8, 10))
    """
    with np.load(_npz_path(path)) as f:
      kw = {k: f[k] for k in f.files}
    kw['dim'] = int(kw['dim'])
    return cls(**kw)

  def to_json(self, k=10):
    """`summary` as a JSON string.

    Args:
      k: as `summary`.

    Returns:
      str.

    Raises:
      TypeError, ValueError: as `summary`.

    Example:
    With `result` of the `SpectrumResult` example (diag(1, ..., 10), order 8,
    3 draws, kept bases):

      >>> import json
      >>> json.loads(result.to_json(k=2))['order']
      8
    """
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


def slq(matvec, dim=None, *, order=90, num_draws=1, rng_key=None, **kwargs):
  """Stochastic Lanczos quadrature of a symmetric operator.

  A `sharded.ShardedOperator` (from `get_hvp_fn` or `sharded_hvp_fn` on
  sharded parameters) runs `sharded_lanczos`: vectors and bases stay laid
  out like the parameters, and the result is the same `SpectrumResult`
  (with >= 2 draws the Gram matrix of the bases is computed on the devices,
  so the trace is deflated; `keep_vecs` keeps the bases there as
  `SpectrumResult.sharded_vecs`).

  Args:
    matvec: ``[dim] -> [dim]`` (function or `get_hvp_fn` operator), or a
      `sharded.ShardedOperator` (pytrees laid out like the parameters).
    dim: operator size; may be omitted for an operator that knows it (its
      `num_params`).
    order: Lanczos steps per draw (the paper: 90).
    num_draws: independent start vectors.
    rng_key: PRNG key; default ``jax.random.key(0)``.
    **kwargs: passed to `lanczos.lanczos_draws` (`draws_per_pass`,
      `precision`, `matmul_precision`, `start`, `basis`, `keep_vecs`, `tol`,
      `checkpoint_dir`, `checkpoint_every`, `progress`,
      `projection_masks`). A sharded operator takes `precision`, `start`,
      `basis` (``'device'`` or ``'sharded'``: the same sharded layout;
      ``'none'``), `reorth_passes`, `keep_vecs`, `tol`, `checkpoint_dir`,
      `checkpoint_every` and `matmul_precision`; the others are refused.

  Returns:
    `SpectrumResult`.

  Raises:
    TypeError: `matvec` not callable; and the checks of `lanczos_draws`
      (named in the message).
    ValueError: `dim` missing for a plain function, or not the sharded
      operator's size; an option the sharded path cannot honour
      (``basis='host'``, `draws_per_pass`, `progress`, `projection_masks`),
      named.
    FloatingPointError: a product returned a non-finite value.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 101.)             # diag(1, ..., 100)
    >>> result = sd.slq(lambda v: d * v, 100, order=20, num_draws=2)
    >>> round(result.lambda_max, 3), round(result.lambda_min, 3)  # 20 of 100 steps
    (99.992, 1.005)
  """
  if not callable(matvec):
    raise TypeError(f'matvec: must be callable [dim] -> [dim], got '
                    f'{type(matvec).__name__}.')
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  if isinstance(matvec, sharded.ShardedOperator):
    return _sharded_slq(matvec, dim, order=order, num_draws=num_draws,
                        rng_key=rng_key, **kwargs)
  if dim is None:
    if not isinstance(matvec, operators.Operator):
      raise ValueError('dim: the operator size is needed for a function '
                       '[dim] -> [dim].')
    dim = matvec.num_params
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


# Options of `lanczos_draws` that the sharded path refuses when set, with
# what they would take (the default each is compared against).
_SHARDED_REFUSED = {
    'draws_per_pass': (None, 'the draws run as one batch'),
    'progress': (False, 'the run is one compiled loop (checkpoint_every '
                 'reports nothing either)'),
    'projection_masks': (None, 'flat [num_draws, dim] masks have no '
                         'layout; use block_spectra, whose blocks are '
                         'groups of whole leaves'),
}


def _sharded_slq(op, dim=None, *, order, num_draws, rng_key, precision=None,
                 start='gaussian', basis='device', reorth_passes=2,
                 keep_vecs=False, tol=None, checkpoint_dir=None,
                 checkpoint_every=None, matmul_precision=None, **refused):
  """`slq` of a `sharded.ShardedOperator` (see `slq`)."""
  if dim is not None and dim != op.num_params:
    raise ValueError(f'dim: the sharded operator has {op.num_params} '
                     f'parameters, got dim={dim}.')
  reorth_passes = sharded_options(basis, reorth_passes, keep_vecs, refused)
  if matmul_precision is not None:
    op = copy.copy(op)
    op.matmul_precision = precision_lib.check_matmul_precision(
        matmul_precision)
  run = sharded.run_lanczos(
      op, order, rng_key, num_draws=num_draws, precision=precision,
      start=start, reorth_passes=reorth_passes, tol=tol,
      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
      keep_vecs=keep_vecs, gram=True)
  return sharded_result(run, op.num_params, sharded_params_like(op.params))


def sharded_options(basis, reorth_passes, keep_vecs, refused):
  """`reorth_passes` for the sharded path's `basis` (``'none'``: 0), after
  refusing what it cannot honour: ``basis='host'``, an unknown option, and
  the options of `_SHARDED_REFUSED` when set (`refused`: name -> value)."""
  for name, value in refused.items():
    if name not in _SHARDED_REFUSED:
      raise TypeError(f'{name}: not an option of slq.')
    default, why = _SHARDED_REFUSED[name]
    if value is not default and (default is None or value != default):
      raise ValueError(f'{name}: not available on sharded parameters ({why}); '
                       f'got {value!r}.')
  if basis not in lanczos.BASES:
    raise ValueError(f'basis must be one of {lanczos.BASES}, got {basis!r}.')
  if basis == 'host':
    raise ValueError("basis: 'host' is not available on sharded parameters "
                     '(the basis stays on the devices, laid out like the '
                     "parameters: use 'device').")
  if basis == 'none':
    if keep_vecs:
      raise ValueError("keep_vecs=True needs a basis: basis='device', not "
                       "'none'.")
    return 0
  return reorth_passes


def sharded_params_like(params):
  """`SpectrumResult.params_like` of sharded parameters: shape, dtype and
  layout of each leaf."""
  return jax.tree.map(lambda p: jax.ShapeDtypeStruct(
      p.shape, p.dtype, sharding=p.sharding), params)


def sharded_result(run, dim, params_like):
  """The `SpectrumResult` of a `sharded.ShardedLanczosResult` on an operator
  of size `dim` (with its `gram` and kept `basis`)."""
  tridiag = np.asarray(run.tridiag)
  nodes, weights = density_lib.tridiag_to_eigv(tridiag)
  return SpectrumResult(tridiag, nodes, weights, np.asarray(run.num_steps),
                        int(dim), gram=run.gram, params_like=params_like,
                        sharded_vecs=run.basis)


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

  Returns:
    `SpectrumResult` of the block, ``dim = sum(mask)``.

  Raises:
    ValueError: `mask` not 1-D, selecting no coordinate, or not as long as
      the kept bases' rows.

  Example:
    The block diag(1, 2, 3, 4) of diag(1, ..., 10), order 4 (its size), 3
    draws: its trace is 10, not the full operator's 55.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)
    >>> mask = jnp.arange(10) < 4
    >>> run = sd.lanczos_draws(lambda v: d * v, 10, 4, jax.random.key(0),
    ...                        num_draws=3, keep_vecs=True,
    ...                        projection_masks=jnp.tile(mask, (3, 1)) * 1.)
    >>> block = sd.block_result(run, mask)
    >>> block.dim, round(block.trace, 3), round(block.lambda_max, 3)
    (4, 10.0, 4.0)
  """
  keep = np.asarray(mask) > 0
  if keep.ndim != 1 or not keep.any():
    raise ValueError(f'mask: must be 1-D with at least one nonzero entry, '
                     f'got shape {keep.shape} with {int(keep.sum())}.')
  if run.vecs is not None and np.shape(run.vecs)[-1] != keep.size:
    raise ValueError(f'mask: must have the basis rows\' length '
                     f'{np.shape(run.vecs)[-1]}, got {keep.size}.')
  vecs = None if run.vecs is None else np.asarray(run.vecs)[..., keep]
  return SpectrumResult.from_lanczos(run._replace(vecs=vecs),
                                     int(keep.sum()))


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

  Parameters split over a mesh (`mesh_layout.is_sharded`: `jax.Array`s on
  `NamedSharding`s of one mesh, at least one leaf not replicated) run the
  sharded path (`get_hvp_fn`'s sharded operator, `sharded_lanczos`): every
  vector and the bases stay laid out like the parameters, and the result is
  the same `SpectrumResult`. With >= 2 draws the Gram matrix of the bases
  is computed on the devices, so `trace` is deflated as on the flat path;
  `keep_vecs` keeps the bases there (`SpectrumResult.sharded_vecs`), from
  which `ritz_vectors(k, pytree=True)` and `subspace_fraction` are
  computed on the devices, laid out like the parameters.

  Args:
    loss: ``loss(params, batch)``, as `get_hvp_fn`.
    params: pytree of floating arrays, every entry a Hessian direction (as
      `get_hvp_fn`: integer leaves are refused; batch-norm statistics go
      through the loss); or sharded over a mesh (see above).
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
    draws_per_pass: draws computed together (memory); default all (the
      only choice on sharded parameters).
    start: ``'gaussian'`` or ``'rademacher'`` start vectors.
    basis: ``'device'``, ``'sharded'``, ``'host'`` or ``'none'``; on sharded
      parameters ``'device'`` and ``'sharded'`` both mean the bases laid out
      like the parameters, and ``'host'`` is refused.
    reorth_passes: Gram-Schmidt passes per step.
    keep_vecs: keep the Lanczos bases in the result.
    tol: relative breakdown tolerance; default ``10 x eps`` of the products'
      dtype.
    checkpoint_dir: orbax checkpoints of the Lanczos state (resumable).
    checkpoint_every: steps between checkpoints and progress reports.
    progress: True prints a status line; a callable gets a dict (not on
      sharded parameters).
    projection_masks: ``[num_draws, num_params]`` 0/1: Lanczos on diagonal
      blocks (see `lanczos_draws`); not on sharded parameters (use
      `block_spectra`).

  Returns:
    `SpectrumResult` of ``[num_draws, order]`` nodes and weights, whose
    `ritz_vectors` and `subspace_fraction` also take parameter pytrees.

  Raises:
    ValueError, TypeError: a bad argument, named in the message (the checks
      of `get_hvp_fn` and `lanczos_draws`: a loss that is not scalar, integer
      parameters, a `batch_size` for a dataset that is not arrays, an
      unknown `curvature`, `precision` or `basis`, ...; on sharded
      parameters also an option it cannot honour: `devices`,
      `accum_dtype`, `draws_per_pass`, ``basis='host'``, `progress`,
      `projection_masks`).
    FloatingPointError: a product was not finite (the message names the
      Lanczos step and the draw).

  Example:
    A linear least-squares loss: its Hessian is ``X^T X / num_examples``,
    and order = the number of parameters gives its exact eigenvalues:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> x = np.array([[1., 0., 0.], [0., 2., 0.], [0., 0., 3.], [1., 1., 1.]])
    >>> loss = lambda p, batch: 0.5 * jnp.mean((batch @ p['w']) ** 2)
    >>> result = sd.hessian_spectrum(loss, {'w': jnp.zeros(3)}, x, order=3,
    ...                              batch_size=2)
    >>> np.sort(result.nodes[0]).round(3)
    array([0.41, 1.25, 2.59])
    >>> np.linalg.eigvalsh(x.T @ x / 4).round(3)
    array([0.41, 1.25, 2.59])

    Parameters split over the devices (FSDP): the same call. ``H = diag(1,
    ..., 8)``; order 8 gives it exactly, and the top Ritz vector is a
    parameter pytree laid out like the parameters:

    >>> import jax
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(np.array(jax.devices()), ('model',))  # 1, 2, 4 or 8 devices
    >>> params = {'w': jnp.zeros(8)}
    >>> params = jax.device_put(params, sd.fsdp_shardings(params, mesh, 'model'))
    >>> data = np.tile(np.arange(1., 9.), (4, 1))          # 4 examples of [8]
    >>> loss = lambda p, x: 0.5 * jnp.mean(x @ p['w'] ** 2)
    >>> result = sd.hessian_spectrum(loss, params, data, batch_size=2,
    ...                              order=8, num_draws=2, keep_vecs=True)
    >>> np.sort(result.nodes[0]).round(3)
    array([1., 2., 3., 4., 5., 6., 7., 8.])
    >>> round(result.trace, 3), result.summary()['trace_deflated']
    (36.0, True)
    >>> top = np.asarray(result.ritz_vectors(1, pytree=True)['w'])
    >>> top.shape, int(np.abs(top).argmax())
    ((1, 8), 7)
  """
  hvp_fn, _, num_params = operators.get_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      devices=devices, dtype=dtype, accum_dtype=accum_dtype,
      matmul_precision=matmul_precision)
  if isinstance(hvp_fn, sharded.ShardedOperator):
    return _sharded_slq(
        hvp_fn, order=order, num_draws=num_draws,
        rng_key=jax.random.key(0) if rng_key is None else rng_key,
        precision=precision, start=start, basis=basis,
        reorth_passes=reorth_passes, keep_vecs=keep_vecs, tol=tol,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
        draws_per_pass=draws_per_pass, progress=progress,
        projection_masks=projection_masks)
  result = slq(hvp_fn, num_params, order=order, num_draws=num_draws,
               rng_key=rng_key, precision=precision,
               matmul_precision=matmul_precision,
               draws_per_pass=draws_per_pass, start=start, basis=basis,
               reorth_passes=reorth_passes, keep_vecs=keep_vecs, tol=tol,
               checkpoint_dir=checkpoint_dir,
               checkpoint_every=checkpoint_every, progress=progress,
               projection_masks=projection_masks)
  # Kept so that Ritz vectors and gradients can be parameter pytrees.
  result.params_like = jax.tree.map(
      lambda p: jax.ShapeDtypeStruct(
          np.shape(p), getattr(p, 'dtype', None) or np.result_type(p)),
      params)
  return result
