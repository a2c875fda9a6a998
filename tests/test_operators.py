"""Full-dataset operators: example weighting, sharding, streaming, reuse."""

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


def _mlp_problem(num_examples=1003):
  return tp.mlp_loss, tp.mlp_params(5, 4, 3), tp.classification_data(
      num_examples, 5, 3)


def test_mlp_hvp_over_1003_examples_batch_100_equals_dense_full_data_hessian():
  loss, params, data = _mlp_problem()
  hvp_fn, unravel, n = sd.get_hvp_fn(loss, params, data, batch_size=100)
  # The MLP's examples are independent: the Hessian of the mean over all
  # examples, whatever the batching.
  h = tp.dense_hessian(loss, params, data)
  v = np.random.default_rng(0).normal(size=n)
  np.testing.assert_allclose(hvp_fn(v), h @ v, rtol=1e-10, atol=1e-13)
  assert n == ravel_pytree(params)[0].size
  assert jax.tree.structure(unravel(v)) == jax.tree.structure(params)


def test_batchnorm_hvp_weights_the_short_batch_by_its_size():
  loss, params, data = tp.conv_bn_problem(53)
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10)
  h = tp.batched_reference(loss, params, data, 10)
  v = np.random.default_rng(1).normal(size=n)
  np.testing.assert_allclose(hvp_fn(v), h @ v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('num_devices', [1, 2, 4, 8])
def test_tridiagonal_does_not_depend_on_device_count(num_devices):
  loss, params, data = tp.conv_bn_problem(53)
  devices = jax.local_devices()[:num_devices]
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10,
                               devices=devices)
  tridiag, _ = sd.lanczos_alg(hvp_fn, n, 12, jax.random.key(0),
                              precision='float64')
  one, _, _ = sd.get_hvp_fn(loss, params, data, batch_size=10,
                            devices=jax.local_devices()[:1])
  reference = np.asarray(jax.vmap(one)(jnp.eye(n)))
  expected = _dense_lanczos(reference, n, 12, jax.random.key(0))
  np.testing.assert_allclose(tridiag, expected, rtol=1e-5, atol=1e-9)


def _dense_lanczos(matrix, n, order, key):
  tridiag, _ = sd.lanczos_alg(lambda v: jnp.asarray(matrix) @ v, n, order,
                              key, precision='float64')
  return tridiag


def test_streamed_batches_equal_resident_dataset():
  loss, params, data = _mlp_problem(257)
  resident, _, n = sd.get_hvp_fn(loss, params, data, batch_size=32)
  batches = [jax.tree.map(lambda a, s=s: a[s:s + 32], data)
             for s in range(0, 257, 32)]
  streamed, _, _ = sd.get_hvp_fn(loss, params, batches)
  from_callable, _, _ = sd.get_hvp_fn(loss, params, lambda: iter(batches))
  v = np.random.default_rng(2).normal(size=n)
  np.testing.assert_allclose(streamed(v), resident(v), rtol=1e-12)
  np.testing.assert_allclose(from_callable(v), resident(v), rtol=1e-12)
  t_res = sd.lanczos_alg(resident, n, 10, jax.random.key(3))[0]
  t_str = sd.lanczos_alg(streamed, n, 10, jax.random.key(3))[0]
  np.testing.assert_allclose(t_str, t_res, rtol=1e-10, atol=1e-13)


def test_gradient_and_loss_are_full_data_means():
  loss, params, data = _mlp_problem(103)
  hvp_fn, _, _ = sd.get_hvp_fn(loss, params, data, batch_size=20)
  np.testing.assert_allclose(
      hvp_fn.gradient(), ravel_pytree(jax.grad(loss)(params, data))[0],
      rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(hvp_fn.loss(), loss(params, data), rtol=1e-12)


def test_ggn_and_fisher_curvatures_over_the_dataset():
  _, params, data = _mlp_problem(90)
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(4).normal(size=flat.size)
  ggn, _, _ = sd.get_hvp_fn((tp.mlp_logits, tp.output_loss), params, data,
                            batch_size=30, curvature='ggn')
  fisher, _, _ = sd.get_hvp_fn(tp.mlp_per_example_loss, params, data,
                               batch_size=30, curvature='fisher')
  expected_ggn = ravel_pytree(sd.ggn_vp(tp.mlp_logits, tp.output_loss, params,
                                        data, unravel(v)))[0]
  expected_fisher = ravel_pytree(sd.fisher_vp(
      tp.mlp_per_example_loss, params, data, unravel(v)))[0]
  np.testing.assert_allclose(ggn(v), expected_ggn, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(fisher(v), expected_fisher, rtol=1e-10,
                             atol=1e-14)


def test_new_parameters_reuse_the_compiled_lanczos_program():
  traces = []
  def loss(params, batch):
    traces.append(1)  # Runs only while JAX traces.
    return tp.mlp_loss(params, batch)
  _, params, data = _mlp_problem(100)
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=25)
  first = sd.lanczos_alg(hvp_fn, n, 8, jax.random.key(0))[0]
  after_first = len(traces)
  moved = jax.tree.map(lambda p: p + 0.1, params)
  second = sd.lanczos_alg(hvp_fn.with_params(moved), n, 8,
                          jax.random.key(0))[0]
  rebuilt, _, _ = sd.get_hvp_fn(loss, moved, data, batch_size=25)
  third = sd.lanczos_alg(rebuilt, n, 8, jax.random.key(0))[0]
  assert len(traces) == after_first
  assert not np.allclose(first, second)
  np.testing.assert_allclose(second, third, rtol=1e-12)


def test_bad_inputs_name_the_argument():
  loss, params, data = _mlp_problem(20)
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=5)
  with pytest.raises(ValueError, match='v: expected shape'):
    hvp_fn(np.zeros(n + 1))
  with pytest.raises(ValueError, match='dataset: has 0 examples'):
    sd.get_hvp_fn(loss, params, jax.tree.map(lambda a: a[:0], data),
                  batch_size=5)
  with pytest.raises(ValueError, match='dataset: the batch stream'):
    sd.get_hvp_fn(loss, params, [])
  with pytest.raises(ValueError, match='loss: .* must return a scalar'):
    sd.get_hvp_fn(tp.mlp_per_example_loss, params, data, batch_size=5)
  with pytest.raises(ValueError, match='batch_size'):
    sd.get_hvp_fn(loss, params, data)
  with pytest.raises(ValueError, match='curvature must be one of'):
    sd.get_hvp_fn(loss, params, data, batch_size=5, curvature='hesian')


