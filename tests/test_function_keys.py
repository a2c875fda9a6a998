"""Compiled programs are keyed on the function object, as `jax.jit`: a reused
loss compiles once over 50 snapshots and the caches stay bounded; a new
closure is a new computation, even with the same code (issue 19, item 1)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp
from spectral_density import batch_functions

_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _COMPILES.append(event)
    if event == '/jax/core/compile/backend_compile_duration' else None)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def test_fifty_snapshots_of_one_loss_compile_once():
  """A training loop builds its loss once and moves the parameters (as the
  experiments' probe, through `with_params` or a new operator)."""
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(30, 3, 2)
  loss = tp.mlp_loss
  compiles, cache_sizes = [], []
  for snapshot in range(50):
    moved = jax.tree.map(lambda p, s=snapshot: p * (1 + 0.01 * s), params)
    if snapshot % 2:
      hvp_fn, _, n = sd.get_hvp_fn(loss, moved, data, batch_size=10)
    else:
      hvp_fn = hvp_fn.with_params(moved) if snapshot else sd.get_hvp_fn(
          loss, moved, data, batch_size=10)[0]
      n = hvp_fn.num_params
    tridiag, _ = sd.lanczos_alg(hvp_fn, n, 4, jax.random.key(0))
    compiles.append(len(_COMPILES))
    cache_sizes.append(batch_functions.batch_function.cache_info().currsize)
  assert compiles[-1] == compiles[1], compiles
  assert len(set(cache_sizes[1:])) == 1, cache_sizes
  # The reused program computes the last snapshot's own Hessian.
  h = tp.dense_hessian(tp.mlp_loss, moved, data)
  reference, _ = sd.lanczos_alg(lambda v: jnp.asarray(h) @ v, n, 4,
                                jax.random.key(0))
  np.testing.assert_allclose(tridiag, reference, rtol=1e-9, atol=1e-12)


# The module-level loop of the issue: the lambda reads the global `A`.
_LOOP = '''
A = None
def run(sd, jnp, top):
  global A
  A = jnp.diag(jnp.linspace(0.0, top, 50))
  return sd.slq(lambda v: A @ v, 50, order=10).lambda_max
'''


def test_a_new_lambda_over_a_rebound_global_sees_the_new_value():
  module = types.ModuleType('loop')
  exec(_LOOP, module.__dict__)  # pylint: disable=exec-used
  first = module.run(sd, jnp, 1.0)
  second = module.run(sd, jnp, 100.0)
  # jax.jit of the same lambda is the reference: it sees the new A.
  reference = jax.jit(lambda v: module.A @ v)(jnp.ones(50))
  np.testing.assert_allclose(reference, np.linspace(0.0, 100.0, 50))
  assert first == pytest.approx(1.0, rel=0.05)
  assert second == pytest.approx(100.0, rel=0.05)


class _Config:
  wd = 0.0


def _weight_decay_loss(cfg):
  def loss(params, batch):
    return tp.mlp_loss(params, batch) + 0.5 * cfg.wd * sum(
        jnp.sum(p ** 2) for p in jax.tree.leaves(params))
  return loss


def test_a_loss_rebuilt_after_its_config_changed_gives_the_new_product():
  """A weight-decay sweep: the same user object, changed, then the loss
  rebuilt; `H v` must move by `wd v` (closed form)."""
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(30, 3, 2)
  cfg = _Config()
  v = np.random.default_rng(0).normal(size=20)
  products = []
  for wd in (0.0, 10.0):
    cfg.wd = wd
    hvp_fn, _, _ = sd.get_hvp_fn(_weight_decay_loss(cfg), params, data,
                                 batch_size=10)
    products.append(np.asarray(hvp_fn(v)))
  np.testing.assert_allclose(products[1] - products[0], 10.0 * v, rtol=1e-9)


class _Scale:
  def __init__(self, s):
    self.s = s


def _make_mv(scale):
  return lambda v: scale.s * v


def test_a_matvec_rebuilt_after_its_object_changed_gives_the_new_tridiagonal():
  scale = _Scale(2.0)
  first, _ = sd.lanczos_alg(_make_mv(scale), 6, 3, jax.random.key(0))
  scale.s = 5.0
  second, _ = sd.lanczos_alg(_make_mv(scale), 6, 3, jax.random.key(0))
  # The reference: jax.jit of the same function.
  np.testing.assert_allclose(jax.jit(_make_mv(scale))(jnp.ones(6)), 5.0)
  assert first[0, 0] == pytest.approx(2.0)
  assert second[0, 0] == pytest.approx(5.0)


def test_a_closure_over_a_mutated_numpy_array_is_not_reused():
  """A numpy array can change in place: a new closure sees its contents."""
  mat = np.diag(np.arange(1.0, 7.0))
  first, _ = sd.lanczos_alg(lambda v: mat @ v, 6, 6, jax.random.key(0))
  mat *= 2.0
  second, _ = sd.lanczos_alg(lambda v: mat @ v, 6, 6, jax.random.key(0))
  np.testing.assert_allclose(np.linalg.eigvalsh(first), np.arange(1.0, 7.0),
                             rtol=1e-10)
  np.testing.assert_allclose(np.linalg.eigvalsh(second),
                             2 * np.arange(1.0, 7.0), rtol=1e-10)
