"""Every bad argument of the Lanczos and operator entry points gets a
ValueError or TypeError naming it (never an XLA, scan or numpy traceback)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp

MAT = jnp.diag(jnp.arange(1.0, 11.0))
KEY = jax.random.key(0)


def _lanczos(matvec=lambda v: MAT @ v, dim=10, order=3, **kwargs):
  return sd.lanczos_draws(matvec, dim, order, KEY, **kwargs)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(order=2.5), TypeError, 'order: must be an int'),
    (dict(order=True), TypeError, 'order: must be an int'),
    (dict(order=np.float32(3)), TypeError, 'order: must be an int'),
    (dict(dim=10.0), TypeError, 'dim: must be an int'),
    (dict(dim=12, order=3), ValueError, r'dim: matvec fails on a vector of '
     r'shape \[dim\] = \[12\]'),
    (dict(matvec=lambda v: (MAT @ v)[:-1]), ValueError,
     r'matvec: must return shape \[dim\] = \[10\], got \[9\]'),
    (dict(matvec=lambda v: (MAT @ v).astype(jnp.int32)), TypeError,
     'matvec: must return real floating values, got int32'),
    (dict(matvec=lambda v: (MAT @ v).astype(jnp.complex64)), TypeError,
     'matvec: must return real floating values'),
    (dict(matvec=lambda v: (v, v)), TypeError, 'matvec: must return one'),
    (dict(matvec='not a function'), TypeError, 'matvec: must be callable'),
    (dict(num_draws=0), ValueError, 'num_draws: must be >= 1'),
    (dict(num_draws=1.5), TypeError, 'num_draws: must be an int'),
    (dict(draws_per_pass=0), ValueError, 'draws_per_pass: must be >= 1'),
    (dict(draws_per_pass='2'), TypeError, 'draws_per_pass: must be an int'),
    (dict(tol=-1e-3), ValueError, r'tol: must be a float in \[0, 1\)'),
    (dict(tol=1.0), ValueError, r'tol: must be a float in \[0, 1\)'),
    (dict(tol='small'), TypeError, 'tol: must be a float'),
    (dict(reorth_passes=-1), ValueError, 'reorth_passes: must be >= 0'),
    (dict(reorth_passes=1.5), TypeError, 'reorth_passes: must be an int'),
    (dict(checkpoint_every=0), ValueError, 'checkpoint_every: must be >= 1'),
    (dict(projection_masks=np.ones((2, 10))), ValueError,
     r'projection_masks: must have shape \[num_draws, dim\] = \[1, 10\]'),
    (dict(projection_masks=np.full((1, 10), 0.5)), ValueError,
     'projection_masks: entries must be 0 or 1'),
    (dict(projection_masks=np.zeros((1, 10))), ValueError,
     'projection_masks: row 0 has no 1'),
])
def test_lanczos_bad_argument_is_named(kwargs, error, match):
  with pytest.raises(error, match=match):
    _lanczos(**kwargs)


def test_lanczos_alg_checks_its_arguments_too():
  with pytest.raises(TypeError, match='order: must be an int'):
    sd.lanczos_alg(lambda v: MAT @ v, 10, 2.5, KEY)


@pytest.fixture(scope='module')
def mlp():
  with jax.enable_x64(True):
    params = tp.mlp_params(3, 3, 2)
    data = tp.classification_data(20, 3, 2)
    yield params, data


def test_operator_dim_mismatch_is_named(mlp):
  params, data = mlp
  with jax.enable_x64(True):
    hvp_fn, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=5)
    with pytest.raises(ValueError, match=f'dim: {n + 1} does not match the '
                       f'operator, which has num_params = {n}'):
      sd.lanczos_alg(hvp_fn, n + 1, 3, KEY)
    with pytest.raises(ValueError, match='params: has 3 entries'):
      hvp_fn.with_params({'w': jnp.ones(3)})


def _generator(data):
  yield from tp.batches_of(data, 5)


@pytest.mark.parametrize('case,error,match', [
    ('batch_size=2.5', TypeError, 'batch_size: must be a positive int'),
    ('batch_size=True', TypeError, 'batch_size: must be a positive int'),
    ('batch_size=0', ValueError, 'batch_size: must be a positive int'),
    ('streamed batch_size', ValueError, 'batch_size: applies to an array'),
    ('generator', TypeError, 'dataset: an iterator or generator is read once'),
    ('iterator', TypeError, 'dataset: an iterator or generator is read once'),
    ('tuple of batches', TypeError, 'dataset: a tuple of batches'),
    ('ggn plain loss', ValueError,
     r"loss: curvature='ggn' needs the pair loss=\(model_fn, output_loss\)"),
    ('hessian pair', TypeError,
     r"loss: curvature='hessian' needs a function .* curvature='ggn'"),
])
def test_get_hvp_fn_bad_argument_is_named(mlp, case, error, match):
  params, data = mlp
  loss, batch_size, dataset, curvature = tp.mlp_loss, 5, data, 'hessian'
  batches = tp.batches_of(data, 5)
  if case.startswith('batch_size='):
    batch_size = eval(case.split('=')[1])  # pylint: disable=eval-used
  elif case == 'streamed batch_size':
    dataset = batches
  elif case == 'generator':
    dataset, batch_size = _generator(data), None
  elif case == 'iterator':
    dataset, batch_size = iter(batches), None
  elif case == 'tuple of batches':
    dataset, batch_size = tuple(batches), None
  elif case == 'ggn plain loss':
    curvature = 'ggn'
  elif case == 'hessian pair':
    loss = (tp.mlp_logits, tp.output_loss)
  with jax.enable_x64(True):
    with pytest.raises(error, match=match):
      sd.get_hvp_fn(loss, params, dataset, batch_size=batch_size,
                    curvature=curvature)


def test_a_tuple_of_arrays_is_still_a_dataset(mlp):
  """(x, y) arrays: a pytree dataset, not a tuple of batches."""
  params, data = mlp
  loss = lambda p, b: tp.mlp_loss(p, {'x': b[0], 'y': b[1]})
  with jax.enable_x64(True):
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, (data['x'], data['y']),
                                 batch_size=5)
    v = np.random.default_rng(0).normal(size=n)
    np.testing.assert_allclose(
        hvp_fn(v), tp.dense_hessian(tp.mlp_loss, params, data) @ v,
        rtol=1e-10, atol=1e-13)
