"""Deflated traces and spectral sums from the Krylov bases of a run.

With full reorthogonalisation, ``A V_b^T = V_b^T T_b`` holds column by column
for the first ``m - 1`` Lanczos vectors of draw ``b`` (the last one needs the
next, unstored vector). So for any subspace ``S`` spanned by such vectors of
the other draws, ``Q^T A Q`` is known exactly from the Gram matrix of the
bases and the tridiagonals, with no further product (`PooledBases`).

Trace (`deflated_trace_samples`):

    tr(A) = tr(Q^T A Q) + tr((I - P) A (I - P)),     P = Q Q^T.

The first term carries the outliers (which hold most of a Hessian's trace)
exactly; the second is a Hutchinson sample ``n u^T (I - P) A (I - P) u`` from
the start vector ``u`` of the left-out draw, which is independent of ``S``:
``A u = alpha_0 u + beta_0 v_1`` is in the draw's own tridiagonal. Leaving
each draw out in turn gives ``num_draws`` unbiased estimates, whose mean is
the trace (as Hutch++ and the Krylov-aware estimators of Chen & Hallman 2023
split the products between a deflation space and Hutchinson samples, here
the same products serve both).

Its standard error (`trace_variances`) is not the spread of those estimates:
with few draws that spread has few degrees of freedom, and the estimates are
positively correlated (each draw's Krylov space deflates the others; one that
caught a direction well leaves less of it to the others). Instead each
sample's variance given its space is estimated in closed form: for ``u``
uniform on the unit sphere (a normalised Gaussian start) and ``B = (I - P) A
(I - P)``,

    Var(n u^T B u) = 2 n / (n + 2) (tr(B^2) - tr(B)^2 / n),

and ``n ||B u||^2`` is an unbiased estimate of ``tr(B^2)``, again from the
Gram matrix (``B u`` lies in the pooled bases). For a normalised Rademacher
start the same formula is an upper bound, up to a factor ``(n + 2) / n``.
The correlation between the samples is still left out: measured, it makes
the standard error up to 10-30% too small at 8 draws, less with fewer
(docs/guide/trace_and_error_bars.md).

The space ``S`` is spanned by the rows a pivoted Cholesky factorisation of
the other draws' Gram matrix keeps (`_left_out_space`): a row is dropped when
its squared distance to the span of the kept ones (its pivot) is below
``tol = sqrt(delta)``, with ``delta`` the Gram matrix's own error, measured
on the draws' diagonal blocks (``max |G_bb - I|``; `gram_noise`) and rounded
up to a power of 10. A kept direction of pivot ``g`` carries that error
amplified by about ``1 / g``, so ``sqrt(delta)`` balances it against the
deflation lost (float64: tol 1e-7; float32 with its Gram matrix computed in
float32: 1e-3). In float32 that error is the Gram matrix's rounding, not the
bases' loss of orthogonality: a float64 Gram matrix of the same float32 bases
gave samples 100-1000 times closer to the exact ones at the same tolerance.

Spectral sums ``tr f(A)`` (`deflated_sum_samples`): ``u^T (I - P) f(A) (I -
P) u`` is not in the run for a nonlinear ``f``, so the deflation keeps only
the converged Ritz pairs ``(theta_j, y_j)`` of ``Q^T A Q`` (residual ``||A y_j
- theta_j y_j||``, exact from the Gram matrix, below ``residual_rtol x
max |theta|``): the outliers. Sample ``d`` is

    sum_j f(theta_j) + n (sum_i w_di f(theta_di) - sum_j (y_j . u_d)^2 f(theta_j))

(the deflated part exactly, the rest from draw ``d``'s quadrature less the
deflated directions). ``E[n (y . u)^2] = 1`` for a unit ``y`` independent of
``u``, so each sample has the expectation of the plain quadrature estimate,
whichever pairs are deflated; the deflated pairs only remove the outliers'
share of the variance (a control variate).
"""

import functools
from typing import NamedTuple

import numpy as np
from scipy import linalg

# The Gram matrix's error is never taken below this (float64 rounding of a
# unit vector's squared norm).
MIN_GRAM_NOISE = 1e-15


