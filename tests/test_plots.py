"""Unit tests of experiments/plots.py on hand-made work directories.

A work directory is written here through `experiments.workdir` with known
records and the spectra of diagonal matrices (Lanczos of full order finds
their eigenvalues exactly), so every number the plots and tables read back
has an independent value.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import compare
from experiments import plots
from experiments import workdir as wd
import spectral_density as sd
from spectral_density import plotting

EIGENVALUES = np.array([-0.5, 0.0, 0.25, 1.0, 2.0, 3.0, 4.0, 9.0])


def spectrum(scale):
  """SLQ of diag(scale * EIGENVALUES), order = dimension: exact nodes."""
  diagonal = jnp.asarray(scale * EIGENVALUES, jnp.float32)
  return sd.slq(lambda v: diagonal * v, diagonal.size, order=diagonal.size,
                num_draws=2)


def make_run(path, steps=(0, 10), scale=1.0, drops=(5,), exact_step=10):
  """A finished run's files, as `experiments.train` writes them."""
  path = str(path)
  os.makedirs(os.path.join(path, wd.SPECTRA_DIR), exist_ok=True)
  with open(os.path.join(path, wd.CONFIG_FILE), 'w') as f:
    json.dump({'optimizer': {'lr_drop_steps': list(drops)}}, f)
  train_log = wd.JsonLines(os.path.join(path, wd.TRAIN_LOG), True)
  for step, loss in ((5, 2.0), (10, 0.5)):
    train_log.append({'step': step, 'loss': loss, 'accuracy': 0.5,
                      'learning_rate': 0.1})
  wd.JsonLines(os.path.join(path, wd.EVAL_LOG), True).append(
      {'step': 10, 'accuracy': 0.875, 'loss': 0.6})
  snapshots = wd.JsonLines(os.path.join(path, wd.SNAPSHOT_LOG), True)
  for step in steps:
    result = spectrum(scale * (1 + step / 10))
    result.save(wd.snapshot_path(path, step))
    record = {'step': step, 'loss': 1.0 / (1 + step), 'num_params': 8,
              'num_examples': 100, 'k': 3,
              'lambda_max': result.lambda_max,
              'lambda_min': result.lambda_min,
              'lambda_ratio': result.eigenvalue_ratio(3),
              'negative_mass': result.negative_mass(),
              'negative_mass_tol': 0.125, 'trace': result.trace,
              'gradient_concentration': 0.75, 'gradient_norm': 1.0}
    if step == exact_step:
      exact = scale * (1 + step / 10) * EIGENVALUES
      np.save(wd.exact_path(path, step), exact)
      record.update({'exact_lambda_max': float(exact[-1]),
                     'exact_lambda_min': float(exact[0]),
                     'exact_negative_mass_tol': 0.125,
                     'seconds_dense_hessian': 1.0, 'seconds_eigh': 2.0,
                     'seconds_slq': 0.5})
    snapshots.append(record)
  return path


def test_load_run_reads_back_every_file(tmp_path):
  run = plots.load_run(make_run(tmp_path))
  assert sorted(run['spectra']) == [0, 10] and sorted(run['exact']) == [10]
  np.testing.assert_allclose(run['spectra'][0].lambda_max, 9.0, rtol=1e-5)
  np.testing.assert_allclose(run['spectra'][10].lambda_max, 18.0, rtol=1e-5)
  np.testing.assert_array_equal(run['exact'][10], 2 * EIGENVALUES)
  assert [r['loss'] for r in run['train']] == [2.0, 0.5]
  assert run['eval'][0]['accuracy'] == 0.875
  assert [r['step'] for r in run['snapshots']] == [0, 10]
  assert plots.lr_drop_steps(run) == (5,)


def test_an_empty_workdir_loads_as_an_empty_run(tmp_path):
  run = plots.load_run(str(tmp_path))
  assert run == {'snapshots': [], 'config': {}, 'train': [], 'eval': [],
                 'spectra': {}, 'exact': {}}
  assert plots.lr_drop_steps(run) == ()


