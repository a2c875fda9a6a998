"""Golub-Welsch quadrature and smoothed densities against closed forms."""

import jax
import jax.numpy as jnp
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


def test_range_scaled_variance_convention():
  nodes = np.array([[0.0, 4.0]])
  weights = np.array([[0.5, 0.5]])
  dens, grid = sd.eigv_to_density(nodes, weights, sigma_squared=1e-3,
                                  grid_len=5001, normalize=False)
  variance = 1e-3 * 4.0  # sigma_squared x max(1, lambda_max - lambda_min)
  expected = 0.5 * (stats.norm.pdf(grid, 0, np.sqrt(variance)) +
                    stats.norm.pdf(grid, 4, np.sqrt(variance)))
  np.testing.assert_allclose(dens, expected, rtol=1e-12, atol=1e-300)
  margin = sd.density.KERNEL_MARGIN * np.sqrt(variance)
  assert grid[0] == pytest.approx(-margin) and grid[-1] == pytest.approx(
      4 + margin)


def test_original_grid_convention_by_grid_expand():
  # The original: the grid spans the mean over draws of each draw's extreme
  # nodes -/+ grid_expand, and the variance is scaled by that span.
  nodes = np.array([[0.0, 4.0], [1.0, 6.0]])
  weights = np.array([[0.5, 0.5], [0.25, 0.75]])
  dens, grid = sd.eigv_to_density(nodes, weights, sigma_squared=1e-3,
                                  grid_len=5001, grid_expand=1e-2,
                                  normalize=False)
  assert grid[0] == pytest.approx(0.5 - 1e-2)
  assert grid[-1] == pytest.approx(5.0 + 1e-2)
  sd_ = np.sqrt(1e-3 * (4.5 + 2e-2))
  expected = 0.5 * (0.5 * stats.norm.pdf(grid, 0, sd_) +
                    0.5 * stats.norm.pdf(grid, 4, sd_) +
                    0.25 * stats.norm.pdf(grid, 1, sd_) +
                    0.75 * stats.norm.pdf(grid, 6, sd_))
  np.testing.assert_allclose(dens, expected, rtol=1e-12, atol=1e-300)


def test_default_grid_holds_the_kernel_of_the_outer_nodes():
  # Nodes at 0 and 10 with sigma = 1: the true density at 0 is
  # 0.5 N(0; 0, 1) + 0.5 N(0; 10, 1) = 0.19947. A grid margin of 1e-2 (the
  # original's) cuts off half of each outer kernel, and the normalisation
  # then doubles the density: 0.396.
  nodes, weights = np.array([[0.0, 10.0]]), np.array([[0.5, 0.5]])
  truth = 0.5 / np.sqrt(2 * np.pi) + 0.5 * np.exp(-50) / np.sqrt(2 * np.pi)
  dens, grid = sd.eigv_to_density(nodes, weights, sigma=1.0)
  assert np.interp(0.0, grid, dens) == pytest.approx(truth, rel=1e-6)
  assert truth == pytest.approx(0.19947, abs=1e-5)
  dens, grid = sd.eigv_to_density(nodes, weights, sigma=1.0, grid_expand=1e-2)
  assert np.interp(0.0, grid, dens) == pytest.approx(0.396, abs=1e-3)


