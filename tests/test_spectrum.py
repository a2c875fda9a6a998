"""The one-call SLQ result and its estimators, against exact spectra."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import spectral_density as sd
import toy_problems as tp
from jax.flatten_util import ravel_pytree


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


def test_hessian_spectrum_passes_operator_options_through():
  # dtype= and accum_dtype= go to get_hvp_fn: float32 params cast to float64
  # give the spectrum of the float64 params (it used to raise a TypeError).
  with jax.enable_x64(True):
    params = tp.mlp_params(5, 4, 3)
    data = tp.classification_data(203, 5, 3)
    f32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    cast = sd.hessian_spectrum(tp.mlp_loss, f32, data, batch_size=50,
                               order=20, num_draws=2, dtype=jnp.float64,
                               accum_dtype=jnp.float64, precision='float64')
    exact = sd.exact_eigenvalues(tp.dense_hessian(
        tp.mlp_loss, jax.tree.map(lambda p: p.astype(jnp.float64), f32), data))
    with pytest.raises(TypeError, match='not_an_option'):
      sd.hessian_spectrum(tp.mlp_loss, params, data, batch_size=50,
                          not_an_option=1)
  np.testing.assert_allclose(cast.top_eigenvalues(3), exact[::-1][:3],
                             rtol=1e-8)


def _small_result():
  return sd.SpectrumResult(
      tridiag=np.diag([0.0, 5.0])[None], nodes=np.array([[0.0, 5.0]]),
      weights=np.array([[0.5, 0.5]]), num_steps=np.array([2]), dim=2,
      vecs=np.eye(2)[None])


BAD_INPUTS = [
    (lambda r: r.negative_mass(sigma=0.0), ValueError, 'sigma'),
    (lambda r: r.negative_mass(sigma=-1.0), ValueError, 'sigma'),
    (lambda r: r.density(sigma=0.0), ValueError, 'sigma'),
    (lambda r: r.top_eigenvalues(0), ValueError, 'k'),
    (lambda r: r.top_eigenvalues(3), ValueError, 'k'),
    (lambda r: r.top_eigenvalues(1.5), TypeError, 'k'),
    (lambda r: r.top_eigenvalues(True), TypeError, 'k'),
    (lambda r: r.eigenvalue_ratio(2), ValueError, 'k'),  # lambda_2 = 0
    (lambda r: r.ritz_vectors(1, draw=1), ValueError, 'draw'),
    (lambda r: r.ritz_vectors(1, draw=-1), ValueError, 'draw'),
    (lambda r: r.subspace_fraction(np.zeros(2), 1), ValueError, 'vector'),
    (lambda r: r.subspace_fraction(np.ones(3), 1), ValueError, 'vector'),
    (lambda r: r.subspace_fraction(np.ones((2, 1)), 1), ValueError, 'vector'),
    (lambda r: r.subspace_fraction(np.array([np.nan, 1.0]), 1), ValueError,
     'vector'),
    (lambda r: r.subspace_fraction(np.ones(2), 0), ValueError, 'k'),
    (lambda r: r.summary(k=0), ValueError, 'k'),
    (lambda r: sd.SpectrumResult(r.tridiag, r.nodes[:, :1], r.weights,
                                 r.num_steps, 2), ValueError, 'nodes'),
    (lambda r: sd.SpectrumResult(r.tridiag[0], r.nodes, r.weights,
                                 r.num_steps, 2), ValueError, 'tridiag'),
    (lambda r: sd.SpectrumResult(r.tridiag, r.nodes, r.weights,
                                 r.num_steps, 0), ValueError, 'dim'),
    (lambda r: sd.slq(np.eye(2), 2, order=2), TypeError, 'matvec'),
]


@pytest.mark.parametrize('call,error,name', BAD_INPUTS,
                         ids=[f'{i}-{c[2]}' for i, c in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_naming_the_argument(call, error, name):
  with pytest.raises(error, match=rf'^{name}\b'):
    call(_small_result())


def test_plotting_bad_inputs_name_the_argument():
  import matplotlib
  matplotlib.use('Agg')
  from spectral_density import plotting
  grid = np.linspace(0, 1, 5)
  cases = [
      (lambda: plotting.plot_density(grid, np.ones(4)), ValueError,
       'density'),
      (lambda: plotting.plot_density(grid, np.full(5, np.nan)), ValueError,
       'density'),
      (lambda: plotting.plot_density(np.ones((5, 1)), np.ones(5)), ValueError,
       'grid'),
      (lambda: plotting.plot_density(grid, np.ones(5), floor=0.0), ValueError,
       'floor'),
      (lambda: plotting.plot_density(grid, np.ones(5), log='yes'), TypeError,
       'log'),
      (lambda: plotting.plot_densities([(grid, np.ones(5))]), TypeError,
       'curves'),
      (lambda: plotting.plot_exact_eigenvalues(np.ones(3), grid, 0.0),
       ValueError, 'sigma'),
      (lambda: plotting.plot_spectrum(np.ones(3)), TypeError, 'result'),
      (lambda: plotting.plot_spectrum(_small_result(), exact=np.ones(2)),
       ValueError, 'sigma'),
  ]
  for call, error, name in cases:
    with pytest.raises(error, match=rf'^{name}\b'):
      call()


def test_results_compare_by_value(problem):
  *_, res = problem
  same = sd.SpectrumResult(res.tridiag.copy(), res.nodes.copy(),
                           res.weights.copy(), res.num_steps.copy(), res.dim,
                           None if res.vecs is None else res.vecs.copy())
  assert res == same and not res != same
  other = sd.SpectrumResult(res.tridiag * 2, res.nodes * 2, res.weights,
                            res.num_steps, res.dim)
  assert res != other
  assert (res == 'a result') is False


def test_save_and_load_agree_on_a_name_without_extension(problem, tmp_path):
  *_, res = problem
  written = res.save(tmp_path / 'spectrum')
  assert written == str(tmp_path / 'spectrum.npz')
  back = sd.SpectrumResult.load(tmp_path / 'spectrum')
  assert back == res
  assert sd.SpectrumResult.load(str(tmp_path / 'spectrum.npz')) == res


def test_ritz_vectors_and_fractions_as_parameter_pytrees(tmp_path):
  with jax.enable_x64(True):
    params = tp.mlp_params(4, 3, 2)
    data = tp.classification_data(60, 4, 2)
    res = sd.hessian_spectrum(tp.mlp_loss, params, data, batch_size=30,
                              order=23, num_draws=1, precision='float64',
                              keep_vecs=True)
    hessian = tp.dense_hessian(tp.mlp_loss, params, data)
    gradient = jax.grad(tp.mlp_loss)(params, data)
    trees = res.ritz_vectors(3, pytree=True)
    stacked = np.stack([ravel_pytree(jax.tree.map(lambda x: x[i], trees))[0]
                        for i in range(3)])
    flat_gradient = np.asarray(ravel_pytree(gradient)[0])
  ev, q = np.linalg.eigh(hessian)
  assert jax.tree.structure(trees) == jax.tree.structure(params)
  for name, leaf in params.items():
    assert trees[name].shape == (3,) + leaf.shape
  flat = res.ritz_vectors(3)
  np.testing.assert_allclose(stacked, flat, rtol=1e-12)
  # Against the exact top eigenvectors (up to sign).
  np.testing.assert_allclose(np.abs(flat @ q[:, ::-1][:, :3]), np.eye(3),
                             atol=1e-6)
  top = q[:, ::-1][:, :3]
  exact_fraction = np.sum((top.T @ flat_gradient) ** 2) / np.sum(
      flat_gradient ** 2)
  assert res.subspace_fraction(gradient, 3) == pytest.approx(exact_fraction,
                                                             rel=1e-6)
  assert res.subspace_fraction(flat_gradient, 3) == pytest.approx(
      exact_fraction, rel=1e-6)
  with pytest.raises(ValueError, match='vector: a pytree of structure'):
    res.subspace_fraction({'w1': gradient['w1']}, 3)
  loaded = sd.SpectrumResult.load(res.save(tmp_path / 'mlp'))
  assert loaded == res and loaded.params_like is None
  with pytest.raises(ValueError, match='pytree: this result does not know'):
    loaded.ritz_vectors(2, pytree=True)
def test_slq_of_a_masked_block_estimates_the_blocks_trace_and_spectrum():
  """`projection_masks` (issue 19, item 4): a 50-of-200 block, order 50
  (its size): the spectrum is the block's (`eigh`), the trace the block's
  (56, not 224), the rule of `block_spectra`."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200, 200))
  a = a @ a.T / 200
  mask = np.zeros(200)
  mask[50:100] = 1
  block = a[50:100, 50:100]
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    res = sd.slq(lambda v: mat @ v, 200, order=50, num_draws=3,
                 rng_key=jax.random.key(0), precision='float64',
                 projection_masks=np.tile(mask, (3, 1)))
    assert res.dim == 50
    assert res.trace == pytest.approx(np.trace(block), rel=1e-8)
    assert res.spectral_sum(np.square) == pytest.approx(
        np.sum(block ** 2), rel=1e-8)
    np.testing.assert_allclose(res.top_eigenvalues(3),
                               np.linalg.eigvalsh(block)[::-1][:3],
                               rtol=1e-10)
    other = np.roll(mask, 50)
    with pytest.raises(ValueError, match='projection_masks: .*same mask'):
      sd.slq(lambda v: mat @ v, 200, order=5, num_draws=2,
             projection_masks=np.stack([mask, other]))


