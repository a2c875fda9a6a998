"""Compiled programs are reused across new closures of the same loss, and the
caches keyed on functions stay bounded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp
from spectral_density import batch_functions
from spectral_density import function_keys

_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _COMPILES.append(event)
    if event == '/jax/core/compile/backend_compile_duration' else None)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _make_loss(model_fn):
  """A new closure at every call, as a training loop builds per snapshot."""
  def loss(params, batch):
    return jnp.mean(tp.cross_entropy(model_fn(params, batch), batch['y']))
  return loss


def test_fifty_snapshots_with_new_loss_closures_compile_once():
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(30, 3, 2)
  compiles, cache_sizes, table_sizes = [], [], []
  for snapshot in range(50):
    moved = jax.tree.map(lambda p, s=snapshot: p * (1 + 0.01 * s), params)
    hvp_fn, _, n = sd.get_hvp_fn(_make_loss(tp.mlp_logits), moved, data,
                                 batch_size=10)
    tridiag, _ = sd.lanczos_alg(hvp_fn, n, 4, jax.random.key(0))
    compiles.append(len(_COMPILES))
    cache_sizes.append(batch_functions.batch_function.cache_info().currsize)
    table_sizes.append(len(function_keys._table))  # pylint: disable=protected-access
  assert compiles[-1] == compiles[0], compiles
  assert len(set(cache_sizes)) == 1 and len(set(table_sizes)) == 1
  # The reused program computes the last snapshot's own Hessian.
  h = tp.dense_hessian(tp.mlp_loss, moved, data)
  reference, _ = sd.lanczos_alg(lambda v: jnp.asarray(h) @ v, n, 4,
                                jax.random.key(0))
  np.testing.assert_allclose(tridiag, reference, rtol=1e-9, atol=1e-12)


def test_closures_over_other_values_stay_other_computations(monkeypatch):
  monkeypatch.setattr(function_keys, 'MAX_FUNCTIONS', 4)
  monkeypatch.setattr(function_keys, '_table', type(function_keys._table)())  # pylint: disable=protected-access
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(30, 3, 2)
  v = np.random.default_rng(0).normal(size=20)
  h = tp.dense_hessian(tp.mlp_loss, params, data)
  for scale in range(1, 8):
    weight = jnp.asarray(float(scale))  # a new array: compiled in anew
    loss = lambda p, b, w=weight: w * tp.mlp_loss(p, b)
    hvp_fn, _, _ = sd.get_hvp_fn(loss, params, data, batch_size=10)
    np.testing.assert_allclose(hvp_fn(v), scale * h @ v, rtol=1e-10)
    assert len(function_keys._table) <= 4  # pylint: disable=protected-access


def test_function_key_compares_code_and_captured_objects():
  a, b = object(), object()
  make = lambda x: (lambda v: (x, v))
  key = function_keys.function_key
  assert key(make(a)) == key(make(a))
  assert key(make(a)) != key(make(b))
  assert key(make(1.5)) == key(make(1.5)) != key(make(2.5))
  assert key(lambda v: v) != key(lambda v: v + 1)


def test_a_closure_over_a_mutated_numpy_array_is_not_reused():
  """A numpy array can change in place: its closures are never shared."""
  mat = np.diag(np.arange(1.0, 7.0))
  first, _ = sd.lanczos_alg(lambda v: mat @ v, 6, 6, jax.random.key(0))
  mat *= 2.0
  second, _ = sd.lanczos_alg(lambda v: mat @ v, 6, 6, jax.random.key(0))
  np.testing.assert_allclose(np.linalg.eigvalsh(first), np.arange(1.0, 7.0),
                             rtol=1e-10)
  np.testing.assert_allclose(np.linalg.eigvalsh(second),
                             2 * np.arange(1.0, 7.0), rtol=1e-10)
