"""Per-batch curvature products against closed forms and dense references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import spectral_density as sd
import toy_problems as tp


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def test_full_hessian_of_logistic_regression_equals_closed_form():
  data = tp.classification_data(50, 6, 2)
  data['y'] = data['y'].astype(np.float64)
  w = jnp.asarray(np.random.default_rng(1).normal(size=6))
  np.testing.assert_allclose(
      sd.full_hessian(tp.logistic_loss, w, data),
      tp.logistic_hessian(np.asarray(w), data['x'], data['y']),
      rtol=1e-12, atol=1e-14)


def test_hvp_of_mlp_equals_jax_hessian_times_v():
  data = tp.classification_data(40, 5, 3)
  params = tp.mlp_params(5, 4, 3)
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(2).normal(size=flat.size)
  expected = tp.dense_hessian(tp.mlp_loss, params, data) @ v
  got = ravel_pytree(sd.hvp(tp.mlp_loss, params, data, unravel(v)))[0]
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_full_hessian_of_batchnorm_net_equals_jax_hessian():
  loss, params, data = tp.conv_bn_problem(12)
  np.testing.assert_allclose(
      sd.full_hessian(loss, params, data, chunk_size=7),
      tp.dense_hessian(loss, params, data), rtol=1e-9, atol=1e-11)


def test_ggn_vp_equals_jacobian_form():
  data = tp.classification_data(30, 5, 3)
  params = tp.mlp_params(5, 4, 3)
  flat, unravel = ravel_pytree(params)
  logits_of = lambda f: tp.mlp_logits(unravel(f), data).ravel()
  jac = np.asarray(jax.jacobian(logits_of)(flat))        # [B*C, n]
  p = np.asarray(jax.nn.softmax(tp.mlp_logits(params, data)))
  # Hessian of mean cross-entropy in the logits: (diag(p) - p p^T) / B.
  h_out = np.zeros((p.size, p.size))
  for i, row in enumerate(p):
    block = slice(3 * i, 3 * i + 3)
    h_out[block, block] = (np.diag(row) - np.outer(row, row)) / len(p)
  v = np.random.default_rng(3).normal(size=flat.size)
  got = ravel_pytree(sd.ggn_vp(tp.mlp_logits, tp.output_loss, params, data,
                               unravel(v)))[0]
  np.testing.assert_allclose(got, jac.T @ h_out @ jac @ v, rtol=1e-10,
                             atol=1e-13)


def test_ggn_of_linear_model_equals_hessian():
  data = tp.classification_data(30, 5, 3)
  params = tp.mlp_params(5, 4, 3)
  params = {'w2': params['w2'][:1].repeat(5, 0), 'b2': params['b2']}
  logits = lambda p, b: b['x'] @ p['w2'] + p['b2']
  loss = lambda p, b: tp.output_loss(logits(p, b), b)
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(4).normal(size=flat.size)
  ggn = ravel_pytree(sd.ggn_vp(logits, tp.output_loss, params, data,
                               unravel(v)))[0]
  np.testing.assert_allclose(ggn, tp.dense_hessian(loss, params, data) @ v,
                             rtol=1e-10, atol=1e-13)


def test_fisher_vp_equals_mean_outer_product_of_example_gradients():
  data = tp.classification_data(25, 5, 3)
  params = tp.mlp_params(5, 4, 3)
  flat, unravel = ravel_pytree(params)
  grads = np.stack([
      ravel_pytree(jax.grad(tp.mlp_loss)(
          params, jax.tree.map(lambda a: a[i:i + 1], data)))[0]
      for i in range(25)])
  v = np.random.default_rng(5).normal(size=flat.size)
  got = ravel_pytree(sd.fisher_vp(tp.mlp_per_example_loss, params, data,
                                  unravel(v)))[0]
  np.testing.assert_allclose(got, grads.T @ (grads @ v) / 25, rtol=1e-10,
                             atol=1e-13)


def test_exact_eigenvalues_match_known_spectrum():
  rng = np.random.default_rng(6)
  q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
  ev = np.sort(rng.normal(size=30))
  np.testing.assert_allclose(sd.exact_eigenvalues((q * ev) @ q.T), ev,
                             atol=1e-12)


def test_full_hessian_with_the_batch_closed_over_as_in_the_original():
  # The original's form: full_hessian(loss, params) with loss(params).
  data = tp.classification_data(50, 6, 2)
  data['y'] = data['y'].astype(np.float64)
  w = jnp.asarray(np.random.default_rng(1).normal(size=6))
  closed = lambda p: tp.logistic_loss(p, data)
  np.testing.assert_allclose(
      sd.full_hessian(closed, w),
      tp.logistic_hessian(np.asarray(w), data['x'], data['y']),
      rtol=1e-12, atol=1e-14)


def test_bad_inputs_name_the_argument():
  data = tp.classification_data(10, 5, 3)
  params = tp.mlp_params(5, 4, 3)
  v = jax.tree.map(jnp.ones_like, params)
  short_v = dict(v, w1=v['w1'][:2])
  cases = [
      (lambda: sd.hvp(None, params, data, v), TypeError, 'loss'),
      (lambda: sd.hvp(tp.mlp_loss, params, data, short_v), ValueError, 'v'),
      (lambda: sd.hvp(tp.mlp_loss, params, data, [v]), ValueError, 'v'),
      (lambda: sd.ggn_vp(tp.mlp_logits, None, params, data, v), TypeError,
       'output_loss'),
      (lambda: sd.fisher_vp(tp.mlp_loss, params, data, v), ValueError,
       'per_example_loss'),
      (lambda: sd.full_hessian(tp.mlp_per_example_loss, params, data),
       ValueError, 'loss'),
      (lambda: sd.full_hessian(tp.mlp_loss, {}, data), ValueError, 'params'),
      (lambda: sd.full_hessian(tp.mlp_loss, params, data, chunk_size=0),
       ValueError, 'chunk_size'),
      (lambda: sd.dense_matrix(lambda x: x[:2], 3), ValueError, 'matvec'),
      (lambda: sd.dense_matrix(lambda x: x, 2.5), TypeError, 'dim'),
      (lambda: sd.dense_matrix(lambda x: x, 0), ValueError, 'dim'),
      (lambda: sd.exact_eigenvalues(np.ones((2, 3))), ValueError, 'matrix'),
      (lambda: sd.exact_eigenvalues(np.triu(np.ones((3, 3)))), ValueError,
       'matrix'),
      (lambda: sd.exact_eigenvalues(np.full((2, 2), np.nan)), ValueError,
       'matrix'),
      (lambda: sd.hessian.curvature_fns('ggn', tp.mlp_loss), ValueError,
       'loss'),
      (lambda: sd.hessian.curvature_fns('hess', tp.mlp_loss), ValueError,
       'curvature'),
      (lambda: sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=5,
                             curvature='ggn'), ValueError, 'loss'),
      (lambda: sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=5,
                             curvature='fisher'), ValueError, 'loss'),
  ]
  for call, error, name in cases:
    with pytest.raises(error, match=rf'^{name}\b'):
      call()
