"""`lanczos_alg` and `lanczos_draws` inside `jax.jit` and `jax.vmap`, as the
original's tests call them, with the numbers of the untransformed calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp

DIM = 24
EIGENVALUES = np.r_[np.linspace(-1.0, 2.0, DIM - 2), [5.0, 9.0]]


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _matrix():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))
  return jnp.asarray((q * EIGENVALUES) @ q.T)


def test_jit_wrapped_lanczos_alg_as_in_the_original_tests():
  mat = _matrix()
  mvp = lambda v: mat @ v

  @jax.jit
  def get_tridiag(key):
    return sd.lanczos_alg(mvp, DIM, DIM, rng_key=key)[0]

  tridiag = get_tridiag(jax.random.key(0))
  assert isinstance(tridiag, jax.Array)
  eager, _ = sd.lanczos_alg(mvp, DIM, DIM, rng_key=jax.random.key(0))
  np.testing.assert_allclose(tridiag, eager, rtol=1e-12, atol=1e-13)
  # order = dim: the Ritz values are the eigenvalues (dense eigh reference).
  np.testing.assert_allclose(np.linalg.eigvalsh(tridiag),
                             np.linalg.eigvalsh(np.asarray(mat)), atol=1e-10)


@pytest.mark.parametrize('basis', ['device', 'sharded', 'none'])
def test_lanczos_alg_under_vmap_over_keys_equals_one_call_per_key(basis):
  mat = _matrix()
  mvp = lambda v: mat @ v
  keys = jax.random.split(jax.random.key(1), 3)
  batched = jax.vmap(lambda k: sd.lanczos_alg(mvp, DIM, 10, k,
                                              basis=basis)[0])(keys)
  assert batched.shape == (3, 10, 10)
  for key, tridiag in zip(keys, batched):
    eager, _ = sd.lanczos_alg(mvp, DIM, 10, key)
    np.testing.assert_allclose(tridiag, eager, rtol=1e-11, atol=1e-12)


def test_lanczos_draws_inside_jit_with_basis_and_chunks():
  mat = _matrix()
  mvp = lambda v: mat @ v
  run = jax.jit(lambda key: sd.lanczos_draws(
      mvp, DIM, 8, key, num_draws=3, draws_per_pass=2, keep_vecs=True,
      basis='sharded'))
  traced = run(jax.random.key(2))
  eager = sd.lanczos_draws(mvp, DIM, 8, jax.random.key(2), num_draws=3,
                           keep_vecs=True)
  np.testing.assert_allclose(traced.tridiag, eager.tridiag, rtol=1e-11,
                             atol=1e-12)
  np.testing.assert_allclose(traced.vecs, eager.vecs, atol=1e-11)
  np.testing.assert_array_equal(traced.num_steps, eager.num_steps)


def test_resident_operator_inside_jit_gives_the_dense_hessian_spectrum():
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(40, 3, 2)
  hvp_fn, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=10)
  get_tridiag = jax.jit(lambda key: sd.lanczos_alg(hvp_fn, n, n, key)[0])
  tridiag = get_tridiag(jax.random.key(3))
  eager, _ = sd.lanczos_alg(hvp_fn, n, n, jax.random.key(3))
  np.testing.assert_allclose(tridiag, eager, rtol=1e-10, atol=1e-12)
  exact = np.linalg.eigvalsh(tp.dense_hessian(tp.mlp_loss, params, data))
  ritz = np.linalg.eigvalsh(tridiag)
  np.testing.assert_allclose(ritz[[0, -1]], exact[[0, -1]], atol=1e-9)


@pytest.mark.parametrize('host_side,match', [
    (dict(basis='host'), "basis='host'"),
    (dict(checkpoint_dir='/tmp/never_written'), 'checkpoint_dir'),
    (dict(progress=True), 'progress'),
    ('streamed', 'a streamed operator')])
def test_host_side_modes_refuse_to_be_traced(host_side, match):
  mat = _matrix()
  matvec, dim, kwargs = (lambda v: mat @ v), DIM, host_side
  if host_side == 'streamed':
    params = tp.mlp_params(3, 3, 2)
    data = tp.classification_data(20, 3, 2)
    matvec, _, dim = sd.get_hvp_fn(tp.mlp_loss, params,
                                   tp.batches_of(data, 10))
    kwargs = {}
  with pytest.raises(ValueError, match=f'{match}.*cannot be traced'):
    jax.jit(lambda k: sd.lanczos_alg(matvec, dim, 4, k, **kwargs)[0])(
        jax.random.key(0))


def test_non_finite_product_under_jit_gives_a_nan_tridiagonal():
  mvp = lambda v: jnp.full_like(v, jnp.nan)
  tridiag = jax.jit(lambda k: sd.lanczos_alg(mvp, DIM, 4, k)[0])(
      jax.random.key(0))
  assert np.isnan(tridiag).all()