def gram_noise(gram, usable, order):
  """The error of a pooled Gram matrix: ``max |G_bb - I|`` over the draws'
  diagonal blocks (each draw's basis is orthonormal up to rounding), at
  least `MIN_GRAM_NOISE`.

  Args:
    gram: ``[D m, D m]``, finite on the diagonal blocks.
    usable: per draw, its number of usable rows.
    order: ``m``.

  Returns:
    float. Measured: 2e-15 for a float64 run of 387 parameters, 1e-6 for a
    float32 run whose Gram matrix was computed in float32, 3e-7 for the
    float64 Gram matrix of its kept float32 bases.
  """
  noise = MIN_GRAM_NOISE
  for b, k in enumerate(usable):
    block = gram[b * order:b * order + k, b * order:b * order + k]
    noise = max(noise, float(np.max(np.abs(block - np.eye(k)), initial=0.0)))
  return noise


class PooledBases(NamedTuple):
  """The Gram matrix of all draws' bases and what ``A`` does to them.

  Attributes:
    gram: ``[D m, D m]`` inner products of the basis rows (draw-major); 0
      between draws that are not `linked`.
    blocks: ``[D m, D m]`` block-diagonal tridiagonals: ``A x_i = sum_l
      blocks[l, i] x_l`` for every usable row ``i``.
    usable: per draw, the rows ``j`` with ``A v_j`` inside the stored basis.
    order, dim: ``m`` and ``n``.
    linked: ``[D, D]`` whether the inner products of two draws' bases are
      known (draws of one pass; every pair when the bases are kept).
    tol: the pivot tolerance of `_left_out_space`: the square root of
      `gram_noise` rounded up to a power of 10.
  """
  gram: np.ndarray
  blocks: np.ndarray
  usable: list
  order: int
  dim: int
  linked: np.ndarray
  tol: float

  @property
  def num_draws(self):
    return len(self.usable)


def _gram(rows, chunk=1 << 16):
  """``rows @ rows.T`` in float64, `chunk` columns at a time (a float32 basis
  of a large model is never copied whole)."""
  gram = np.zeros((rows.shape[0], rows.shape[0]))
  for i in range(0, rows.shape[1], chunk):
    part = np.asarray(rows[:, i:i + chunk], np.float64)
    gram += part @ part.T
  return gram


def basis_gram(vecs):
  """``[D m, D m]`` Gram matrix of kept bases ``vecs [D, m, n]``."""
  num_draws, order, dim = vecs.shape
  return _gram(np.reshape(vecs, (num_draws * order, dim)))


def pooled_bases(tridiag, gram, num_steps, dim):
  """`PooledBases` of a run: ``tridiag [D, m, m]``, ``gram [D m, D m]``
  (`basis_gram`, or `LanczosResult.gram`: NaN between draws of different
  passes), ``num_steps [D]`` (>= 2 draws), operator size `dim`."""
  num_draws, order = tridiag.shape[:2]
  if num_draws < 2:
    raise ValueError('num_draws: deflation needs >= 2 draws (one deflates, '
                     'the other samples), got 1.')
  gram = np.asarray(gram, np.float64)
  linked = np.isfinite(gram[::order, ::order])
  gram = np.where(np.isfinite(gram), gram, 0.0)
  blocks = np.zeros((num_draws * order, num_draws * order))
  for b in range(num_draws):
    k = int(num_steps[b])
    blocks[b * order:b * order + k, b * order:b * order + k] = (
        tridiag[b, :k, :k])
  # A breakdown (k < order) or a full run (k = dim: the basis spans the
  # space, the next residual is 0) leaves ``A v_{k-1}`` in the basis too.
  usable = [int(k) if k < order or k >= dim else int(k) - 1
            for k in num_steps]
  # The noise rounded up to a power of 10: runs that differ only in their
  # summation order then keep the same rows.
  noise = 10.0 ** np.ceil(np.log10(gram_noise(gram, usable, order)))
  tol = float(np.sqrt(noise))
  return PooledBases(gram, blocks, usable, order, int(dim), linked, tol)


class LeftOutSpace(NamedTuple):
  """The deflation space of one left-out draw: ``Q = X[rows]^T L^{-T}``.

  Attributes:
    rows: ``[p]`` the kept basis rows (of the other linked draws).
    lower: ``[p, p]`` lower Cholesky factor ``L`` of ``gram[rows, rows]``.
  """
  rows: np.ndarray
  lower: np.ndarray

  @property
  def coef(self):
    """``[p, p]`` ``L^{-T}``: ``Q = X[rows]^T coef`` is orthonormal."""
    if self.rows.size == 0:
      return np.zeros((0, 0))
    return linalg.solve_triangular(self.lower, np.eye(self.rows.size),
                                   lower=True).T

  def inverse_gram(self):
    """``[p, p]`` ``gram[rows, rows]^{-1}``: ``P = X[rows]^T inverse
    X[rows]``."""
    if self.rows.size == 0:
      return np.zeros((0, 0))
    inverse, info = linalg.lapack.dpotri(self.lower, lower=1)
    if info != 0:
      raise np.linalg.LinAlgError(f'dpotri failed (info {info}).')
    inverse = np.tril(inverse)
    return inverse + np.tril(inverse, -1).T


