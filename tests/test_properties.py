"""Property-based tests (hypothesis) of the numerical core, through its public
API: `lanczos_draws`, `tridiag_to_eigv` and the density functions.

Random symmetric matrices ``Q diag(lambda) Q^T`` of random spectra (distinct,
repeated, rank-deficient, zero, negative definite) and scale, under a few
fixed (dim, order, draws, precision) settings, one test each: the matrix is
a leaf of a `jax.tree_util.Partial`, so every example of a setting reuses its
compiled programs (compiling them is most of the file's time). The number of
examples comes from the hypothesis profile of tests/conftest.py: `ci` (the
default) draws the same examples on every run, `thorough` many more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import spectral_density as sd

# (dim, order, num_draws, precision): order = dim for the exact-eigenvalue
# property, odd dim for the padded slices of basis='sharded' over 8 devices.
SETTINGS = [(7, 7, 3, 'float64'), (16, 16, 1, 'float32'),
            (16, 5, 3, 'float64'), (7, 2, 2, 'float32'),
            (12, 12, 2, 'mixed')]
SPECTRA = ('distinct', 'repeated', 'rank_deficient', 'zero',
           'negative_definite')
BASES = ('device', 'sharded', 'host')
# Relative tolerances by precision of the products: (nodes, weights).
TOLERANCES = {'float64': (1e-9, 1e-10), 'float32': (2e-5, 1e-5),
              'mixed': (2e-5, 1e-5)}


def _spectrum(kind, dim, scale, rng):
  """Eigenvalues ``[dim]`` on a grid of step scale / 20, so that distinct
  eigenvalues are well apart at every precision."""
  grid = np.arange(-20, 21) / 20
  if kind == 'distinct':
    ev = rng.choice(grid, dim, replace=False)
  elif kind == 'repeated':
    values = rng.choice(grid, rng.integers(1, 4), replace=False)
    ev = np.r_[values, rng.choice(values, dim - values.size)]
  elif kind == 'rank_deficient':
    rank = rng.integers(1, dim)
    ev = np.r_[rng.choice(grid[grid != 0], rank, replace=False),
               np.zeros(dim - rank)]
  elif kind == 'zero':
    ev = np.zeros(dim)
  else:
    ev = -rng.choice(grid[grid > 0], dim, replace=False)
  return np.sort(scale * ev)


def _matvec(matrix, v):
  return matrix @ v


def _moments(nodes, weights, scale, num=5):
  """``sum_i w_i (theta_i / scale)^k`` for k < num: ``[num, num_draws]``."""
  return np.stack([np.sum(weights * (nodes / scale) ** k, axis=1)
                   for k in range(num)])


# Each example runs three Lanczos runs: a tenth of the profile's examples per
# setting (6 in CI).
@pytest.mark.parametrize('setting', SETTINGS,
                         ids=lambda s: '-'.join(map(str, s)))
@settings(max_examples=max(1, settings().max_examples // 10))
@given(kind=st.sampled_from(SPECTRA), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_lanczos_quadrature_invariants(setting, kind, scale, seed):
  dim, order, num_draws, precision = setting
  rng = np.random.default_rng(seed)
  ev = _spectrum(kind, dim, scale, rng)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a = (q * ev) @ q.T
  a = 0.5 * (a + a.T)
  node_tol, weight_tol = TOLERANCES[precision]
  size = max(np.abs(ev).max(), 1e-300)
  with jax.enable_x64(True):
    dtype = jnp.float64 if precision == 'float64' else jnp.float32
    matvec = jax.tree_util.Partial(_matvec, jnp.asarray(a, dtype))
    runs = {basis: sd.lanczos_draws(matvec, dim, order, jax.random.key(seed),
                                    num_draws=num_draws, precision=precision,
                                    basis=basis)
            for basis in BASES}
  reference = np.linalg.eigh(a)[0]
  distinct = np.unique(ev)
  quadratures, extremes = {}, {}
  for basis, run in runs.items():
    nodes, weights = sd.tridiag_to_eigv(run.tridiag)
    quadratures[basis] = nodes, weights
    assert np.all(np.isfinite(run.tridiag)), basis
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=weight_tol)
    valid = np.arange(order)[None, :] < run.num_steps[:, None]
    assert np.all(weights[~valid] == 0)
    extremes[basis] = (np.where(valid, nodes, np.inf).min(axis=1),
                       np.where(valid, nodes, -np.inf).max(axis=1))
    inside = nodes[valid]
    assert inside.min() >= ev[0] - node_tol * size, (basis, inside, ev)
    assert inside.max() <= ev[-1] + node_tol * size, (basis, inside, ev)
    if order == dim:
      # Every eigenvalue is a node, and every weighted node an eigenvalue.
      near = np.abs(nodes[..., None] - distinct).min(axis=-1)
      assert np.all(near[weights > 1e-3] <= node_tol * size), basis
      for d in range(num_draws):
        gap = np.abs(nodes[d][valid[d]][:, None] - distinct).min(axis=0)
        assert np.all(gap <= node_tol * size), (basis, d, nodes[d], ev)
        if kind in ('distinct', 'negative_definite'):
          np.testing.assert_allclose(np.sort(nodes[d]), reference,
                                     atol=node_tol * size)
  # The basis lives elsewhere, the quadrature is the same.
  nodes, weights = quadratures['device']
  for basis in ('sharded', 'host'):
    other_nodes, other_weights = quadratures[basis]
    np.testing.assert_allclose(
        _moments(other_nodes, other_weights, size),
        _moments(nodes, weights, size), atol=10 * weight_tol, err_msg=basis)
    np.testing.assert_allclose(extremes[basis], extremes['device'],
                               atol=node_tol * size, err_msg=basis)


ORDER = 6


@st.composite
def tridiagonals(draw):
  """``[2, ORDER, ORDER]`` symmetric tridiagonals, some broken down."""
  floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
  out = np.zeros((2, ORDER, ORDER))
  for d in range(2):
    alphas = np.array(draw(st.lists(floats, min_size=ORDER, max_size=ORDER)))
    betas = np.array(draw(st.lists(st.floats(1e-3, 1e3), min_size=ORDER - 1,
                                   max_size=ORDER - 1)))
    stop = draw(st.integers(1, ORDER))  # breakdown after `stop` steps
    betas[stop - 1:] = 0
    alphas[stop:] = 0
    out[d] = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
  return out


@given(tridiag=tridiagonals())
def test_gauss_quadrature_of_any_tridiagonal(tridiag):
  nodes, weights = sd.tridiag_to_eigv(tridiag)
  steps = sd.density.num_valid_steps(tridiag)
  size = np.abs(tridiag).max() or 1.0
  for d in range(2):
    k = steps[d]
    # The valid block's eigenvalues, and e_1's squared components.
    vals, vecs = np.linalg.eigh(tridiag[d, :k, :k])
    np.testing.assert_allclose(nodes[d, :k], vals, atol=1e-12 * size)
    assert np.all(nodes[d, k:] == 0) and np.all(weights[d, k:] == 0)
    # Moments up to 2k - 1 are e_1^T T^j e_1 (Gauss quadrature exactness).
    t = tridiag[d, :k, :k] / size
    for j in range(2 * k):
      assert np.sum(weights[d] * (nodes[d] / size) ** j) == pytest.approx(
          np.linalg.matrix_power(t, j)[0, 0], abs=1e-9)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
  with jax.enable_x64(True):
    jit_nodes, jit_weights = jax.jit(sd.tridiag_to_eigv)(jnp.asarray(tridiag))
  np.testing.assert_allclose(jit_nodes, nodes, atol=1e-11 * size)
  np.testing.assert_allclose(jit_weights, weights, atol=1e-10)


@given(nodes=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=5),
       log_sigma=st.floats(-3, 2))
def test_density_integrates_to_one_on_its_default_grid(nodes, log_sigma):
  nodes = np.array([nodes])
  weights = np.full(nodes.shape, 1 / nodes.size)
  sigma = 10.0 ** log_sigma
  dens, grid = sd.eigv_to_density(nodes, weights, sigma=sigma,
                                  grid_len=20001, normalize=False)
  assert np.all(np.isfinite(dens)) and np.all(dens >= 0)
  assert grid[0] <= nodes.min() - 6 * sigma * (1 - 1e-12)
  assert grid[-1] >= nodes.max() + 6 * sigma * (1 - 1e-12)
  spacing = grid[1] - grid[0]
  if spacing < sigma / 4:  # the trapezoid rule resolves the kernel
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
