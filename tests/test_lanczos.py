"""Lanczos on matrices with known spectra: accuracy, precision, breakdown."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd


def _matrix(eigenvalues, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(eigenvalues.size, eigenvalues.size)))
  return (q * eigenvalues) @ q.T


@pytest.fixture(scope='module')
def marchenko_pastur():
  """n = 2000: a Marchenko-Pastur bulk (ratio 1/2) plus outliers 5, 10, 20
  and two negative ones, -3 and -1.5."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 4000)) / np.sqrt(4000)
  ev, q = np.linalg.eigh(x @ x.T)
  ev[-3:] = [5.0, 10.0, 20.0]
  ev[:2] = [-3.0, -1.5]
  return np.sort(ev), (q * ev) @ q.T


def test_outliers_to_1e8_relative_in_float64(marchenko_pastur):
  ev, a = marchenko_pastur
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    res = sd.slq(lambda v: mat @ v, 2000, order=90, num_draws=2,
                 rng_key=jax.random.key(1), precision='float64')
  np.testing.assert_allclose(res.top_eigenvalues(3), ev[::-1][:3], rtol=1e-8)
  np.testing.assert_allclose(res.lambda_min, ev[0], rtol=1e-8)


def test_ten_draw_density_within_l1_005_of_exact(marchenko_pastur):
  ev, a = marchenko_pastur
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    res = sd.slq(lambda v: mat @ v, 2000, order=90, num_draws=10,
                 rng_key=jax.random.key(2), precision='float64')
  sigma = 1e-3 * (ev[-1] - ev[0])
  grid = np.linspace(ev[0] - 6 * sigma, ev[-1] + 6 * sigma, 40001)
  estimate, _ = res.density(grid, sigma, normalize=False)
  exact = sd.exact_density(ev, grid, sigma)
  l1 = np.trapezoid(np.abs(estimate - exact), grid)
  assert l1 < 0.05, l1
  assert np.trapezoid(estimate, grid) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('precision', ['float32', 'mixed'])
def test_lower_precisions_find_the_outliers(marchenko_pastur, precision):
  ev, a = marchenko_pastur
  with jax.enable_x64(True):
    mat = jnp.asarray(a, jnp.float32)
    matvec = lambda v: mat @ v.astype(jnp.float32)
    tridiag, vecs = sd.lanczos_alg(matvec, 2000, 60, jax.random.key(3),
                                   precision=precision)
  assert tridiag.dtype == (np.float32 if precision == 'float32'
                           else np.float64)
  nodes, _ = sd.tridiag_to_eigv(tridiag)
  np.testing.assert_allclose(nodes[0, -3:], [5.0, 10.0, 20.0], rtol=1e-5)
  orthogonality = np.abs(vecs @ vecs.T - np.eye(60)).max()
  assert orthogonality < (1e-5 if precision == 'float32' else 1e-12)


def test_basis_is_orthonormal_and_tridiagonalises():
  ev = np.linspace(-1, 3, 300)
  a = _matrix(ev)
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    tridiag, vecs = sd.lanczos_alg(lambda v: mat @ v, 300, 40,
                                   jax.random.key(4), precision='float64')
  np.testing.assert_allclose(vecs @ vecs.T, np.eye(40), atol=1e-13)
  np.testing.assert_allclose(vecs @ a @ vecs.T, tridiag, atol=1e-12)


@pytest.mark.parametrize('case', ['low_rank', 'order_equals_dim', 'zero'])
def test_breakdown_gives_a_valid_smaller_quadrature(case):
  rng = np.random.default_rng(5)
  # valid: the Krylov space's dimension, the number of distinct eigenvalues
  # (the start vector has a component on each).
  if case == 'low_rank':
    ev, order, valid = np.r_[np.zeros(45), [1.0, 2.0, 3.0, 4.0, 5.0]], 20, 6
  elif case == 'order_equals_dim':
    ev, order, valid = rng.normal(size=30), 30, 30
  else:
    ev, order, valid = np.zeros(50), 10, 1
  a = _matrix(ev)
  products = []
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    def matvec(v):
      jax.debug.callback(lambda: products.append(1))
      return mat @ v
    res = sd.slq(matvec, ev.size, order=order, num_draws=3,
                 precision='float64')
  jax.effects_barrier()
  assert np.all(np.isfinite(res.tridiag))
  # A breakdown happened at the last counted step: its beta is an exact zero,
  # every later entry too, and no later product was made. It comes at step
  # valid - 1, or one step later: there the residual is rounding noise
  # (measured: beta_5 = 5.8e-14 in the low-rank case against tol x ||T|| =
  # 1.4e-14), the next vector lies in the null space and its beta is zero;
  # that extra step leaves every moment e1' T^k e1 of the quadrature as is.
  steps = res.num_steps
  assert np.all((steps == valid) | (steps == valid + 1)), steps
  for draw, m in enumerate(steps):
    if m < order:
      assert res.tridiag[draw, m - 1, m] == 0
      assert np.all(res.tridiag[draw, m:, :] == 0)
    for k in range(1, 6):
      moment = lambda t: np.linalg.matrix_power(t, k)[0, 0]
      assert moment(res.tridiag[draw, :m, :m]) == pytest.approx(
          moment(res.tridiag[draw, :valid, :valid]), rel=1e-12, abs=1e-12)
  assert len(products) == max(steps)
  np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, rtol=1e-12)
  assert res.lambda_max == pytest.approx(ev.max(), abs=1e-9)
  density, grid = res.density(sigma=0.1)
  assert np.all(np.isfinite(density))


