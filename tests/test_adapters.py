"""Tests of spectral_density/adapters.py: Flax NNX, Equinox and linen models
as ``loss(params, batch)``, their Hessians against `jax.hessian` of the same
network written out by hand (float64), batch norm in train and eval mode,
dropout off; and `check_operator` catching a loss whose products change."""

import subprocess
import sys

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

import spectral_density as sd
from spectral_density import adapters

eqx = pytest.importorskip('equinox')

F64 = jnp.float64
# Stored running averages, far from the batch's own statistics, so that eval
# mode and train mode give different Hessians (exact in float32, the dtype of
# nnx.BatchNorm's statistics).
RUNNING_MEAN = np.array([0.25, -0.125, 0.5, 0.375])
RUNNING_VAR = np.array([2.0, 0.5, 1.5, 0.75])
EPS = 1e-5


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def batch():
  x = 1.0 + jax.random.normal(jax.random.key(1), (8, 3), F64)
  return {'x': x, 'y': jnp.arange(8) % 2}


def cross_entropy(logits, labels):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       labels[:, None], 1))


def reference_loss(w1, b1, scale, bias, w2, b2, data, running):
  """The 3-4-2 network by hand: Dense, BatchNorm (the batch's statistics, or
  the stored running ones), ReLU, Dense, mean cross-entropy; no dropout."""
  h = data['x'] @ w1 + b1
  if running:
    mean, var = RUNNING_MEAN, RUNNING_VAR
  else:
    mean, var = h.mean(0), h.var(0)
  h = jax.nn.relu((h - mean) / jnp.sqrt(var + EPS) * scale + bias)
  return cross_entropy(h @ w2 + b2, data['y'])


def library_hessian(loss, params, data):
  """Dense H through the library's dataset operator (one device)."""
  op, _, dim = sd.get_hvp_fn(loss, params, [data],
                             devices=jax.local_devices()[:1])
  return np.asarray(sd.dense_matrix(op, dim))


def hessian(loss, params, data):
  """Dense H of the adapter's loss by jax.hessian, in the flat order."""
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f), data)))(
      flat))


def reference_hessian(params, unpack, data, running):
  """jax.hessian of `reference_loss` in the flat order of `params`."""
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.jit(jax.hessian(lambda f: reference_loss(
      *unpack(unravel(f)), data, running)))(flat))


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.dense1 = nnx.Linear(3, 4, param_dtype=F64, rngs=rngs)
    self.norm = nnx.BatchNorm(4, param_dtype=F64, epsilon=EPS, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.dense2 = nnx.Linear(4, 2, param_dtype=F64, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.norm(self.dense1(x)))
    return self.dense2(self.dropout(h))


def nnx_model():
  model = NnxNet(nnx.Rngs(0))
  model.norm.mean[...] = jnp.asarray(RUNNING_MEAN, jnp.float32)
  model.norm.var[...] = jnp.asarray(RUNNING_VAR, jnp.float32)
  # Non-trivial scale and bias: the BatchNorm parameters' rows are tested.
  model.norm.scale[...] = jnp.array([1.2, 0.7, 1.0, 1.5], F64)
  model.norm.bias[...] = jnp.array([0.1, -0.3, 0.2, 0.0], F64)
  return model


def nnx_unpack(p):
  return (p['dense1']['kernel'][...], p['dense1']['bias'][...],
          p['norm']['scale'][...], p['norm']['bias'][...],
          p['dense2']['kernel'][...], p['dense2']['bias'][...])


def model_loss(model, data):
  return cross_entropy(model(data['x']), data['y'])


@pytest.mark.parametrize('batch_stats', ['batch', 'running'])
def test_nnx_hessian_with_batch_norm_and_dropout_off(batch_stats):
  model = nnx_model()  # dropout on, batch norm in train mode, as trained
  data = batch()
  loss, params = adapters.nnx_loss(model, model_loss, batch_stats=batch_stats)
  running = batch_stats == 'running'
  np.testing.assert_allclose(
      loss(params, data), reference_loss(*nnx_unpack(params), data, running),
      rtol=1e-12)
  got = library_hessian(loss, params, data)
  want = reference_hessian(params, nnx_unpack, data, running)
  assert got.shape == (34, 34)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
  # The user's module is left as it was.
  assert not model.dropout.deterministic
  assert not model.norm.use_running_average


def test_nnx_dropout_left_on_is_one_frozen_mask():
  # What the default prevents: with dropout kept, every call draws the same
  # mask (the key is fixed when the loss is built), a different Hessian.
  data = batch()
  kept, params = adapters.nnx_loss(nnx_model(), model_loss,
                                   deterministic=False)
  frozen = hessian(kept, params, data)
  np.testing.assert_array_equal(hessian(kept, params, data), frozen)
  want = reference_hessian(params, nnx_unpack, data, False)
  assert np.linalg.norm(frozen - want) > 0.1 * np.linalg.norm(want)


def test_bad_models_and_arguments_are_named():
  with pytest.raises(TypeError, match='model'):
    adapters.nnx_loss(object(), model_loss)
  with pytest.raises(ValueError, match='batch_stats'):
    adapters.nnx_loss(nnx_model(), model_loss, batch_stats='train')
  with pytest.raises(TypeError, match='model'):
    adapters.equinox_loss(nnx_model(), model_loss)
  with pytest.raises(ValueError, match='variables'):
    adapters.linen_loss(nn.Dense(2), {'batch_stats': {}}, model_loss)


class EqxNet(eqx.Module):
  dense1: eqx.nn.Linear
  norm: eqx.nn.BatchNorm
  dropout: eqx.nn.Dropout
  dense2: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.dense1 = eqx.nn.Linear(3, 4, dtype=F64, key=k1)
    self.norm = eqx.nn.BatchNorm(4, axis_name='batch', eps=EPS, mode='batch',
                                 dtype=F64)
    self.dropout = eqx.nn.Dropout(0.5)
    self.dense2 = eqx.nn.Linear(4, 2, dtype=F64, key=k2)

  def __call__(self, x, state, key=None):
    h, state = self.norm(self.dense1(x), state)
    return self.dense2(self.dropout(jax.nn.relu(h), key=key)), state


def eqx_loss_fn(model, state, data):
  logits, _ = jax.vmap(model, axis_name='batch', in_axes=(0, None),
                       out_axes=(0, None))(data['x'], state)
  return cross_entropy(logits, data['y'])


def eqx_unpack(p):
  return (p.dense1.weight.T, p.dense1.bias, p.norm.weight, p.norm.bias,
          p.dense2.weight.T, p.dense2.bias)


@pytest.mark.parametrize('batch_stats', ['batch', 'running'])
def test_equinox_hessian_with_batch_norm_and_dropout_off(batch_stats):
  model, state = eqx.nn.make_with_state(EqxNet)(jax.random.key(0))
  model = eqx.tree_at(lambda m: (m.norm.weight, m.norm.bias), model,
                      (jnp.array([1.2, 0.7, 1.0, 1.5], F64),
                       jnp.array([0.1, -0.3, 0.2, 0.0], F64)))
  # mode='batch' keeps running averages of the batch statistics (debiased);
  # one training pass on a batch of constant rows sets them to that row and
  # zero variance: replaced here by the stored values of the test.
  state = state.set(model.norm.batch_state_index, (
      jnp.asarray(RUNNING_MEAN, F64), jnp.asarray(RUNNING_VAR, F64)))
  data = batch()
  loss, params = adapters.equinox_loss(model, eqx_loss_fn, state=state,
                                       batch_stats=batch_stats)
  running = batch_stats == 'running'
  np.testing.assert_allclose(
      loss(params, data), reference_loss(*eqx_unpack(params), data, running),
      rtol=1e-12)
  np.testing.assert_allclose(
      hessian(loss, params, data),
      reference_hessian(params, eqx_unpack, data, running),
      rtol=1e-9, atol=1e-11)
  assert not model.dropout.inference


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, use_running_average, deterministic):
    h = nn.Dense(4, param_dtype=F64, name='dense1')(x)
    h = nn.BatchNorm(use_running_average=use_running_average, epsilon=EPS,
                     param_dtype=F64, name='norm')(h)
    h = nn.Dropout(0.5, deterministic=deterministic)(nn.relu(h))
    return nn.Dense(2, param_dtype=F64, name='dense2')(h)