def test_slq_of_order_one_is_the_rayleigh_quotient():
  """Order 1 (item 5): each draw's one node is ``v^T A v``; the trace is n
  times their mean."""
  diag = np.linspace(1.0, 3.0, 5)
  with jax.enable_x64(True):
    res = sd.slq(lambda v: jnp.asarray(diag) * v, 5, order=1, num_draws=3,
                 rng_key=jax.random.key(0), basis='none')
  np.testing.assert_allclose(res.nodes[:, 0], res.tridiag[:, 0, 0])
  np.testing.assert_array_equal(res.weights, 1.0)
  assert res.trace == pytest.approx(5 * res.tridiag[:, 0, 0].mean())
  assert diag[0] <= res.lambda_min <= res.lambda_max <= diag[-1]


def test_negative_mass_comes_with_an_interval_that_holds_the_exact(problem):
  """Item 12: a bulk N(0, 0.3) near 0; the unsmoothed estimate carries the
  `cdf_band` interval at 0, which holds the exact fraction, and summary()
  and to_json() report the interval with it."""
  ev, _, _, res = problem
  exact = np.mean(ev < 0)
  mass = res.negative_mass()
  assert mass.lower <= exact <= mass.upper and mass.level == 0.9
  assert mass.lower <= float(mass) <= mass.upper
  band = res.cdf_band(grid=[-1e-300])
  assert mass.lower == pytest.approx(band.lower[0])
  assert mass.upper == pytest.approx(band.upper[0])
  smoothed = res.negative_mass(0.05)
  assert smoothed.lower < np.mean(special.ndtr(-ev / 0.05)) < smoothed.upper
  assert '90% interval' in repr(mass)
  small = sd.SpectrumResult(res.tridiag[:2], res.nodes[:2], res.weights[:2],
                            res.num_steps[:2], res.dim)
  summary = json.loads(small.to_json())
  own = small.negative_mass()
  assert summary['negative_mass'] == float(own)
  assert summary['negative_mass_interval'] == [own.lower, own.upper]
  assert summary['trace_deflated'] is False


def test_density_warns_below_the_grid_spacing_and_its_default_follows():
  """Item 12: on a spectrum 1e4 wide, sigma = 1e-3 (eigenvalue units) is
  below the spacing of a 10,000-point grid and warns; the default width is
  resolved by its grid (no warning) and matches the exact smoothed density
  (L1 < 1e-3); the original's range-scaled width alone was 0.3 < spacing
  1."""
  ev = np.linspace(0.0, 1e4, 64) ** 1.0
  nodes, weights = ev[None], np.full((1, 64), 1 / 64)
  with pytest.warns(UserWarning, match='sigma: .* below the grid spacing'):
    sd.eigv_to_density(nodes, weights, sigma=1e-3)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    estimate, grid = sd.eigv_to_density(nodes, weights)
  sigma = sd.density.default_sigma(0.0, 1e4)
  assert sigma > 2 * np.diff(grid).max() * 0.99
  exact = sd.exact_density(ev, grid, sigma)
  assert np.trapezoid(np.abs(estimate - exact), grid) < 1e-3