def test_kernel_width_and_grid_follow_the_original_rule():
  # Variance 1e-5 * max(1, width) (the original code's default).
  assert plots.kernel_sigma(0.0, 0.5) == pytest.approx(np.sqrt(1e-5))
  assert plots.kernel_sigma(-1.0, 99.0) == pytest.approx(np.sqrt(1e-3))
  grid = plots.density_grid(-1.0, 99.0, 0.1, grid_len=11)
  margin = 0.6 + 1.0
  np.testing.assert_allclose(grid, np.linspace(-1 - margin, 99 + margin, 11))


def test_summary_table_rows_are_the_records(tmp_path):
  run = plots.load_run(make_run(tmp_path))
  lines = plots.summary_table(run).splitlines()
  assert lines[0].startswith('| step | loss | λ_max | λ_min | λ_1/λ_3 |')
  assert lines[0].endswith('| exact λ_max | exact λ_min | exact neg. mass '
                           '< -1e-3 λ_max |')
  assert len(lines) == 4
  first = [c.strip() for c in lines[2].strip('|').split('|')]
  assert first[:3] == ['0', '1.0000', '9']
  assert first[-3:] == ['', '', '']
  last = [c.strip() for c in lines[3].strip('|').split('|')]
  assert last[:3] == ['10', '0.0909', '18']
  assert last[-3:] == ['18', '-1', '0.125']


def test_write_summary_states_loss_accuracy_and_timings(tmp_path):
  path = make_run(tmp_path)
  text = plots.write_summary(path)
  with open(os.path.join(path, wd.SUMMARY_FILE)) as f:
    assert f.read() == text
  assert 'Training loss at step 10: 0.5000.' in text
  assert 'Test accuracy at step 10: 0.8750.' in text
  assert '(8 parameters, 100 examples)' in text
  assert 'dense Hessian 1.0 s, eigh 2.0 s; SLQ 0.50 s' in text


def test_comparison_of_runs(tmp_path):
  a = make_run(tmp_path / 'a', steps=(0, 10), scale=1.0)
  b = make_run(tmp_path / 'b', steps=(0, 10, 20), scale=3.0, drops=(7,))
  table = plots.comparison_table([a, b], ['A', 'B']).splitlines()
  assert [row.split('|')[1].strip() for row in table[2:]] == ['A', 'B']
  # The last snapshot of each: 18 for A (step 10), 3 x 3 x 9 = 81 for B.
  assert [row.split('|')[5].strip() for row in table[2:]] == ['18', '81']
  out = str(tmp_path / 'side.png')
  assert plots.plot_spectra_side_by_side([a, b], ['A', 'B'], out) == 10
  assert os.path.getsize(out) > 5_000
  c = make_run(tmp_path / 'c', steps=(20,), exact_step=None)
  with pytest.raises(ValueError, match='no snapshot step in common'):
    plots.plot_spectra_side_by_side([a, c], ['A', 'C'], out)
  plots.plot_training_loss_variants([a, b], ['A', 'B'], out)
  assert os.path.getsize(out) > 5_000


def test_compare_writes_its_three_files_and_refuses_other_directories(
    tmp_path):
  a = make_run(tmp_path / 'a')
  b = make_run(tmp_path / 'b', scale=2.0)
  out = str(tmp_path / 'out')
  table = compare.compare([a, b], None, out)
  assert sorted(os.listdir(out)) == ['comparison.md', 'spectra.png',
                                     'training_loss.png']
  assert [row.split('|')[1].strip() for row in table.splitlines()[2:]] == [
      'a', 'b']
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='has no train_metrics.jsonl'):
    compare.compare([a, str(tmp_path / 'empty')], None, out)