def _left_out_space(pool, d):
  """`LeftOutSpace` of draw `d`: the usable rows of every draw linked to `d`
  but `d`, those a pivoted Cholesky factorisation of their Gram matrix keeps
  above the pivot `pool.tol` (no rows when no other draw is linked). It
  depends on the other draws only, never on draw `d`'s start vector."""
  rows = np.concatenate([b * pool.order + np.arange(pool.usable[b])
                         for b in range(pool.num_draws)
                         if b != d and pool.linked[d, b]] +
                        [np.zeros(0, int)]).astype(int)
  if rows.size == 0:
    return LeftOutSpace(rows, np.zeros((0, 0)))
  factor, piv, rank, _ = linalg.lapack.dpstrf(
      pool.gram[np.ix_(rows, rows)], tol=pool.tol, lower=1)
  rank = int(rank)
  return LeftOutSpace(rows[piv[:rank] - 1], np.tril(factor[:rank, :rank]))


class TraceSample(NamedTuple):
  """One leave-one-out trace sample (module doc).

  Attributes:
    estimate: ``tr(Q^T A Q) + n u^T B u``, unbiased for the trace.
    deflated: ``tr(Q^T A Q)``, exact on the space.
    square_trace: ``n ||B u||^2``, unbiased for ``tr(B^2)``.
  """
  estimate: float
  deflated: float
  square_trace: float


def deflated_trace_samples(tridiag, pool):
  """``[num_draws]`` leave-one-out deflated trace estimates (module doc).

  Args:
    tridiag: ``[num_draws, order, order]``.
    pool: `pooled_bases` of the run.

  Returns:
    ``[num_draws]`` float64, each an unbiased estimate of the trace.
  """
  gram_a = pool.gram @ pool.blocks                        # rows . A rows
  return np.array([
      _trace_sample(tridiag, pool, gram_a, d, _left_out_space(pool, d))
      .estimate for d in range(pool.num_draws)])


def _trace_sample(tridiag, pool, gram_a, d, space):
  """Draw `d`'s `TraceSample`, given ``gram_a = gram @ blocks`` and its
  `_left_out_space`.

  Vectors are coefficients over all basis rows ``X`` (``x = X^T z``, ``|x|^2
  = z^T gram z``); ``A X^T z = X^T blocks z`` for ``z`` on usable rows.
  """
  rows, u = space.rows, d * pool.order                    # u: start vector
  inverse = space.inverse_gram()
  a_rows = gram_a[np.ix_(rows, rows)]
  a_rows = 0.5 * (a_rows + a_rows.T)                      # X_R A X_R^T
  deflated = float(np.sum(inverse * a_rows))              # tr(Q^T A Q)
  y = inverse @ pool.gram[rows, u]                        # P u = X_R^T y
  quad = (tridiag[d, 0, 0] - 2 * y @ gram_a[rows, u] +    # u^T B u
          y @ a_rows @ y)
  r = np.zeros(pool.gram.shape[0])
  r[u] = 1.0
  r[rows] -= y                                            # (I - P) u
  b_u = pool.blocks @ r                                   # A (I - P) u
  b_u[rows] -= inverse @ (pool.gram[rows] @ b_u)          # B u
  # A space of `dim` rows is the whole space: B = 0, nothing is sampled (a
  # squared norm from the Gram matrix would be rounding, eps x the squared
  # coefficients).
  square = 0.0 if rows.size >= pool.dim else float(b_u @ pool.gram @ b_u)
  return TraceSample(deflated + pool.dim * float(quad), deflated,
                     pool.dim * max(square, 0.0))


def trace_variances(samples, dim):
  """``[num_draws]`` estimated variances of the trace samples given their
  spaces (module doc): ``2 n / (n + 2) (tr(B^2) - tr(B)^2 / n)``, with
  ``tr(B^2)`` from each sample and ``tr(B)`` the mean trace less the
  sample's deflated part; at least 0.

  Args:
    samples: ``[num_draws]`` `TraceSample` s.
    dim: operator size ``n``.

  Returns:
    ``[num_draws]`` float64.
  """
  trace = np.mean([s.estimate for s in samples])
  rest = np.array([trace - s.deflated for s in samples])
  square = np.array([s.square_trace for s in samples])
  return np.maximum(2 * dim / (dim + 2) * (square - rest ** 2 / dim), 0.0)


