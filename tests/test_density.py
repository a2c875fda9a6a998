"""Golub-Welsch quadrature and smoothed densities against closed forms."""

import numpy as np
import pytest
from scipy import stats

import spectral_density as sd


def _tridiag(alphas, betas):
  return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def test_gauss_hermite_nodes_and_weights_from_its_jacobi_matrix():
  # The Jacobi matrix of the probabilists' Hermite polynomials has zero
  # diagonal and off-diagonal sqrt(k); its quadrature is Gauss-Hermite for the
  # standard normal weight.
  order = 12
  tridiag = _tridiag(np.zeros(order), np.sqrt(np.arange(1, order)))
  nodes, weights = sd.tridiag_to_eigv(tridiag[None])
  ref_nodes, ref_weights = np.polynomial.hermite_e.hermegauss(order)
  np.testing.assert_allclose(nodes[0], ref_nodes, atol=1e-12)
  np.testing.assert_allclose(weights[0], ref_weights / np.sqrt(2 * np.pi),
                             atol=1e-12)


def test_density_of_one_node_is_the_gaussian_kernel():
  grid = np.linspace(-1, 3, 2001)
  dens, _ = sd.eigv_to_density(np.array([[1.0]]), np.array([[1.0]]), grid,
                               sigma=0.2, normalize=False)
  np.testing.assert_allclose(dens, stats.norm.pdf(grid, 1.0, 0.2), rtol=1e-12)


def test_density_averages_draws_and_integrates_to_one():
  nodes = np.array([[0.0, 1.0], [2.0, 3.0]])
  weights = np.array([[0.25, 0.75], [0.5, 0.5]])
  grid = np.linspace(-2, 5, 7001)
  dens, _ = sd.eigv_to_density(nodes, weights, grid, sigma=0.1,
                               normalize=False)
  expected = 0.5 * (0.25 * stats.norm.pdf(grid, 0, 0.1) +
                    0.75 * stats.norm.pdf(grid, 1, 0.1) +
                    0.5 * stats.norm.pdf(grid, 2, 0.1) +
                    0.5 * stats.norm.pdf(grid, 3, 0.1))
  np.testing.assert_allclose(dens, expected, rtol=1e-12, atol=1e-300)
  assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-9)


def test_original_range_scaled_variance_convention():
  nodes = np.array([[0.0, 4.0]])
  weights = np.array([[0.5, 0.5]])
  dens, grid = sd.eigv_to_density(nodes, weights, sigma_squared=1e-3,
                                  grid_len=5001, normalize=False)
  variance = 1e-3 * 4.0  # sigma_squared x max(1, lambda_max - lambda_min)
  expected = 0.5 * (stats.norm.pdf(grid, 0, np.sqrt(variance)) +
                    stats.norm.pdf(grid, 4, np.sqrt(variance)))
  np.testing.assert_allclose(dens, expected, rtol=1e-12, atol=1e-300)
  assert grid[0] == pytest.approx(-1e-2) and grid[-1] == pytest.approx(4.01)


def test_tridiag_to_density_equals_eigv_to_density_of_its_quadrature():
  rng = np.random.default_rng(0)
  tridiags = np.stack([_tridiag(rng.normal(size=8), rng.uniform(.5, 1, 7))
                       for _ in range(3)])
  grid = np.linspace(-4, 4, 801)
  direct, _ = sd.tridiag_to_density(tridiags, sigma=0.3, grids=grid)
  nodes, weights = sd.tridiag_to_eigv(tridiags)
  two_step, _ = sd.eigv_to_density(nodes, weights, grid, sigma=0.3)
  np.testing.assert_allclose(direct, two_step, rtol=1e-12)


def test_exact_density_is_mean_of_kernels():
  ev = np.array([-1.0, 0.0, 0.0, 2.0])
  grid = np.linspace(-3, 4, 701)
  expected = np.mean([stats.norm.pdf(grid, e, 0.25) for e in ev], axis=0)
  np.testing.assert_allclose(sd.exact_density(ev, grid, 0.25), expected,
                             rtol=1e-12)


def test_breakdown_block_has_zero_weight():
  tridiag = _tridiag(np.array([1.0, 2.0, 0.0, 0.0]),
                     np.array([0.5, 0.0, 0.0]))
  nodes, weights = sd.tridiag_to_eigv(tridiag)
  np.testing.assert_allclose(weights[0, 2:], 0.0)
  np.testing.assert_allclose(np.sort(nodes[0, :2]),
                             np.linalg.eigvalsh(tridiag[:2, :2]), atol=1e-14)
  assert weights.sum() == pytest.approx(1.0)