def test_rademacher_start_and_draw_chunking_agree():
  a = _matrix(np.linspace(0, 1, 100))
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    full = sd.lanczos_draws(lambda v: mat @ v, 100, 10, jax.random.key(0),
                            num_draws=5, start='rademacher',
                            precision='float64')
    chunked = sd.lanczos_draws(lambda v: mat @ v, 100, 10, jax.random.key(0),
                               num_draws=5, draws_per_pass=2,
                               start='rademacher', precision='float64')
  np.testing.assert_allclose(chunked.tridiag, full.tridiag, atol=1e-12)
  assert not np.allclose(full.tridiag[0], full.tridiag[1])


def test_without_reorthogonalization_loses_orthogonality_but_runs():
  a = _matrix(np.r_[np.linspace(0, 1, 400), [50.0]])
  with jax.enable_x64(True):
    mat = jnp.asarray(a)
    tridiag, vecs = sd.lanczos_alg(lambda v: mat @ v, 401, 60,
                                   jax.random.key(0), precision='float64',
                                   basis="none")
  assert vecs is None
  nodes, _ = sd.tridiag_to_eigv(tridiag)
  # Plain Lanczos duplicates converged outliers ("ghosts") but finds them.
  assert nodes[0, -1] == pytest.approx(50.0, rel=1e-10)


def test_bad_arguments_name_the_argument():
  matvec = lambda v: v
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='order: must be >= 1'):
    sd.lanczos_alg(matvec, 10, 0, key)
  with pytest.raises(ValueError, match='precision must be one of'):
    sd.lanczos_alg(matvec, 10, 3, key, precision='half')
  with pytest.raises(ValueError, match='start must be one of'):
    sd.lanczos_alg(matvec, 10, 3, key, start='uniform')
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match='jax_enable_x64'):
      sd.lanczos_alg(matvec, 10, 3, key, precision='float64')


def test_nan_in_a_later_step_names_that_step():
  with jax.enable_x64(True):
    key = jax.random.key(0)
    # The documented start vector of draw 0; every later Lanczos vector is
    # orthogonal to it, so this operator fails first at step 1.
    v0 = jax.random.normal(jax.random.split(key, 1)[0], (20,), jnp.float64)
    v0 = v0 / jnp.linalg.norm(v0)
    mat = jnp.diag(jnp.arange(1.0, 21.0))
    matvec = lambda v: jnp.where(jnp.abs(v @ v0) > 0.5, 1.0, jnp.nan) * (mat @ v)
    with pytest.raises(FloatingPointError, match='Lanczos step 1 '):
      sd.lanczos_alg(matvec, 20, 5, key, precision='float64')


def test_nan_stops_the_compiled_run_at_that_step():
  """A non-finite product at step 1 of 40: two products, not forty."""
  products = []
  with jax.enable_x64(True):
    key = jax.random.key(0)
    v0 = jax.random.normal(jax.random.split(key, 1)[0], (20,), jnp.float64)
    v0 = v0 / jnp.linalg.norm(v0)
    mat = jnp.diag(jnp.arange(1.0, 21.0))
    def matvec(v):
      jax.debug.callback(lambda: products.append(1))
      return jnp.where(jnp.abs(v @ v0) > 0.5, 1.0, jnp.nan) * (mat @ v)
    with pytest.raises(FloatingPointError,
                       match=r'Lanczos step 1 \(draw 0\)'):
      sd.lanczos_alg(matvec, 20, 20, key, precision='float64')
  jax.effects_barrier()
  assert len(products) == 2


@pytest.mark.parametrize('basis', ['device', 'host'])
def test_nan_in_a_later_chunk_names_its_draw(basis):
  """Draw 3 of 4 (the second chunk of two) has a NaN product at step 0."""
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(0), 4)
    v3 = jax.random.normal(keys[3], (20,), jnp.float64)
    v3 = v3 / jnp.linalg.norm(v3)
    mat = jnp.diag(jnp.arange(1.0, 21.0))
    matvec = lambda v: jnp.where(jnp.abs(v @ v3) > 0.999, jnp.nan, 1.0) * (
        mat @ v)
    with pytest.raises(FloatingPointError,
                       match=r'Lanczos step 0 \(draw 3\)'):
      sd.lanczos_draws(matvec, 20, 5, jax.random.key(0), num_draws=4,
                       draws_per_pass=2, precision='float64', basis=basis)


def test_order_beyond_dim_runs_to_the_exact_spectrum():
  """The original code's own test, `lanczos_alg(hvp, 27, 72, key)` against
  `eigh` (issue 19, item 11): the run breaks down by step 27 and the
  tridiagonal is padded."""
  mat = _matrix(np.linspace(-2.0, 5.0, 27), seed=3)
  with jax.enable_x64(True):
    tridiag, vecs = sd.lanczos_alg(lambda v: jnp.asarray(mat) @ v, 27, 72,
                                   jax.random.key(0))
  assert tridiag.shape == (72, 72) and vecs.shape == (72, 27)
  nodes, weights = sd.tridiag_to_eigv(tridiag)
  assert sd.density.num_valid_steps(tridiag).tolist() == [27]
  np.testing.assert_allclose(np.sort(nodes[0, weights[0] > 0]),
                             np.linalg.eigvalsh(mat), atol=1e-12)
