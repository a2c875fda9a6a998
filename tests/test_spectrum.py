"""The one-call SLQ result and its estimators, against exact spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import spectral_density as sd
import toy_problems as tp


@pytest.fixture(scope='module')
def problem():
  rng = np.random.default_rng(0)
  n = 400
  ev = np.sort(np.r_[rng.normal(0, 0.3, n - 5), [2.0, 3.0, 4.0, 6.0, 9.0]])
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * ev) @ q.T
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    res = sd.slq(lambda v: mat @ v, n, order=80, num_draws=20,
                 rng_key=jax.random.key(1), precision='float64',
                 keep_vecs=True)
  return ev, q, a, res


def test_top_k_ratio_and_min(problem):
  ev, _, _, res = problem
  np.testing.assert_allclose(res.top_eigenvalues(5), ev[::-1][:5], rtol=1e-10)
  assert res.eigenvalue_ratio(5) == pytest.approx(9.0 / 2.0, rel=1e-10)
  assert res.lambda_max == pytest.approx(9.0, rel=1e-12)
  assert res.lambda_min == pytest.approx(ev[0], rel=1e-3)


def test_trace_estimate_is_within_its_standard_error(problem):
  ev, _, a, res = problem
  # v^T A v for a unit Gaussian v has variance 2 (n tr(A^2) - tr(A)^2) /
  # (n^2 (n + 2)); n times the mean of 20 draws:
  n = ev.size
  var = 2 * (n * np.sum(ev ** 2) - np.sum(ev) ** 2) / (n ** 2 * (n + 2))
  stderr = n * np.sqrt(var / res.num_draws)
  assert abs(res.trace - np.trace(a)) < 4 * stderr


def test_negative_mass_matches_exact(problem):
  ev, _, _, res = problem
  sigma = 0.05
  exact = np.mean(special.ndtr(-ev / sigma))
  assert res.negative_mass(sigma) == pytest.approx(exact, abs=0.03)
  assert res.negative_mass() == pytest.approx(np.mean(ev < 0), abs=0.03)


def test_ritz_vectors_and_gradient_concentration(problem):
  ev, q, _, res = problem
  vectors = res.ritz_vectors(5)
  overlap = np.abs(vectors @ q[:, ::-1][:, :5])
  np.testing.assert_allclose(overlap, np.eye(5), atol=1e-6)
  g = q[:, -1] * 3.0 + q[:, 0] * 4.0  # 9/25 of its norm^2 in the top space
  assert res.subspace_fraction(g, 5) == pytest.approx(9 / 25, rel=1e-8)


def test_save_and_load_round_trip(problem, tmp_path):
  *_, res = problem
  res.save(tmp_path / 'spectrum.npz')
  back = sd.SpectrumResult.load(tmp_path / 'spectrum.npz')
  np.testing.assert_array_equal(back.tridiag, res.tridiag)
  assert back.summary() == res.summary()


def test_hessian_spectrum_of_a_small_mlp_equals_exact_eigenvalues():
  with jax.enable_x64(True):
    params = tp.mlp_params(5, 4, 3)
    data = tp.classification_data(203, 5, 3)
    res = sd.hessian_spectrum(tp.mlp_loss, params, data, batch_size=50,
                              order=20, num_draws=2, precision='float64')
    exact = sd.exact_eigenvalues(tp.dense_hessian(tp.mlp_loss, params, data))
  np.testing.assert_allclose(res.top_eigenvalues(3), exact[::-1][:3],
                             rtol=1e-8)
  assert res.lambda_min == pytest.approx(exact[0], rel=1e-6)


def test_plot_functions_draw_floored_log_densities():
  import matplotlib
  matplotlib.use('Agg')
  from spectral_density import plotting
  ev = np.r_[np.zeros(50), 5.0]
  grid = np.linspace(-1, 6, 701)
  res = sd.SpectrumResult(
      tridiag=np.diag([0.0, 5.0])[None], nodes=np.array([[0.0, 5.0]]),
      weights=np.array([[50 / 51, 1 / 51]]), num_steps=np.array([2]), dim=51)
  ax = plotting.plot_spectrum(res, grid=grid, sigma=0.05, exact=ev)
  assert ax.get_yscale() == 'log'
  estimate, exact = (line.get_ydata() for line in ax.get_lines()[:2])
  assert estimate.min() == pytest.approx(plotting.LOG_FLOOR)
  np.testing.assert_allclose(
      exact, np.maximum(sd.exact_density(ev, grid, 0.05), plotting.LOG_FLOOR))