def test_tridiag_to_density_equals_closed_form_quadrature():
  # Draw 1: [[1, sqrt 3], [sqrt 3, 3]] has eigenvalues 2 -/+ 2 = 0 and 4 with
  # eigenvectors ~ (b, lambda - a) = (sqrt 3, -1) and (sqrt 3, 3): weights
  # 3/4 and 1/4. Draw 2: [[2, 0], [0, 5]] breaks down at once: e_1 sees only
  # the node 2, weight 1.
  tridiags = [np.array([[1.0, np.sqrt(3)], [np.sqrt(3), 3.0]]),
              np.array([[2.0, 0.0], [0.0, 5.0]])]
  nodes, weights = sd.tridiag_to_eigv(tridiags)
  np.testing.assert_allclose(nodes, [[0, 4], [2, 0]], atol=1e-14)
  np.testing.assert_allclose(weights, [[0.75, 0.25], [1, 0]], atol=1e-14)
  sigma, grid = 0.3, np.linspace(-3, 7, 1001)
  gauss = lambda mu: (np.exp(-0.5 * ((grid - mu) / sigma) ** 2) /
                      (sigma * np.sqrt(2 * np.pi)))
  expected = 0.5 * (0.75 * gauss(0) + 0.25 * gauss(4)) + 0.5 * gauss(2)
  dens, _ = sd.tridiag_to_density(tridiags, sigma=sigma, grids=grid,
                                  normalize=False)
  np.testing.assert_allclose(dens, expected, rtol=1e-12, atol=1e-300)
  dens, _ = sd.tridiag_to_density(tridiags, sigma=sigma, grids=grid)
  np.testing.assert_allclose(dens, expected / np.trapezoid(expected, grid),
                             rtol=1e-12, atol=1e-300)


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


def _random_tridiags(num_draws, order, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([_tridiag(rng.normal(size=order),
                            rng.uniform(0.5, 1, order - 1))
                   for _ in range(num_draws)])


def test_tridiag_to_eigv_under_jit_and_vmap_gives_the_same_numbers():
  tridiags = _random_tridiags(3, 8)
  tridiags[2, 5, 6] = tridiags[2, 6, 5] = 0.0  # a breakdown after 6 steps
  tridiags[2, 6:, 6:] = 0.0
  nodes, weights, vectors = sd.tridiag_to_eigv(tridiags, return_vectors=True)
  assert np.all(weights[2, 6:] == 0) and np.all(nodes[2, 6:] == 0)
  with jax.enable_x64(True):
    t = jnp.asarray(tridiags)
    jit_nodes, jit_weights = jax.jit(sd.tridiag_to_eigv)(t)
    vm_nodes, vm_weights = jax.vmap(sd.tridiag_to_eigv)(t)
    # The original's own pattern: a list of tridiagonals inside jit.
    list_nodes, _ = jax.jit(lambda a, b, c: sd.tridiag_to_eigv([a, b, c]))(*t)
    _, _, jit_vectors = jax.jit(
        lambda a: sd.tridiag_to_eigv(a, return_vectors=True))(t)
  np.testing.assert_allclose(jit_nodes, nodes, rtol=1e-13, atol=1e-14)
  np.testing.assert_allclose(jit_weights, weights, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(vm_nodes[:, 0], nodes, rtol=1e-13, atol=1e-14)
  np.testing.assert_allclose(vm_weights[:, 0], weights, rtol=1e-12,
                             atol=1e-14)
  np.testing.assert_allclose(list_nodes, nodes, rtol=1e-13, atol=1e-14)
  np.testing.assert_allclose(np.abs(jit_vectors), np.abs(vectors), atol=1e-12)
  # Without x64, in float32: the same numbers to float32 rounding.
  f32_nodes, f32_weights = jax.jit(sd.tridiag_to_eigv)(
      jnp.asarray(tridiags, jnp.float32))
  assert f32_nodes.dtype == jnp.float32
  np.testing.assert_allclose(f32_nodes, nodes, atol=1e-5)
  np.testing.assert_allclose(f32_weights, weights, atol=1e-5)


_T = _tridiag(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5]))
_NODES, _WEIGHTS = np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]])