def converged_ritz_pairs(pool, d, residual_rtol=1e-4, space=None):
  """Ritz pairs of ``A`` on the left-out space of draw `d` with residual
  ``||A y - theta y|| <= residual_rtol x max |theta|``.

  Args:
    pool: `pooled_bases` of the run.
    d: the left-out draw.
    residual_rtol: convergence threshold, relative to the largest ``|theta|``.
    space: `_left_out_space(pool, d)`, if already computed.

  Returns:
    ``(theta [p], cu [p], residual [p])``: the values, ``y_j . u_d`` (draw
    `d`'s start vector) and the residual norms.
  """
  space = space or _left_out_space(pool, d)
  rows, coef = space.rows, space.coef
  x_q = pool.gram[:, rows] @ coef                         # X . Q, [D m, p]
  a_q = pool.blocks[:, rows] @ coef                       # A Q = X^T a_q
  proj = x_q.T @ a_q                                      # Q^T A Q
  theta, z = np.linalg.eigh(0.5 * (proj + proj.T))
  embed = np.zeros((pool.gram.shape[0], coef.shape[1]))
  embed[rows] = coef                                      # Q = X^T embed
  resid = a_q @ z - (embed @ z) * theta                   # A y - theta y
  norms = np.sqrt(np.maximum(np.sum(resid * (pool.gram @ resid), axis=0), 0))
  keep = norms <= residual_rtol * np.max(np.abs(theta), initial=0.0)
  cu = (x_q[d * pool.order] @ z)[keep]                    # y . u_d
  return theta[keep], cu, norms[keep]


class Deflation:
  """The deflated estimators of a run, each computed on first use.

  Args:
    tridiag: ``[D, m, m]``.
    gram: ``[D m, D m]`` (`basis_gram` of kept bases, or the run's
      `LanczosResult.gram`: NaN between draws of different passes).
    num_steps: ``[D]``.
    dim: operator size.
  """

  def __init__(self, tridiag, gram, num_steps, dim):
    self.tridiag = np.asarray(tridiag)
    self.pool = pooled_bases(self.tridiag, gram, num_steps, dim)

  @functools.cached_property
  def _spaces(self):
    # One factorisation of each left-out Gram matrix serves both.
    return [_left_out_space(self.pool, d) for d in range(self.pool.num_draws)]

  @functools.cached_property
  def _trace(self):
    gram_a = self.pool.gram @ self.pool.blocks
    return [_trace_sample(self.tridiag, self.pool, gram_a, d, space)
            for d, space in enumerate(self._spaces)]

  @property
  def trace_samples(self):
    """``[D]`` `deflated_trace_samples`."""
    return np.array([s.estimate for s in self._trace])

  @property
  def trace_variances(self):
    """``[D]`` `trace_variances` of the samples."""
    return trace_variances(self._trace, self.pool.dim)

  @functools.cached_property
  def ritz_pairs(self):
    """Per draw ``(theta, cu)`` of `converged_ritz_pairs`."""
    return [converged_ritz_pairs(self.pool, d, space=space)[:2]
            for d, space in enumerate(self._spaces)]


def deflated_sum_samples(nodes, weights, dim, ritz_pairs, fn):
  """``[num_draws]`` leave-one-out deflated estimates of ``tr f(A)`` (module
  doc).

  Args:
    nodes, weights: ``[num_draws, order]`` Gauss rules of the draws.
    dim: operator size ``n``.
    ritz_pairs: per draw ``d``, ``(theta, cu)`` of the converged Ritz pairs
      of its left-out space (`Deflation.ritz_pairs`).
    fn: vectorised ``f``.
  """
  quad = spectral_sum_samples(nodes, weights, 1, fn)
  samples = np.zeros(len(ritz_pairs))
  for d, (theta, cu) in enumerate(ritz_pairs):
    f_theta = np.asarray(fn(theta), np.float64)
    samples[d] = f_theta.sum() + dim * (quad[d] - cu ** 2 @ f_theta)
  return samples


def spectral_sum_samples(nodes, weights, dim, fn):
  """``[num_draws]`` plain estimates ``n sum_i w_i f(theta_i)`` of
  ``tr f(A)``."""
  values = np.where(weights > 0, fn(np.where(weights > 0, nodes, 0.0)), 0.0)
  return dim * np.sum(weights * values, axis=1)
