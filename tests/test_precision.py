"""The precision of a run (`precision`): product dtype, recurrence dtype and
matmul precision, each set in one place and kept; and errors that name the
argument (issue 19, items 2, 3, 7, 8, 9, 13, 14)."""

import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import spectral_density as sd
from spectral_density import precision
from tests import toy_problems as tp

ONE = jax.devices()[:1]  # (compiles faster; the devices are not the point)


def _mlp(dtype=jnp.float32, n=64, seed=0):
  params = tp.mlp_params(4, 3, 3, seed=seed, dtype=dtype)
  data = tp.classification_data(n, 4, 3)
  return params, {'x': data['x'].astype(np.float32), 'y': data['y']}


def _dense(params, data):
  """jax.hessian of the mean loss, float64 (the independent reference)."""
  with jax.enable_x64(True):
    return _dense64(params, data)


def _dense64(params, data):
  p64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
  d64 = {'x': jnp.asarray(data['x'], jnp.float64), 'y': data['y']}
  return np.asarray(tp.dense_hessian(tp.mlp_loss, p64, d64))


# Item 2 --------------------------------------------------------------------

def test_check_operator_judges_a_float32_model_by_float32_under_x64():
  # x64 on, float32 model: the products come back as float64 sums, but are
  # float32-accurate; they were judged against 100 eps(float64) and a sound
  # operator was reported asymmetric.
  with jax.enable_x64(True):
    params, data = _mlp()
    op, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                           devices=ONE)
    report = sd.check_operator(op, num_probes=2)
    probes = np.asarray(jax.random.normal(jax.random.key(0), (4, n),
                                          jnp.float32), np.float64)
    products = np.asarray(op(probes))
  assert op.dtype == jnp.float32 and products.dtype == np.float64
  assert report.dtype == 'float32'
  assert report.tolerance == pytest.approx(100 * np.finfo(np.float32).eps)
  assert report.ok, report
  # The products are float32-accurate against jax.hessian in float64 (so the
  # asymmetry is float32 rounding, not a bug), and not float64-accurate.
  exact = probes @ _dense(params, data)
  error = np.abs(products - exact).max() / np.abs(exact).max()
  assert 1e-12 < error < 1e-5


# Item 3 --------------------------------------------------------------------

def test_with_params_keeps_the_float64_products_of_dtype():
  with jax.enable_x64(True):
    params, data = _mlp()
    other, _ = _mlp(seed=1)
    op, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                             devices=ONE,
                             dtype=jnp.float64)
    moved = op.with_params(other)  # float32 params: cast as the first were
    v = np.random.default_rng(0).normal(size=n)
    out = np.asarray(moved(v))
  assert moved.dtype == jnp.float64
  exact = _dense(other, data) @ v
  np.testing.assert_allclose(out, exact, rtol=1e-11, atol=1e-13)


# Item 7 --------------------------------------------------------------------

def test_mixed_precision_takes_a_float32_function_as_float32():
  # A rank-7 float32 operator (float32 rounding makes it full rank at 1e-7):
  # 'mixed' hands it float32 vectors and stops at float32's breakdown
  # tolerance, as precision='float32' does.
  rng = np.random.default_rng(0)
  u = rng.normal(size=(40, 7)).astype(np.float32)
  a = jnp.asarray(u @ u.T)
  with jax.enable_x64(True):
    mixed = sd.slq(lambda v: a @ v, 40, order=20, precision='mixed')
    single = sd.slq(lambda v: a @ v, 40, order=20, precision='float32')
  # (float32 breaks down within a few steps of the rank; float64's tolerance
  # never does, so mixed ran all 20 steps)
  assert 7 <= int(single.num_steps[0]) <= 10
  assert 7 <= int(mixed.num_steps[0]) <= 10
  exact = np.linalg.eigvalsh(np.asarray(a, np.float64))[::-1][:7]
  np.testing.assert_allclose(mixed.top_eigenvalues(7), exact, rtol=1e-5)


# Item 8 --------------------------------------------------------------------

def _conv_problem():
  """A tiny conv net (one conv, one dense): float32 params and data."""
  rng = np.random.default_rng(0)
  params = {'k': jnp.asarray(rng.normal(size=(2, 1, 3, 3)) / 3, jnp.float32),
            'w': jnp.asarray(rng.normal(size=(2 * 16, 3)) / 6, jnp.float32)}
  data = {'x': rng.normal(size=(12, 1, 4, 4)).astype(np.float32),
          'y': rng.integers(0, 3, 12).astype(np.int32)}
  seen = []

  def loss(p, batch):
    seen.append(jax.config.jax_default_matmul_precision)
    h = jax.lax.conv(batch['x'], p['k'], (1, 1), 'SAME')
    logits = jnp.tanh(h).reshape(h.shape[0], -1) @ p['w']
    return jnp.mean(tp.cross_entropy(logits, batch['y']))
  return loss, params, data, seen


def _ops(text):
  """Lines of the lowered program that are dot_generals or convolutions."""
  return [line for line in text.splitlines()
          if 'stablehlo.dot_general' in line or 'stablehlo.convolution' in line]


