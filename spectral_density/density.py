"""Gauss quadrature from Lanczos tridiagonals, and smoothed spectral densities.

For a unit start vector ``v`` and ``T`` the order-``m`` Lanczos tridiagonal of
``A``, Golub-Welsch gives ``v^T f(A) v ~ sum_i w_i f(theta_i)`` with nodes
``theta_i`` the eigenvalues of ``T`` and weights ``w_i`` the squared first
components of its eigenvectors. With ``f`` a Gaussian kernel of width
``sigma`` centred at ``t`` this estimates the smoothed spectral density
``phi_sigma(t) = (1/n) sum_j N(t; lambda_j, sigma^2)``; averaging over random
start vectors makes it unbiased (Ghorbani et al., 2019, section 3).

Host-side numpy: these run once per draw on ``[order, order]`` matrices.
"""

import numpy as np


def num_valid_steps(tridiag):
  """Size of the valid leading block of each tridiagonal.

  `lanczos_draws` writes exact zeros for ``beta`` from a breakdown on; the
  first zero off-diagonal ends the Krylov space.

  Args:
    tridiag: ``[order, order]`` or ``[num_draws, order, order]``.

  Returns:
    int array ``[num_draws]``.
  """
  tridiag = np.asarray(tridiag)
  tridiag = tridiag[None] if tridiag.ndim == 2 else tridiag
  off = np.diagonal(tridiag, offset=1, axis1=1, axis2=2)
  zero = off == 0
  first = np.where(zero.any(axis=1), zero.argmax(axis=1) + 1, tridiag.shape[1])
  return first.astype(np.int64)


def tridiag_to_eigv(tridiag_list, *, return_vectors=False):
  """Gauss quadrature nodes and weights (Golub-Welsch).

  Same name as the original `density.tridiag_to_eigv`. After a breakdown only
  the valid leading block is used; the remaining slots get weight 0 and the
  node value 0.

  Args:
    tridiag_list: ``[num_draws, order, order]`` (or one ``[order, order]``).
    return_vectors: also return the eigenvectors of each tridiagonal.

  Returns:
    ``(nodes, weights)``, each ``[num_draws, order]``, nodes ascending within
    the valid block, weights summing to 1 per draw; with `return_vectors`,
    also ``[num_draws, order, order]`` eigenvector matrices (columns, zero
    outside the valid block).
  """
  tridiag = np.asarray(tridiag_list, np.float64)
  tridiag = tridiag[None] if tridiag.ndim == 2 else tridiag
  num_draws, order, _ = tridiag.shape
  steps = num_valid_steps(tridiag)
  nodes = np.zeros((num_draws, order))
  weights = np.zeros((num_draws, order))
  vectors = np.zeros((num_draws, order, order))
  for d in range(num_draws):
    k = steps[d]
    vals, vecs = np.linalg.eigh(tridiag[d, :k, :k])
    nodes[d, :k] = vals
    weights[d, :k] = vecs[0] ** 2
    vectors[d, :k, :k] = vecs
  if return_vectors:
    return nodes, weights, vectors
  return nodes, weights


