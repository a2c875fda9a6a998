"""Resumable Lanczos, basis placement and progress reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp


class Killed(Exception):
  pass


def _matvec(n=300, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = jnp.asarray((q * np.r_[np.linspace(0, 1, n - 1), 7.0]) @ q.T)
  return lambda v: a @ v


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize('kill_after_reports', [1, 3, 5])
def test_killed_run_resumes_to_the_same_tridiagonal(tmp_path,
                                                    kill_after_reports):
  matvec = _matvec()
  kwargs = dict(num_draws=2, precision='float64', checkpoint_every=7)
  uninterrupted = sd.lanczos_draws(matvec, 300, 40, jax.random.key(0),
                                   **kwargs)
  reports = []
  def kill(info):
    reports.append(info['step'])
    if len(reports) == kill_after_reports:
      raise Killed()
  with pytest.raises(Killed):
    sd.lanczos_draws(matvec, 300, 40, jax.random.key(0), progress=kill,
                     checkpoint_dir=tmp_path, **kwargs)
  resumed_steps = []
  resumed = sd.lanczos_draws(
      matvec, 300, 40, jax.random.key(0), checkpoint_dir=tmp_path,
      progress=lambda info: resumed_steps.append(info['step']), **kwargs)
  assert resumed_steps[0] == min(7 * kill_after_reports + 7, 40)
  np.testing.assert_array_equal(resumed.tridiag, uninterrupted.tridiag)
  single_program = sd.lanczos_draws(matvec, 300, 40, jax.random.key(0),
                                    num_draws=2, precision='float64')
  np.testing.assert_allclose(resumed.tridiag, single_program.tridiag,
                             rtol=1e-12, atol=1e-14)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
  matvec = _matvec()
  sd.lanczos_draws(matvec, 300, 10, jax.random.key(0), precision='float64',
                   checkpoint_dir=tmp_path, checkpoint_every=5)
  with pytest.raises(ValueError, match='checkpoint_dir: .* other settings'):
    sd.lanczos_draws(matvec, 300, 10, jax.random.key(1), precision='float64',
                     checkpoint_dir=tmp_path, checkpoint_every=5)


def test_dataset_operator_resumes_inside_its_pmapped_program(tmp_path):
  loss, params, data = tp.conv_bn_problem(53)
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10)
  reference = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0),
                               precision='float64')
  def kill(info):
    if info['step'] == 8:
      raise Killed()
  with pytest.raises(Killed):
    sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0), precision='float64',
                     checkpoint_dir=tmp_path, checkpoint_every=4,
                     progress=kill)
  resumed = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0),
                             precision='float64', checkpoint_dir=tmp_path,
                             checkpoint_every=4)
  np.testing.assert_allclose(resumed.tridiag, reference.tridiag, rtol=1e-12,
                             atol=1e-14)


@pytest.mark.parametrize('basis', ['host', 'device'])
def test_basis_in_host_memory_gives_the_device_result(basis):
  matvec = _matvec()
  reference = sd.lanczos_draws(matvec, 300, 30, jax.random.key(2),
                               num_draws=3, precision='float64',
                               keep_vecs=True)
  result = sd.lanczos_draws(matvec, 300, 30, jax.random.key(2), num_draws=3,
                            precision='float64', keep_vecs=True, basis=basis)
  np.testing.assert_allclose(result.tridiag, reference.tridiag, rtol=1e-12,
                             atol=1e-14)
  np.testing.assert_allclose(result.vecs, reference.vecs, atol=1e-12)


def test_progress_reports_steps_timing_and_ritz_values(capsys):
  matvec = _matvec()
  reports = []
  sd.lanczos_draws(matvec, 300, 30, jax.random.key(0), precision='float64',
                   checkpoint_every=10, progress=reports.append)
  assert [r['step'] for r in reports] == [10, 20, 30]
  assert reports[-1]['eta_seconds'] == 0
  assert all(r['seconds_per_product'] > 0 for r in reports)
  assert reports[-1]['ritz_max'] == pytest.approx(7.0, rel=1e-10)
  sd.lanczos_draws(matvec, 300, 20, jax.random.key(0), precision='float64',
                   progress=True)
  line = capsys.readouterr().err.strip().split('\r')[-1]
  assert line.startswith('Lanczos draws 0-0: step 20/20') and 'Ritz' in line