BAD_INPUTS = [
    # (call, error, argument named in the message)
    (lambda: sd.tridiag_to_eigv([np.eye(2), np.eye(3)]), ValueError,
     'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.ones((2, 3))), ValueError, 'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.ones((1, 1, 2, 2))), ValueError,
     'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.zeros((0, 3, 3))), ValueError,
     'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.where(_T == 3, np.nan, _T)), ValueError,
     'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.triu(_T)), ValueError, 'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(np.ones((3, 3))), ValueError, 'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(_T.astype(complex)), TypeError,
     'tridiag_list'),
    (lambda: sd.tridiag_to_eigv('abc'), TypeError, 'tridiag_list'),
    (lambda: sd.tridiag_to_eigv(_T, return_vectors='yes'), TypeError,
     'return_vectors'),
    (lambda: jax.jit(sd.tridiag_to_eigv)(jnp.ones((2, 3))), ValueError,
     'tridiag_list'),
    (lambda: sd.density.num_valid_steps(np.ones((2, 3))), ValueError,
     'tridiag'),
    (lambda: sd.tridiag_to_density(_T, sigma=0.0), ValueError, 'sigma'),
    (lambda: sd.tridiag_to_density(_T, sigma_squared=-1.0), ValueError,
     'sigma_squared'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma=0.0), ValueError,
     'sigma'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma=-1.0), ValueError,
     'sigma'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma=np.nan), ValueError,
     'sigma'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma='1'), TypeError,
     'sigma'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma=1.0,
                                sigma_squared=1e-3), ValueError,
     'sigma, sigma_squared'),
    (lambda: sd.eigv_to_density(_NODES, _WEIGHTS, sigma_squared=0.0),
     ValueError, 'sigma_squared'),
    (lambda: sd.eigv_to_density(_NODES, np.ones((1, 3))), ValueError,
     'all_weights'),
    (lambda: sd.eigv_to_density(_NODES, -_WEIGHTS), ValueError, 'all_weights'),
    (lambda: sd.eigv_to_density(_NODES, 0 * _WEIGHTS), ValueError,
     'all_weights'),
    (lambda: sd.eigv_to_density(np.array([[0.0, np.inf]])), ValueError,
     'eig_vals'),
    (lambda: sd.eigv_to_density(np.ones((1, 2, 2))), ValueError, 'eig_vals'),
    (lambda: sd.eigv_to_density(_NODES, grid_len=1), ValueError, 'grid_len'),
    (lambda: sd.eigv_to_density(_NODES, grid_len=2.5), TypeError, 'grid_len'),
    (lambda: sd.eigv_to_density(_NODES, grid_len=True), TypeError, 'grid_len'),
    (lambda: sd.eigv_to_density(_NODES, grid_expand=-1.0), ValueError,
     'grid_expand'),
    (lambda: sd.eigv_to_density(_NODES, grids=np.ones((2, 2))), ValueError,
     'grids'),
    (lambda: sd.eigv_to_density(_NODES, grids=np.array([1.0, 0.0])),
     ValueError, 'grids'),
    (lambda: sd.eigv_to_density(_NODES, grids=np.linspace(1e3, 1e3 + 1, 9),
                                sigma=0.1), ValueError, 'grids'),
    (lambda: sd.eigv_to_density(_NODES, normalize='yes'), TypeError,
     'normalize'),
    (lambda: sd.eigv_to_density(_NODES, chunk=0), ValueError, 'chunk'),
    (lambda: sd.exact_density(np.ones(3), np.linspace(0, 1, 5), 0.0),
     ValueError, 'sigma'),
    (lambda: sd.exact_density(np.ones(3), None, 0.1), TypeError, 'grids'),
    (lambda: sd.exact_density(np.ones((3, 3)), np.linspace(0, 1, 5), 0.1),
     ValueError, 'eigenvalues'),
]


@pytest.mark.parametrize('call,error,name', BAD_INPUTS,
                         ids=[f'{i}-{c[2]}' for i, c in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_naming_the_argument(call, error, name):
  with pytest.raises(error, match=rf'^{name}\b'):
    call()


def test_order_one_is_the_start_vectors_rayleigh_quotient():
  """An order-1 rule is one node, the Rayleigh quotient, with weight 1 (issue
  19, item 5: argmax of an empty sequence), with and without `jit`."""
  nodes, weights = sd.tridiag_to_eigv([[2.0]])
  np.testing.assert_array_equal(nodes, [[2.0]])
  np.testing.assert_array_equal(weights, [[1.0]])
  traced = jax.jit(sd.tridiag_to_eigv)(jnp.array([[[2.0]], [[-3.0]]]))
  np.testing.assert_array_equal(traced[0], [[2.0], [-3.0]])
  np.testing.assert_array_equal(traced[1], [[1.0], [1.0]])
  assert sd.density.num_valid_steps([[2.0]]).tolist() == [1]
