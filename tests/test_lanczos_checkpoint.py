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


@pytest.mark.parametrize('basis', ['device', 'sharded'])
def test_dataset_operator_resumes_inside_its_pmapped_program(tmp_path, basis):
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
                     progress=kill, basis=basis)
  resumed = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0),
                             precision='float64', checkpoint_dir=tmp_path,
                             checkpoint_every=4, basis=basis)
  np.testing.assert_allclose(resumed.tridiag, reference.tridiag, rtol=1e-12,
                             atol=1e-14)


@pytest.mark.parametrize('basis', ['host', 'device', 'sharded'])
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


@pytest.mark.parametrize('num_devices', [8, 3])
def test_sharded_basis_splits_every_vector_over_the_devices(num_devices):
  """Each device holds ceil(n / D) entries of every Lanczos vector (the last
  slice padded); the run matches the unsplit one and the dense spectrum."""
  loss, params, data = tp.conv_bn_problem(53)
  devices = jax.devices()[:num_devices]
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10,
                               devices=devices)
  seen = []
  def record(info):
    seen.append(info)
  result = sd.lanczos_draws(hvp_fn, n, n, jax.random.key(3), num_draws=2,
                            precision='float64', basis='sharded',
                            keep_vecs=True, checkpoint_every=50,
                            progress=record)
  reference = sd.lanczos_draws(hvp_fn, n, n, jax.random.key(3), num_draws=2,
                               precision='float64', keep_vecs=True)
  np.testing.assert_allclose(result.tridiag, reference.tridiag, rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(result.vecs, reference.vecs, atol=1e-10)
  k = int(result.num_steps[0])  # the Krylov space ends early: rank < n
  np.testing.assert_allclose(result.vecs[0, :k] @ result.vecs[0, :k].T,
                             np.eye(k), atol=1e-12)
  # A complete Krylov space: its extreme Ritz values are the eigenvalues.
  dense = np.linalg.eigvalsh(np.asarray(hvp_fn(jnp.eye(n))))
  ritz = np.linalg.eigvalsh(result.tridiag[0, :k, :k])
  scale = np.abs(dense).max()
  np.testing.assert_allclose(ritz[-3:], dense[-3:], atol=1e-9 * scale)
  np.testing.assert_allclose(ritz[0], dense[0], atol=1e-9 * scale)
  assert seen[-1]['ritz_max'] == pytest.approx(dense[-1], rel=1e-9)


def test_sharded_basis_state_lives_in_slices(monkeypatch):
  """The compiled program's state: [D, draws, order, ceil(n / D)] basis."""
  from spectral_density import execution  # pylint: disable=g-import-not-at-top
  shapes = []
  finish = execution.SplitOverDevices.finish
  def spy(self, states):
    shapes.append((states.basis.shape, len(states.basis.sharding.device_set)))
    return finish(self, states)
  monkeypatch.setattr(execution.SplitOverDevices, 'finish', spy)
  sd.lanczos_draws(_matvec(), 300, 10, jax.random.key(0), num_draws=2,
                   precision='float64', basis='sharded', checkpoint_every=5)
  assert shapes == [((8, 2, 10, 38), 8)]


def test_sharded_basis_with_streamed_batches_resumes(tmp_path):
  """A streamed operator's products come whole from the host loop; the split
  basis is updated on the devices and checkpointed in slices."""
  loss, params, data = tp.conv_bn_problem(53)
  batches = tp.batches_of(data, 10)
  streamed, _, n = sd.get_hvp_fn(loss, params, batches)
  resident, _, _ = sd.get_hvp_fn(loss, params, data, batch_size=10)
  reference = sd.lanczos_draws(resident, n, 12, jax.random.key(0),
                               num_draws=2, precision='float64',
                               keep_vecs=True)
  def kill(info):
    if info['step'] == 8:
      raise Killed()
  kwargs = dict(num_draws=2, precision='float64', basis='sharded',
                keep_vecs=True, checkpoint_dir=tmp_path, checkpoint_every=4)
  with pytest.raises(Killed):
    sd.lanczos_draws(streamed, n, 12, jax.random.key(0), progress=kill,
                     **kwargs)
  resumed = sd.lanczos_draws(streamed, n, 12, jax.random.key(0), **kwargs)
  np.testing.assert_allclose(resumed.tridiag, reference.tridiag, rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(resumed.vecs, reference.vecs, atol=1e-10)


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


@pytest.mark.parametrize('first,then', [
    (('sharded', 8), ('sharded', 3)), (('device', 8), ('sharded', 8)),
    (('sharded', 8), ('host', 8))])
def test_checkpoint_resumes_on_another_device_count(tmp_path, first, then):
  """A run killed on one topology resumes on another: the saved slices are
  reassembled and split the new way."""
  loss, params, data = tp.conv_bn_problem(53)
  def run(layout, **kwargs):
    basis, count = layout
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10,
                                 devices=jax.devices()[:count])
    return sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0), num_draws=2,
                            precision='float64', basis=basis, keep_vecs=True,
                            checkpoint_every=4, **kwargs)
  reference = run(('device', 8))
  def kill(info):
    if info['step'] == 8:
      raise Killed()
  with pytest.raises(Killed):
    run(first, checkpoint_dir=tmp_path, progress=kill)
  resumed_steps = []
  resumed = run(then, checkpoint_dir=tmp_path,
                progress=lambda info: resumed_steps.append(info['step']))
  assert resumed_steps == [12]  # it did resume, at step 8
  np.testing.assert_allclose(resumed.tridiag, reference.tridiag, rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(resumed.vecs, reference.vecs, atol=1e-10)


@pytest.mark.parametrize('other', ['matrix', 'with_params', 'curvature'])
def test_checkpoint_of_another_computation_is_refused(tmp_path, other):
  """A run killed on operator A and rerun with operator B in the same
  directory refuses to resume (it would mix A's state into B's run); a new
  directory runs B afresh."""
  if other == 'matrix':
    first, second, n = _matvec(seed=0), _matvec(seed=1), 300
  else:
    params = tp.mlp_params(3, 3, 2)
    data = tp.classification_data(30, 3, 2)
    first, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=10)
    if other == 'with_params':
      second = first.with_params(jax.tree.map(lambda p: 1.1 * p, params))
    else:
      second, _, _ = sd.get_hvp_fn(tp.mlp_per_example_loss, params, data,
                                   batch_size=10, curvature='fisher')
  kwargs = dict(num_draws=2, precision='float64', checkpoint_every=4)
  def kill(info):
    raise Killed()
  with pytest.raises(Killed):
    sd.lanczos_draws(first, n, 12, jax.random.key(0), progress=kill,
                     checkpoint_dir=tmp_path / 'a', **kwargs)
  why = {'matrix': 'its operator gives another product of the probe vector',
         'with_params': 'its operator gives another product of the probe',
         'curvature': "its curvature is 'hessian', this run's 'fisher'"}[other]
  with pytest.raises(ValueError, match=(
      f'checkpoint_dir: .* holds a run of another computation: {why}.*'
      'To start afresh, delete that directory or pass another '
      'checkpoint_dir')):
    sd.lanczos_draws(second, n, 12, jax.random.key(0),
                     checkpoint_dir=tmp_path / 'a', **kwargs)
  afresh = sd.lanczos_draws(second, n, 12, jax.random.key(0),
                            checkpoint_dir=tmp_path / 'b', **kwargs)
  reference = sd.lanczos_draws(second, n, 12, jax.random.key(0),
                               num_draws=2, precision='float64')
  np.testing.assert_allclose(afresh.tridiag, reference.tridiag, rtol=1e-12,
                             atol=1e-14)