def gaussian_kernel(x, centers, sigma):
  """``N(x; centers, sigma^2)`` for all pairs: ``[len(x), len(centers)]``."""
  x = np.asarray(x, np.float64)[:, None]
  c = np.asarray(centers, np.float64)[None, :]
  return np.exp(-0.5 * ((x - c) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def default_grid(nodes, weights, grid_len=10000, grid_expand=1e-2):
  """A grid over the nodes' range (weighted nodes only), expanded on both sides.

  Args:
    nodes, weights: ``[num_draws, order]``.
    grid_len: number of grid points.
    grid_expand: added below the smallest and above the largest node, as in
      the original code.

  Returns:
    ``[grid_len]`` grid.
  """
  nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
  used = nodes[weights > 0] if np.any(weights > 0) else nodes.ravel()
  return np.linspace(used.min() - grid_expand, used.max() + grid_expand,
                     grid_len)


def eigv_to_density(eig_vals, all_weights=None, grids=None, *, sigma=None,
                    sigma_squared=None, grid_len=10000, grid_expand=1e-2,
                    normalize=True, chunk=2048):
  """Smoothed spectral density on a grid, averaged over draws.

  Same name and positional arguments as the original `eigv_to_density`.

  Width of the Gaussian kernel, one of:

  * `sigma`: its standard deviation, in eigenvalue units;
  * `sigma_squared`: the original code's convention, a variance scaled by the
    range: ``variance = sigma_squared * max(1, lambda_max - lambda_min)``;
  * neither: the original default ``sigma_squared = 1e-5``.

  Args:
    eig_vals: nodes ``[num_draws, order]``.
    all_weights: weights ``[num_draws, order]``; default uniform.
    grids: evaluation points ``[grid_len]``; default `default_grid`.
    sigma: kernel standard deviation.
    sigma_squared: range-scaled kernel variance (original convention).
    grid_len: grid size when `grids` is None.
    grid_expand: grid margin when `grids` is None.
    normalize: rescale so that the trapezoid integral over the grid is 1 (as
      the original). Off, the density is exact and integrates to 1 over R.
    chunk: grid points evaluated at once (bounds memory).

  Returns:
    ``(density [grid_len], grids [grid_len])``.
  """
  if sigma is not None and sigma_squared is not None:
    raise ValueError('give one of sigma and sigma_squared, not both.')
  nodes = np.atleast_2d(np.asarray(eig_vals, np.float64))
  if all_weights is None:
    all_weights = np.full(nodes.shape, 1.0 / nodes.shape[1])
  weights = np.atleast_2d(np.asarray(all_weights, np.float64))
  if grids is None:
    grids = default_grid(nodes, weights, grid_len, grid_expand)
  grids = np.asarray(grids, np.float64)
  if sigma is None:
    used = nodes[weights > 0] if np.any(weights > 0) else nodes.ravel()
    width = max(1.0, float(used.max() - used.min()))
    sigma = np.sqrt((1e-5 if sigma_squared is None else sigma_squared) * width)
  if not sigma > 0:
    raise ValueError(f'sigma: must be > 0, got {sigma}.')
  flat_nodes = nodes.ravel()
  flat_weights = weights.ravel() / nodes.shape[0]
  keep = flat_weights > 0
  flat_nodes, flat_weights = flat_nodes[keep], flat_weights[keep]
  density = np.concatenate([
      gaussian_kernel(grids[i:i + chunk], flat_nodes, sigma) @ flat_weights
      for i in range(0, grids.size, chunk)])
  if normalize and grids.size > 1:
    density = density / np.trapezoid(density, grids)
  return density, grids


def tridiag_to_density(tridiag_list, sigma_squared=1e-5, grid_len=10000, *,
                       sigma=None, grids=None, normalize=True):
  """Density straight from tridiagonals (the original's one call).

  Args:
    tridiag_list: ``[num_draws, order, order]``.
    sigma_squared: range-scaled variance (original convention); ignored when
      `sigma` is given.
    grid_len: grid size.
    sigma: kernel standard deviation (overrides `sigma_squared`).
    grids: evaluation points.
    normalize: see `eigv_to_density`.

  Returns:
    ``(density [grid_len], grids [grid_len])``.
  """
  nodes, weights = tridiag_to_eigv(tridiag_list)
  return eigv_to_density(
      nodes, weights, grids, sigma=sigma,
      sigma_squared=None if sigma is not None else sigma_squared,
      grid_len=grid_len, normalize=normalize)


def exact_density(eigenvalues, grids, sigma):
  """The Gaussian-smoothed density of known eigenvalues ``[n]`` on a grid.

  The reference SLQ estimates: ``(1/n) sum_j N(t; lambda_j, sigma^2)``, not
  renormalised.
  """
  eigenvalues = np.ravel(np.asarray(eigenvalues, np.float64))
  weights = np.full((1, eigenvalues.size), 1.0 / eigenvalues.size)
  return eigv_to_density(eigenvalues[None], weights, grids, sigma=sigma,
                         normalize=False)[0]
