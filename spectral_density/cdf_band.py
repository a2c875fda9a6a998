"""A-posteriori bounds on the spectral CDF from an SLQ run (Chen, Trogdon &
Ubaru, "Analysis of stochastic Lanczos quadrature for spectrum approximation",
ICML 2021).

The target is the cumulative empirical spectral measure ``Phi(x) = #{lambda_i
<= x} / n``. A draw with unit start vector ``v`` sees the weighted CESM
``Psi_v(x) = v^T 1[A <= x] v``, and Lanczos gives its Gauss quadrature rule:
nodes ``theta_1 < ... < theta_k`` (Ritz values), weights ``w_j``, whose CDF is
``G_v(x) = sum_{theta_j <= x} w_j``. Two facts bound ``Phi``:

1. Gauss quadrature interlacing (the Chebyshev-Markov-Stieltjes inequalities;
   the paper's a-posteriori bound uses that ``G_v`` and ``Psi_v`` cross
   ``2k - 1`` times): for ``theta_j <= x < theta_{j+1}``,

       sum_{i < j} w_i  <=  Psi_v(x)  <=  sum_{i <= j + 1} w_i,

   i.e. ``Psi_v`` lies between ``G_v`` shifted one node right and one node
   left. Deterministic, per draw. After a breakdown (``num_steps < order``, or
   ``order = dim``) the Krylov space is invariant and ``G_v = Psi_v``.
2. The sample average over ``n_v`` start vectors uniform on the sphere (the
   normalised Gaussian starts of ``start='gaussian'``): ``v^T P v`` for a
   projection ``P`` is a Beta variable, sub-Gaussian with variance proxy
   ``1 / (2 (n + 2))``, so for each fixed ``x`` (the paper's sample-average
   bound)

       P[ |Phi(x) - mean_v Psi_v(x)| > t ] <= eta   for
       t = sqrt(ln(2 / eta) / (n_v (n + 2))).

   ``Phi - mean_v Psi_v`` only changes at the ``n`` eigenvalues, so a union
   bound over them gives a band for all ``x`` at once with ``ln(2 n / eta)``
   (``uniform=True``; the paper's Wasserstein and KS bounds use the same
   ``ln(2 n / eta)``).

Together, with probability ``>= 1 - eta`` (``eta = 1 - level``):
``mean_v lower_v(x) - t <= Phi(x) <= mean_v upper_v(x) + t``. Rademacher
start vectors are not uniform on the sphere: fact 2 does not apply to them.
"""

from typing import NamedTuple

import numpy as np


class CDFBand(NamedTuple):
  """The SLQ spectral CDF and its bounds, each ``[grid_len]``."""
  cdf: np.ndarray     # mean over draws of the Gauss rules' CDFs
  lower: np.ndarray
  upper: np.ndarray
  grid: np.ndarray


def draw_bounds(nodes, weights, num_steps, dim, grid):
  """Per draw: the Gauss rule's CDF and the interlacing bounds (fact 1).

  Args:
    nodes, weights: ``[num_draws, order]``.
    num_steps: ``[num_draws]`` valid Lanczos steps.
    dim: operator size ``n``.
    grid: ``[grid_len]`` points.

  Returns:
    ``(cdf, lower, upper)``, each ``[num_draws, grid_len]``.
  """
  nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
  num_draws, order = nodes.shape
  grid = np.asarray(grid, np.float64)
  out = np.zeros((3, num_draws, grid.size))
  for d in range(num_draws):
    k = int(num_steps[d])
    valid = np.arange(order) < k
    idx = np.argsort(nodes[d, valid], kind='stable')
    theta, w = nodes[d, valid][idx], weights[d, valid][idx]
    cum = np.concatenate([[0.0], np.cumsum(w)])
    cum /= cum[-1]
    j = np.searchsorted(theta, grid, side='right')          # nodes <= x
    exact = k < order or k >= dim  # invariant Krylov space: G_v = Psi_v
    out[0, d] = cum[j]
    out[1, d] = cum[j] if exact else cum[np.maximum(j - 1, 0)]
    out[2, d] = cum[j] if exact else cum[np.minimum(j + 1, k)]
  return out[0], out[1], out[2]