def test_non_finite_product_raises_with_the_lanczos_step():
  loss, params, data = _mlp_problem(20)
  data['x'][3, 0] = np.nan
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=5)
  with pytest.raises(FloatingPointError, match='Lanczos step 0'):
    sd.lanczos_alg(hvp_fn, n, 4, jax.random.key(0))


def test_float64_precision_computes_products_in_float64():
  """float32 params and data: precision='float64' gives the tridiagonal of
  the float64 model; 'mixed' keeps the float32 products."""
  params = tp.mlp_params(5, 4, 3, dtype=jnp.float32)
  data = tp.classification_data(60, 5, 3)
  data32 = dict(data, x=data['x'].astype(np.float32))
  hvp32, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data32, batch_size=20)
  params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  hvp64, _, _ = sd.get_hvp_fn(tp.mlp_loss, params64, data32, batch_size=20)
  key = jax.random.key(0)
  reference = sd.lanczos_alg(hvp64, n, 10, key, precision='float64')[0]
  for basis in ('device', 'host'):
    tridiag = sd.lanczos_alg(hvp32, n, 10, key, precision='float64',
                             basis=basis)[0]
    np.testing.assert_allclose(tridiag, reference, rtol=1e-12, atol=1e-15)
  streamed, _, _ = sd.get_hvp_fn(tp.mlp_loss, params,
                                 tp.batches_of(data32, 20))
  np.testing.assert_allclose(
      sd.lanczos_alg(streamed, n, 10, key, precision='float64')[0],
      reference, rtol=1e-12, atol=1e-15)
  mixed = sd.lanczos_alg(hvp32, n, 10, key, precision='mixed')[0]
  assert np.abs(mixed - reference).max() > 1e-10  # float32 products
  np.testing.assert_allclose(mixed, reference, rtol=1e-4, atol=1e-5)
  assert hvp32.dtype == np.float32  # the operator itself is unchanged


def test_non_finite_streamed_product_stops_after_one_pass():
  loss, params, data = _mlp_problem(20)
  data['x'][3, 0] = np.nan
  passes = []
  def batches():
    passes.append(1)
    return iter(tp.batches_of(data, 5))
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, batches)
  passes.clear()
  with pytest.raises(FloatingPointError, match=r'Lanczos step 0 \(draw 0\)'):
    sd.lanczos_alg(hvp_fn, n, 8, jax.random.key(0))
  assert len(passes) == 1


def test_gradient_and_loss_raise_on_non_finite_values():
  loss, params, data = _mlp_problem(20)
  data['x'][3, 0] = np.nan
  for dataset, kwargs in ((data, dict(batch_size=5)),
                          (tp.batches_of(data, 5), {})):
    hvp_fn, _, _ = sd.get_hvp_fn(loss, params, dataset, **kwargs)
    with pytest.raises(FloatingPointError, match='gradient: the mean over'):
      hvp_fn.gradient()
    with pytest.raises(FloatingPointError, match='loss: the mean over'):
      hvp_fn.loss()


@pytest.mark.parametrize('num_examples', [80, 160])
def test_batches_that_divide_evenly_over_8_devices_equal_dense(num_examples):
  """No remainder batch (80 and 160 examples, batch 10, 8 devices): the
  weights must still be split with the data. pmap once passed them whole
  when the remainder was None, here with one parameter leaf and two data
  leaves, and the product failed (or would have mixed devices' weights)."""
  assert jax.local_device_count() == 8
  data = tp.classification_data(num_examples, 5, 3)
  params = {'w': jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))}

  def loss(p, batch):
    return tp.output_loss(batch['x'] @ p['w'], batch)

  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10)
  dense = tp.dense_hessian(loss, params, data)
  v = np.random.default_rng(2).normal(size=n)
  np.testing.assert_allclose(hvp_fn(v), dense @ v, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(
      hvp_fn.gradient(), ravel_pytree(jax.grad(loss)(params, data))[0],
      rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(hvp_fn.loss(), loss(params, data), rtol=1e-12)
  sharded = sd.hessian_spectrum(loss, params, data, batch_size=10, order=n,
                                rng_key=jax.random.key(0), basis='sharded')
  np.testing.assert_allclose(np.sort(np.asarray(sharded.nodes[0])),
                             np.linalg.eigvalsh(dense), atol=1e-9)
  # Streamed in groups of 8 equal batches: the same (its pmap had the same
  # fault for the gradient and the loss, which pass no vector).
  streamed, _, _ = sd.get_hvp_fn(loss, params, tp.batches_of(data, 10))
  np.testing.assert_allclose(streamed(v), dense @ v, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(
      streamed.gradient(), ravel_pytree(jax.grad(loss)(params, data))[0],
      rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(streamed.loss(), loss(params, data), rtol=1e-12)