def _kept_figures(monkeypatch):
  """The figures `experiments.plots` draws, kept when it closes them."""
  figures = []
  close = plots.plt.close

  def keep(fig=None):
    figures.append(fig)
    close(fig)

  monkeypatch.setattr(plots.plt, 'close', keep)
  return figures


def _caption(ax):
  texts = [t.get_text() for t in ax.texts
           if t.get_gid() == plotting.CAPTION_GID]
  return texts[0] if texts else None


def test_write_all_draws_every_figure_labelled_captioned_printable(
    tmp_path, monkeypatch):
  from PIL import Image
  figures = _kept_figures(monkeypatch)
  path = make_run(tmp_path)
  paths = plots.write_all(path)
  names = {os.path.basename(p) for p in paths}
  assert names == {wd.density_plot_name(0), wd.density_plot_name(10),
                   'densities.png', 'curvature.png', 'exact_vs_slq.png',
                   'training.png'}
  assert set(os.listdir(wd.plot_path(path, ''))) == names
  assert all(os.path.getsize(p) > 5_000 for p in paths)
  for path in paths:
    with Image.open(path) as image:
      assert image.info['dpi'] == pytest.approx((150, 150), abs=0.1), path
  by_name = dict(zip((os.path.basename(p) for p in paths), figures))
  for name, fig in by_name.items():
    for ax in fig.axes:
      assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
  # Each density figure states the kernel width (the original rule over the
  # nodes: sqrt(1e-5 x (9 - -0.5)) at step 0), order, draws and examples.
  assert _caption(by_name[wd.density_plot_name(0)].axes[0]) == (
      f'kernel sigma {np.sqrt(1e-5 * 9.5):.2g} · order 8 · 2 draws · '
      '100 examples')
  for name in ('densities.png', 'exact_vs_slq.png', wd.density_plot_name(10)):
    for ax in by_name[name].axes:
      assert _caption(ax).endswith('order 8 · 2 draws · 100 examples'), name
  # Exact and estimate differ in line style, not only in colour.
  for ax in by_name['exact_vs_slq.png'].axes:
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles['SLQ, order 8'] == '-' and styles['exact'] not in ('-', '')
  overlaid = [line.get_linestyle() for line in
              by_name['densities.png'].axes[0].lines]
  assert len(set(overlaid)) == len(overlaid) == 2
  # Losses 2.0 and 0.5 (within a decade): a linear axis from 0, not a log
  # axis zoomed onto them; accuracy on [0, 1].
  loss_ax, accuracy_ax = by_name['training.png'].axes
  assert loss_ax.get_yscale() == 'linear' and loss_ax.get_ylim()[0] == 0
  assert accuracy_ax.get_ylim() == (0, 1)


def test_plot_densities_takes_spectra_and_a_width():
  result = spectrum(1.0)                 # nodes = EIGENVALUES, exactly
  grid = np.linspace(-2, 11, 2601)
  exact = sd.exact_density(EIGENVALUES, grid, 0.2)
  ax = plotting.plot_densities({'SLQ': result, 'exact': (grid, exact)},
                               sigma=0.2, grid=grid, num_examples=64)
  slq_line, exact_line = ax.lines
  # The quadrature smoothed by hand: mean over draws of sum_i w_i N(x; t_i).
  by_hand = np.mean(np.sum(result.weights[:, None, :] * stats.norm.pdf(
      grid[None, :, None], result.nodes[:, None, :], 0.2), axis=2), axis=0)
  np.testing.assert_allclose(slq_line.get_ydata(),
                             np.maximum(by_hand, plotting.LOG_FLOOR),
                             rtol=1e-4)
  assert slq_line.get_linestyle() != exact_line.get_linestyle()
  assert _caption(ax) == 'kernel sigma 0.2 · order 8 · 2 draws · 64 examples'
  assert ax.figure.dpi == plotting.DPI
  with pytest.raises(ValueError, match='^sigma'):
    plotting.plot_densities({'SLQ': result}, sigma=-1.0)
  plots.plt.close(ax.figure)