@pytest.mark.parametrize('setting', [None, 'BF16_BF16_F32_X3'])
def test_loss_and_products_are_traced_under_the_matmul_precision(setting):
  loss, params, data, seen = _conv_problem()
  op, _, n = sd.get_hvp_fn(loss, params, data, batch_size=6,
                           devices=jax.devices()[:1],
                           matmul_precision=setting)
  expected = setting or 'highest'
  seen.clear()
  op.loss(), op.gradient()
  v = jnp.ones((n,), jnp.float32)
  product_text = jax.jit(op).lower(v).as_text()
  lanczos_text = jax.jit(lambda key: sd.lanczos_draws(
      op, n, 4, key, matmul_precision=setting).tridiag).lower(
          jax.random.key(0)).as_text()
  assert seen and set(seen) == {expected}
  for text in (product_text, lanczos_text):
    ops = _ops(text)
    assert any('convolution' in o for o in ops)
    assert any('dot_general' in o for o in ops)
    for o in ops:
      if setting is None:  # every one at full float32 precision
        assert 'HIGHEST' in o and 'DEFAULT' not in o, o
      elif 'dot_general' in o:  # the preset on every matmul
        assert 'algorithm = <lhs_precision_type = bf16' in o, o
        assert 'num_primitive_operations = 3' in o, o


def test_a_lanczos_run_of_a_function_carries_the_precision_everywhere():
  a = jnp.asarray(np.diag(np.linspace(0, 1, 12)), jnp.float32)
  for setting, mark in ((None, 'HIGHEST'), ('default', 'DEFAULT')):
    text = jax.jit(lambda key, s=setting: sd.lanczos_draws(
        lambda v: a @ v, 12, 5, key, matmul_precision=s).tridiag).lower(
            jax.random.key(0)).as_text()
    ops = _ops(text)
    assert len(ops) >= 3  # the product, the inner products, Gram-Schmidt
    assert all(f'precision = [{mark}, {mark}]' in o for o in ops), ops
  with pytest.raises(ValueError, match='^matmul_precision:'):
    sd.slq(lambda v: a @ v, 12, order=3, matmul_precision='bf16')


def test_float64_stays_float64_under_a_preset():
  with jax.enable_x64(True):
    params, data = _mlp(jnp.float64)
    op, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                             devices=ONE,
                             matmul_precision='BF16_BF16_F32')
    v = np.random.default_rng(0).normal(size=n)
    out = np.asarray(op(v))
    text = jax.jit(op).lower(v).as_text()
  np.testing.assert_allclose(out, _dense(params, data) @ v, rtol=1e-11,
                             atol=1e-13)
  assert all('HIGHEST' in o and 'algorithm' not in o for o in _ops(text))


# Item 9 --------------------------------------------------------------------

def test_hessian_spectrum_names_every_option():
  signature = inspect.signature(sd.hessian_spectrum)
  kinds = {p.kind for p in signature.parameters.values()}
  assert inspect.Parameter.VAR_KEYWORD not in kinds
  names = set(signature.parameters)
  operator = set(inspect.signature(sd.get_hvp_fn).parameters) - {
      'loss', 'params', 'dataset'}
  lanczos = set(inspect.signature(sd.lanczos_draws).parameters) - {
      'matvec', 'dim'}
  assert operator | lanczos <= names
  doc = inspect.getdoc(sd.hessian_spectrum)
  for name in names:
    assert re.search(rf'^  (\w+, )*{name}(, \w+)*:', doc, re.M), name


# Item 13 -------------------------------------------------------------------

def test_an_integer_leaf_is_refused_with_its_path():
  params, data = _mlp()
  with pytest.raises(TypeError, match=r"^params: leaf \['step'\] has dtype "
                     'int32.*through the loss'):
    sd.get_hvp_fn(tp.mlp_loss, {**params, 'step': jnp.int32(3)}, data,
                  batch_size=16, devices=ONE)
  # Batch-norm statistics passed with the parameters (Flax variables).
  with pytest.raises(TypeError, match=r"^params: holds the Flax collections "
                     r"\['params', 'batch_stats'\].*close over batch_stats"):
    sd.get_hvp_fn(tp.mlp_loss, {'params': params, 'batch_stats': {
        'mean': jnp.zeros(3)}}, data, batch_size=16)
  op, _, _ = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                           devices=ONE)
  with pytest.raises(TypeError, match=r"^params: leaf \['step'\]"):
    op.with_params({**params, 'step': np.int64(3)})


def test_bfloat16_params_run_in_float32():
  params, data = _mlp()
  half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  with pytest.warns(UserWarning, match='bfloat16 parameters: products and '
                    'the Lanczos recurrence are computed in float32'):
    result = sd.hessian_spectrum(tp.mlp_loss, half, data, batch_size=16,
                                 devices=ONE,
                                 order=ravel_pytree(params)[0].size)
  # The Hessian at the bfloat16 values (exactly representable in float32).
  exact = np.linalg.eigvalsh(_dense(
      jax.tree.map(lambda p: p.astype(jnp.float32), half), data))[::-1]
  np.testing.assert_allclose(result.top_eigenvalues(3), exact[:3], rtol=1e-4)