def linen_unpack(p):
  return (p['dense1']['kernel'], p['dense1']['bias'], p['norm']['scale'],
          p['norm']['bias'], p['dense2']['kernel'], p['dense2']['bias'])


@pytest.mark.parametrize('running', [False, True])
def test_linen_hessian_with_batch_norm(running):
  module = LinenNet()
  variables = module.init(jax.random.key(0), jnp.ones((1, 3), F64),
                          use_running_average=True, deterministic=True)
  variables = {'params': variables['params'], 'batch_stats': {'norm': {
      'mean': jnp.asarray(RUNNING_MEAN, F64),
      'var': jnp.asarray(RUNNING_VAR, F64)}}}
  variables['params']['norm'] = {
      'scale': jnp.array([1.2, 0.7, 1.0, 1.5], F64),
      'bias': jnp.array([0.1, -0.3, 0.2, 0.0], F64)}
  data = batch()
  # Train mode writes the batch statistics: the helper makes the collection
  # mutable and drops the writes.
  loss, params = adapters.linen_loss(module, variables, model_loss,
                                     use_running_average=running,
                                     deterministic=True)
  np.testing.assert_allclose(
      hessian(loss, params, data),
      reference_hessian(params, linen_unpack, data, running),
      rtol=1e-9, atol=1e-11)


def test_check_operator_reports_products_that_change_between_calls():
  # Dropout whose mask is drawn afresh at every call (a key that advances,
  # as a training loop's would): no fixed operator, and the repeatability
  # check says so; the same loss with one fixed key passes.
  data = batch()
  model = nnx_model()
  _, params = adapters.nnx_loss(model, model_loss)
  flat, unravel = ravel_pytree(params)
  calls = []

  def dropout_loss(f, key):
    p = nnx_unpack(unravel(f))
    h = jax.nn.relu(
        (data['x'] @ p[0] + p[1] - data['x'].mean(0) @ p[0] - p[1]) /
        jnp.sqrt((data['x'] @ p[0]).var(0) + EPS) * p[2] + p[3])
    keep = jax.random.bernoulli(key, 0.5, h.shape)
    return cross_entropy(jnp.where(keep, 2 * h, 0) @ p[4] + p[5], data['y'])

  product = jax.jit(lambda v, key: jax.jvp(
      jax.grad(lambda f: dropout_loss(f, key)), (flat,), (v,))[1])

  def fresh_mask(v):
    calls.append(None)
    return product(v, jax.random.fold_in(jax.random.key(0), len(calls)))

  def fixed_mask(v):
    return product(v, jax.random.key(0))

  stochastic = sd.check_operator(fresh_mask, flat.size, num_probes=2)
  assert stochastic.repeat_difference > 0.1 and not stochastic.repeatable
  assert not stochastic.ok
  fixed = sd.check_operator(fixed_mask, flat.size, num_probes=2)
  assert fixed.repeatable and fixed.symmetric and fixed.ok


def test_the_library_imports_neither_flax_nor_equinox():
  code = ('import sys, spectral_density; '
          'print(sorted(m for m in ("flax", "equinox") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True, timeout=120)
  assert out.stdout.strip() == '[]'
