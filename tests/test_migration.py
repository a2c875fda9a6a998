"""The original google/spectral-density `jax/` code's call patterns, here.

Each test writes a call the way the original's tests (`lanczos_test.py`,
`spectral_density_test.py`) and its MNIST notebook wrote it, with this
package's same-named functions, and checks the numbers against dense
references (`jax.hessian`, `numpy.linalg.eigh`) or a Gaussian mixture written
out by hand. Where this package differs on purpose (README, "Coming from the
original code"), the test says so and checks this package's number.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import spectral_density as sd


def _gaussian_mixture(grid, nodes, weights, variance, normalize=True):
  """Mean over draws of ``sum_i w_i N(grid; theta_i, variance)``, by hand."""
  total = np.zeros_like(grid)
  for draw_nodes, draw_weights in zip(nodes, weights):
    for node, weight in zip(draw_nodes, draw_weights):
      total += weight * np.exp(-(grid - node) ** 2 / (2 * variance)) / np.sqrt(
          2 * np.pi * variance)
  total /= len(nodes)
  return total / np.trapezoid(total, grid) if normalize else total


# The original's test model: stax.serial(Dense(width), Relu, Dense(out),
# LogSoftmax), so params are [(W, b), (), (W, b), ()], and its loss is a sum.
def _init_params(key, input_size, width, output_size):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return [(jax.random.normal(k1, (input_size, width)) / np.sqrt(input_size),
           0.1 * jax.random.normal(k2, (width,))), (),
          (jax.random.normal(k3, (width, output_size)) / np.sqrt(width),
           0.1 * jax.random.normal(k4, (output_size,))), ()]


def _predict(params, inputs):
  (w1, b1), _, (w2, b2), _ = params
  return jax.nn.log_softmax(jax.nn.relu(inputs @ w1 + b1) @ w2 + b2)


def _get_batch(input_size, output_size, batch_size, key):
  k1, k2 = jax.random.split(key)
  xs = jax.random.normal(k1, (batch_size, input_size))
  ys = jnp.eye(output_size)[jax.random.randint(k2, (batch_size,), 0,
                                                 output_size)]
  return xs, ys


def _sum_loss(params, batch):  # the original test's loss(y, y_hat)
  return -jnp.sum(batch[1] * _predict(params, batch[0]))


def _mean_loss(params, batch):  # the original notebook's loss
  return -jnp.mean(batch[1] * _predict(params, batch[0]))


def _jax_hessian(loss, params):
  """The reference: `jax.hessian` of ``loss(params)`` on the flat vector."""
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _original_problem(layer_sizes, batch_sizes, batch_key):
  """The original tests' problem: params, one batch, `get_hvp_fn` over a
  batches function yielding it, and `full_hessian(loss_cl, params)` with the
  batch closed over."""
  params = _init_params(jax.random.key(0), *layer_sizes)
  b = _get_batch(*batch_sizes, batch_key)

  def batches():
    yield b

  hvp, _, num_params = sd.get_hvp_fn(_sum_loss, params, batches)
  hessian = sd.full_hessian(functools.partial(_sum_loss, batch=b), params)
  return params, b, hvp, num_params, hessian


def test_get_hvp_fn_with_a_batches_function_and_full_hessian(x64):
  # spectral_density_test.testHessianVectorProduct, line for line: the
  # original's `hvp(params, v)` is `hvp(v)` here (`hvp.with_params(p)(v)` for
  # other params), and `full_hessian(loss_cl, params)` closes over the batch.
  del x64
  params, b, hvp, num_params, hessian = _original_problem(
      (4, 10, 2), (4, 2, 5), jax.random.key(1))
  loss_cl = functools.partial(_sum_loss, batch=b)
  v = np.ones(num_params)
  np.testing.assert_allclose(hvp(v), hessian @ v, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(hessian, _jax_hessian(loss_cl, params),
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(hvp.with_params(params)(v), hessian @ v,
                             rtol=1e-10, atol=1e-10)


def test_notebook_batches_function_weighs_examples_not_batches(x64):
  # The notebook: `get_hvp_fn(loss, params, batches_fn)` over a list of
  # batches, with a mean loss. With equal batches the original's mean over
  # batches and this package's mean over examples agree; with a short last
  # batch this package gives the Hessian of the mean loss over all examples,
  # the original the mean of the batch Hessians.
  del x64
  params = _init_params(jax.random.key(2), 6, 5, 3)
  flat = ravel_pytree(params)[0]
  v = np.random.default_rng(0).normal(size=flat.size)
  for sizes in ((8, 8, 8), (8, 8, 3)):
    batches_list = [_get_batch(6, 3, n, jax.random.key(10 + i))
                    for i, n in enumerate(sizes)]

    def batches_fn(batches_list=batches_list):
      for b in batches_list:
        yield b

    hvp, _, num_params = sd.get_hvp_fn(_mean_loss, params, batches_fn)
    assert num_params == flat.size
    per_batch = [_jax_hessian(functools.partial(_mean_loss, batch=b), params)
                 for b in batches_list]
    all_data = tuple(jnp.concatenate(parts) for parts in zip(*batches_list))
    full = _jax_hessian(functools.partial(_mean_loss, batch=all_data), params)
    np.testing.assert_allclose(hvp(v), full @ v, rtol=1e-10, atol=1e-12)
    original = np.mean(per_batch, axis=0) @ v
    if len(set(sizes)) == 1:
      np.testing.assert_allclose(hvp(v), original, rtol=1e-10, atol=1e-12)
    else:
      assert np.abs(hvp(v) - original).max() > 1e-3 * np.abs(original).max()


def test_lanczos_alg_on_the_hessian_spectrum(x64):
  # spectral_density_test.testHessianSpectrum: lanczos_alg(hvp_cl, num_params,
  # order, key) with a positional key, eigh of the tridiagonal against eigh of
  # the full Hessian. The original ran order 72 on 27 parameters; here order
  # must not exceed the dimension.
  del x64
  key = jax.random.key(0)
  params, b, hvp, num_params, hessian = _original_problem(
      (2, 5, 2), (2, 2, 5), jax.random.key(3))
  tridiag, vecs = sd.lanczos_alg(hvp, num_params, num_params, key)
  assert tridiag.shape == (num_params, num_params)
  assert vecs.shape == (num_params, num_params)
  eigs_triag, _ = np.linalg.eigh(tridiag)
  eigs_true, _ = np.linalg.eigh(hessian)
  assert np.max(eigs_triag) == pytest.approx(np.max(eigs_true), abs=1e-6)
  assert np.min(eigs_triag) == pytest.approx(np.min(eigs_true), abs=1e-6)


def _wishart(size):
  matrix = jax.random.normal(jax.random.key(0), (size, size))
  return jnp.dot(matrix, matrix.T)


def test_lanczos_alg_inside_jit_as_the_original_tests_wrap_it():
  # lanczos_test.testTridiagEigenvalues, float32 as in the original.
  sigma_squared, size = 1e-2, 10
  matrix = _wishart(size)
  mvp = jax.jit(lambda v: jnp.dot(matrix, v))
  eigs_true, _ = np.linalg.eigh(np.asarray(matrix, np.float64))

  @jax.jit
  def get_tridiag(key):
    return sd.lanczos_alg(mvp, matrix.shape[0], size, rng_key=key)[0]

  tridiag_matrix = get_tridiag(jax.random.key(0))
  eigs_tridiag, _ = np.linalg.eigh(np.asarray(tridiag_matrix, np.float64))
  scale = eigs_true.max()
  assert np.max(eigs_tridiag) == pytest.approx(np.max(eigs_true),
                                               abs=1e-5 * scale)
  assert np.min(eigs_tridiag) == pytest.approx(np.min(eigs_true),
                                               abs=1e-5 * scale)
  density, grids = sd.eigv_to_density(np.expand_dims(eigs_tridiag, 0),
                                      sigma_squared=sigma_squared)
  density_true, _ = sd.eigv_to_density(np.expand_dims(eigs_true, 0),
                                       grids=grids,
                                       sigma_squared=sigma_squared)
  np.testing.assert_allclose(density, density_true, atol=1e-3)
  # The same numbers as outside jit (to float32 rounding).
  outside = sd.lanczos_alg(mvp, size, size, jax.random.key(0))[0]
  np.testing.assert_allclose(
      eigs_tridiag, np.linalg.eigvalsh(np.asarray(outside, np.float64)),
      atol=1e-5 * scale)


def test_tridiag_to_density_of_a_list_of_tridiagonals(x64):
  # lanczos_test.testDensity and the notebook: tridiag_to_density(
  # [tridiag, ...], grid_len=..., sigma_squared=...). With order = dim each
  # draw's quadrature is exact: nodes the eigenvalues, weights the squared
  # components of the start vector (the first Lanczos vector) on the
  # eigenvectors. The reference mixture is written out by hand.
  del x64
  sigma_squared, size, grid_len = 1e-2, 10, 2001
  matrix = np.asarray(_wishart(size))
  evals, evecs = np.linalg.eigh(matrix)
  tridiag_list, weights = [], []
  key = jax.random.key(0)
  for _ in range(5):
    key, split = jax.random.split(key)
    tridiag, vecs = sd.lanczos_alg(lambda v: matrix @ v, size, size, split)
    tridiag_list.append(tridiag)
    weights.append((evecs.T @ vecs[0]) ** 2)
  density, grids = sd.tridiag_to_density(tridiag_list, grid_len=grid_len,
                                         sigma_squared=sigma_squared)
  variance = sigma_squared * max(1.0, evals[-1] - evals[0])
  margin = sd.density.KERNEL_MARGIN * np.sqrt(variance)
  np.testing.assert_allclose(
      grids, np.linspace(evals[0] - margin, evals[-1] + margin, grid_len),
      rtol=1e-9)
  expected = _gaussian_mixture(grids, [evals] * 5, weights, variance)
  np.testing.assert_allclose(density, expected, rtol=1e-7, atol=1e-10)
  # The original's grid and variance (grid_expand=1e-2): the mean over draws
  # of the extreme nodes -/+ 0.01, the variance scaled by that span.
  density, grids = sd.tridiag_to_density(tridiag_list, grid_len=grid_len,
                                         sigma_squared=sigma_squared,
                                         grid_expand=1e-2)
  low, high = evals[0] - 1e-2, evals[-1] + 1e-2
  np.testing.assert_allclose(grids, np.linspace(low, high, grid_len),
                             rtol=1e-9)
  expected = _gaussian_mixture(grids, [evals] * 5, weights,
                               sigma_squared * max(1.0, high - low))
  np.testing.assert_allclose(density, expected, rtol=1e-7, atol=1e-10)


def test_eigv_to_density_with_uniform_weights_and_given_grids():
  # lanczos_test: eigv_to_density(np.expand_dims(eigs, 0), sigma_squared=...)
  # then the reference on the same grids=grids.
  eigs = np.array([-1.0, 0.5, 0.5, 3.0])
  density, grids = sd.eigv_to_density(np.expand_dims(eigs, 0),
                                      sigma_squared=1e-2)
  variance = 1e-2 * 4.0
  uniform = [np.full(4, 0.25)]
  np.testing.assert_allclose(
      density, _gaussian_mixture(grids, [eigs], uniform, variance), rtol=1e-9,
      atol=1e-12)
  shifted = eigs + 0.1
  on_same, same_grids = sd.eigv_to_density(np.expand_dims(shifted, 0),
                                           grids=grids, sigma_squared=1e-2)
  assert same_grids is not None and np.array_equal(same_grids, grids)
  np.testing.assert_allclose(
      on_same, _gaussian_mixture(grids, [shifted], uniform, variance),
      rtol=1e-9, atol=1e-12)


def test_hvp_has_the_original_signature(x64):
  del x64
  params = _init_params(jax.random.key(4), 3, 4, 2)
  b = _get_batch(3, 2, 7, jax.random.key(5))
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(1).normal(size=flat.size)
  got = ravel_pytree(sd.hvp(_sum_loss, params, b, unravel(v)))[0]
  expected = _jax_hessian(functools.partial(_sum_loss, batch=b), params) @ v
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