def sampling_halfwidth(num_draws, dim, level=0.9, uniform=False):
  """``t`` of fact 2: ``sqrt(ln(2 / eta) / (n_v (n + 2)))``, with ``2 n /
  eta`` for a band that holds at every ``x`` at once."""
  eta = 1.0 - level
  count = 2.0 * dim if uniform else 2.0
  return float(np.sqrt(np.log(count / eta) / (num_draws * (dim + 2.0))))


def cdf_band(nodes, weights, num_steps, dim, level=0.9, grid=None,
             uniform=False, grid_len=2000):
  """The SLQ estimate of the spectral CDF and a band that holds it with
  probability ``>= level`` (module doc).

  Args:
    nodes, weights, num_steps, dim: as `draw_bounds`.
    level: ``1 - eta``, in (0, 1).
    grid: ``[grid_len]`` points; default the weighted nodes' range with 5% of
      its width on each side.
    uniform: the band holds at every point at once (else at each point).
    grid_len: points of the default grid.

  Returns:
    `CDFBand`.
  """
  if not 0 < level < 1:
    raise ValueError(f'level: must be in (0, 1), got {level}.')
  nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
  if grid is None:
    valid = np.arange(nodes.shape[1])[None] < np.asarray(num_steps)[:, None]
    low, high = nodes[valid].min(), nodes[valid].max()
    pad = 0.05 * max(high - low, abs(high), 1e-30)
    grid = np.linspace(low - pad, high + pad, grid_len)
  grid = np.asarray(grid, np.float64)
  if grid.ndim != 1:
    raise ValueError(f'grid: must be 1-D, got shape {grid.shape}.')
  cdf, lower, upper = draw_bounds(nodes, weights, num_steps, dim, grid)
  t = sampling_halfwidth(nodes.shape[0], dim, level, uniform)
  return CDFBand(cdf.mean(0), np.maximum(lower.mean(0) - t, 0.0),
                 np.minimum(upper.mean(0) + t, 1.0), grid)


class Estimate(float):
  """A float that carries its interval: ``lower``, ``upper`` (each a float)
  and ``level`` (the probability that the interval holds the quantity).

  It compares, formats and serialises as the point estimate; its repr and
  `as_dict` say the interval, so that it is not reported without it.
  """

  def __new__(cls, value, lower, upper, level):
    out = super().__new__(cls, value)
    out.lower, out.upper, out.level = float(lower), float(upper), float(level)
    return out

  def __getnewargs__(self):  # pickles with its interval
    return float(self), self.lower, self.upper, self.level

  def __repr__(self):
    return (f'{float(self):.6g} ({self.level:.0%} interval [{self.lower:.6g}, '
            f'{self.upper:.6g}])')

  def as_dict(self):
    """``{'value', 'lower', 'upper', 'level'}`` (JSON-ready)."""
    return {'value': float(self), 'lower': self.lower, 'upper': self.upper,
            'level': self.level}


def mass_below(nodes, weights, num_steps, dim, x, level=0.9):
  """``#{lambda_i < x} / n`` by SLQ, as an `Estimate` with the `cdf_band`
  interval at ``x`` (approached from below).

  The point estimate is the Gauss rules' weight on nodes below `x`. Near a
  bulk of eigenvalues it is not accurate: each draw puts the whole bulk on
  one or two nodes, and which side of `x` they fall on decides it; the
  interval, from the interlacing bounds of the nodes on either side of `x`
  plus the sampling bound, then says how little the run knows (e.g. [0.05,
  0.92] for the negative mass of a small transformer whose exact value was
  0.44).
  """
  below = np.nextafter(float(x), -np.inf)
  band = cdf_band(nodes, weights, num_steps, dim, level, grid=[below])
  return Estimate(band.cdf[0], band.lower[0], band.upper[0], level)
