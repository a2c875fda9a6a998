"""Operator checks: symmetry, repeatability, dtype, against known operators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp

N = 40


def _probes(num_probes):
  return np.asarray(jax.random.normal(jax.random.key(0), (2 * num_probes, N),
                                      jnp.float32), np.float64)


def test_symmetric_operator_passes():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(N, N))
  mat = jnp.asarray(a + a.T, jnp.float32)
  report = sd.check_operator(lambda v: mat @ v, N)
  assert report.ok and report.finite
  assert report.asymmetry < 1e-5 and report.repeat_difference == 0
  assert report.dtype == 'float32'
  assert report.as_dict()['ok'] is True


def test_asymmetric_operator_reports_its_asymmetry():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(N, N))
  k = rng.normal(size=(N, N))
  k = 1e-2 * (k - k.T)
  mat = a + a.T + k
  matj = jnp.asarray(mat, jnp.float32)
  report = sd.check_operator(lambda v: matj @ v, N, num_probes=3)
  p = _probes(3)
  u, w = p[:3], p[3:]
  # u.Hw - w.Hu = 2 u.K w for H = S + K with K skew.
  expected = np.max(np.abs(2 * np.sum(u * (w @ k.T), 1)) / (
      np.linalg.norm(u, axis=1) * np.linalg.norm(w @ mat.T, axis=1)))
  assert report.asymmetry == pytest.approx(expected, rel=1e-3)
  assert not report.symmetric and not report.ok and report.repeatable


def test_random_operator_is_not_repeatable():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(N, N))
  mat = jnp.asarray(a + a.T)
  def noisy(v):  # like dropout with a fresh mask per call: traced anew
    keep = jnp.asarray(rng.random(N) > 0.1, v.dtype)
    return mat @ (keep * v)
  report = sd.check_operator(noisy, N)
  assert report.repeat_difference > 0.01
  assert not report.repeatable and not report.ok


def test_dataset_operator_float32():
  params = tp.mlp_params(5, 4, 3, dtype=jnp.float32)
  data = tp.classification_data(32, 5, 3)
  data['x'] = data['x'].astype(np.float32)
  hvp_fn, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=8)
  report = sd.check_operator(hvp_fn)
  assert report.ok, report
  assert report.dtype == 'float32' and report.tolerance == pytest.approx(
      100 * np.finfo(np.float32).eps)
  with pytest.raises(ValueError, match='dim'):
    sd.check_operator(lambda v: v)
  with pytest.raises(ValueError, match='num_probes'):
    sd.check_operator(hvp_fn, num_probes=0)
