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
each draw out in turn gives ``num_draws`` unbiased estimates; their mean is the
trace and their spread its standard error (as Hutch++ and the Krylov-aware
estimators of Chen & Hallman 2023 split the products between a deflation space
and Hutchinson samples, here the same products serve both).

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

# Basis directions kept: Gram eigenvalue > GRAM_EPS_FACTOR x eps(basis dtype)
# x the largest. A direction of Gram eigenvalue g amplifies the rounding of
# the basis (and of ``A V = V T``, eps relative) by 1 / g in ``Q^T A Q``; in
# float64 this is the former fixed 1e-10. A fixed 1e-10 kept float32's
# rounding noise (eps 1.2e-7), so that no Ritz pair of a float32 run counted
# as converged (issue 19: tr(A^2) 1.5e-1 off, as plain quadrature).
GRAM_EPS_FACTOR = 4.5e5


def gram_rtol(dtype):
  """The relative Gram eigenvalue threshold of a basis of `dtype`."""
  return GRAM_EPS_FACTOR * float(np.finfo(np.dtype(dtype)).eps)


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
    rtol: `gram_rtol` of the basis dtype.
  """
  gram: np.ndarray
  blocks: np.ndarray
  usable: list
  order: int
  dim: int
  linked: np.ndarray
  rtol: float

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


def pooled_bases(tridiag, gram, num_steps, dim, dtype):
  """`PooledBases` of a run: ``tridiag [D, m, m]``, ``gram [D m, D m]``
  (`basis_gram`, or `LanczosResult.gram`: NaN between draws of different
  passes), ``num_steps [D]`` (>= 2 draws), operator size `dim`, basis
  `dtype`."""
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
  return PooledBases(gram, blocks, usable, order, int(dim), linked,
                     gram_rtol(dtype))


def _left_out_space(pool, d):
  """``(rows, coef)``: the usable rows of every draw linked to `d` but `d`,
  and ``coef`` with ``Q = X[rows]^T coef`` orthonormal (no columns when no
  other draw is linked)."""
  rows = np.concatenate([b * pool.order + np.arange(pool.usable[b])
                         for b in range(pool.num_draws)
                         if b != d and pool.linked[d, b]] +
                        [np.zeros(0, int)]).astype(int)
  if rows.size == 0:
    return rows, np.zeros((0, 0))
  evals, evecs = np.linalg.eigh(pool.gram[np.ix_(rows, rows)])
  keep = evals > pool.rtol * evals.max()
  return rows, evecs[:, keep] / np.sqrt(evals[keep])


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
      _deflated_trace_sample(tridiag, pool, gram_a, d,
                             _left_out_space(pool, d))
      for d in range(pool.num_draws)])


def _deflated_trace_sample(tridiag, pool, gram_a, d, space):
  """Draw `d`'s sample, given ``gram_a = gram @ blocks`` and its
  `_left_out_space`."""
  rows, coef = space
  proj = coef.T @ gram_a[np.ix_(rows, rows)] @ coef       # Q^T A Q
  proj = 0.5 * (proj + proj.T)
  u = d * pool.order                                      # start vector row
  c = coef.T @ pool.gram[rows, u]                         # Q^T u
  qau = coef.T @ gram_a[rows, u]                          # Q^T A u
  rest = tridiag[d, 0, 0] - 2 * c @ qau + c @ proj @ c
  return np.trace(proj) + pool.dim * rest


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
  rows, coef = space or _left_out_space(pool, d)
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
    dtype: the basis dtype (its eps scales the Gram threshold).
  """

  def __init__(self, tridiag, gram, num_steps, dim, dtype):
    self.tridiag = np.asarray(tridiag)
    self.pool = pooled_bases(self.tridiag, gram, num_steps, dim, dtype)

  @functools.cached_property
  def _spaces(self):
    # One eigendecomposition of each left-out Gram matrix serves both.
    return [_left_out_space(self.pool, d) for d in range(self.pool.num_draws)]

  @functools.cached_property
  def trace_samples(self):
    """``[D]`` `deflated_trace_samples`."""
    gram_a = self.pool.gram @ self.pool.blocks
    return np.array([
        _deflated_trace_sample(self.tridiag, self.pool, gram_a, d, space)
        for d, space in enumerate(self._spaces)])

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