# Item 14 -------------------------------------------------------------------

def test_an_equinox_module_as_params_names_the_leaf():
  eqx = pytest.importorskip('equinox')
  model = eqx.nn.MLP(4, 3, 3, 1, activation=jnp.tanh, key=jax.random.key(0))
  data = tp.classification_data(16, 4, 3)
  loss = lambda m, b: jnp.mean(tp.cross_entropy(jax.vmap(m)(b['x']),
                                                b['y']))
  with pytest.raises(TypeError, match=r'^params: leaf .*activation.* is a '
                     '.*eqx.partition'):
    sd.get_hvp_fn(loss, model, data, batch_size=8, devices=ONE)
  # The way the message gives works, and equals jax.hessian.
  params, static = eqx.partition(model, eqx.is_inexact_array)
  op, _, n = sd.get_hvp_fn(
      lambda p, b: loss(eqx.combine(p, static), b), params, data,
      batch_size=8, devices=ONE)
  flat, unravel = ravel_pytree(params)
  full = lambda f: loss(eqx.combine(unravel(f), static),
                        jax.tree.map(jnp.asarray, data))
  v = np.random.default_rng(0).normal(size=n).astype(np.float32)
  np.testing.assert_allclose(op(v), jax.hessian(full)(flat) @ v, rtol=2e-4,
                             atol=2e-5)


def test_errors_name_the_argument():
  params, data = _mlp()
  op, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                           devices=ONE)
  with pytest.raises(TypeError, match=r'^rng_key: .*jax.random.key\(0\)'):
    sd.slq(op, n, order=3, rng_key=0)
  with pytest.raises(TypeError, match='^rng_key:'):
    sd.check_operator(op, rng_key=0)
  with pytest.raises(TypeError, match=r'^v: .*ravel_pytree'):
    op(params)
  with pytest.raises(ValueError, match=r"^dataset: leaf \['lr'\] is a scalar"):
    sd.get_hvp_fn(tp.mlp_loss, params, {**data, 'lr': np.float32(0.1)},
                  batch_size=16, devices=ONE)
  with pytest.raises(ValueError, match=r"^dataset: .*64 \(\['x'\]\), 65"):
    sd.get_hvp_fn(tp.mlp_loss, params,
                  {'x': data['x'], 'y': np.append(data['y'], 0)},
                  batch_size=16, devices=ONE)
  batches = tp.batches_of(data, 16)
  batches[1] = {'inputs': batches[1]['x'], 'y': batches[1]['y']}
  op_stream, _, _ = sd.get_hvp_fn(tp.mlp_loss, params, batches,
                                  devices=ONE)
  with pytest.raises(ValueError, match='^dataset: batch 1 has the structure'):
    op_stream(np.zeros(n, np.float32))
  assert not jax.config.jax_enable_x64
  for name in ('dtype', 'accum_dtype'):
    with pytest.raises(ValueError, match=f'^{name}: float64 needs x64'):
      sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=16,
                             devices=ONE,
                    **{name: jnp.float64})


def test_a_grain_map_dataset_is_accepted():
  grain = pytest.importorskip('grain')
  params, data = _mlp()
  examples = [jax.tree.map(lambda x, i=i: x[i], data) for i in range(64)]
  v = np.random.default_rng(0).normal(size=ravel_pytree(params)[0].size)
  exact = _dense(params, data) @ v
  for source, batch_size in ((grain.MapDataset.source(examples), 16),
                             (grain.MapDataset.source(examples).batch(16),
                              None)):
    op, _, _ = sd.get_hvp_fn(tp.mlp_loss, params, source,
                             batch_size=batch_size, devices=ONE)
    assert op.num_examples is None or op.num_examples == 64
    np.testing.assert_allclose(op(v.astype(np.float32)), exact, rtol=1e-4,
                               atol=1e-6)
    assert op.num_examples == 64


def test_precision_knobs_are_checked():
  assert precision.check_matmul_precision(None) == 'highest'
  assert precision.setting_for('BF16_BF16_F32', jnp.float64) == 'highest'
  assert precision.setting_for('BF16_BF16_F32', jnp.float32) == 'BF16_BF16_F32'
  assert precision.product_dtype(jnp.bfloat16) == jnp.float32
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert precision.product_dtype(jnp.float32) == jnp.float32


def test_the_sharded_product_is_full_float32_by_default():
  # Parameters split over a mesh take the sharded path: its default is the
  # same full float32 precision as the flat path's.
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  params, data = _mlp(jnp.float32)
  mesh = Mesh(np.array(jax.devices()), ('fsdp',))
  placed = jax.device_put(params, sd.fsdp_shardings(params, mesh))
  for setting, mark in ((None, 'HIGHEST'), ('default', 'DEFAULT')):
    op = sd.sharded_hvp_fn(tp.mlp_loss, placed, data, batch_size=16,
                           matmul_precision=setting)
    ops = _ops(op.lower_product().as_text())
    assert any('dot_general' in o for o in ops)
    assert all(f'precision = [{mark}, {mark}]' in o for o in ops
               if 'dot_general' in o), ops
