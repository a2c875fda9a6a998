"""Figures and the summary table of a training run, read back from its workdir.

Everything here reads only the files `experiments.train` writes, so a workdir
can be re-plotted, or several compared, after the fact:

  write_all(workdir)      WORKDIR/plots/*.png (see the function).
  write_summary(workdir)  WORKDIR/summary.md, returned as a string.
  plot_training_loss_variants, plot_spectra_side_by_side
                          several workdirs (e.g. the batch-norm variants) on
                          one figure; `python -m experiments.compare`.

Densities are drawn on a log scale floored at 1e-7, as in the paper, with a
Gaussian kernel of variance ``1e-5 * max(1, width)`` (the original code's
default; `width` the spread of the Ritz values).
"""

import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import workdir as wd
import spectral_density as sd
from spectral_density import density as density_lib
from spectral_density import plotting

GRID_LEN = 4000


def load_run(workdir):
  """The records and spectra of a workdir (layout: `experiments.workdir`).

  Returns:
    {'snapshots': [records of spectra/metrics.jsonl], 'config': the run's
    config as a dict ({} if absent), 'train': [...], 'eval': [...],
    'spectra': {step: SpectrumResult}, 'exact': {step: eigenvalues [n]}}.
  """
  spectra, exact = {}, {}
  for step in wd.snapshot_steps(workdir):
    spectra[step] = sd.SpectrumResult.load(wd.snapshot_path(workdir, step))
    if os.path.exists(wd.exact_path(workdir, step)):
      exact[step] = np.load(wd.exact_path(workdir, step))
  config_path = os.path.join(workdir, wd.CONFIG_FILE)
  config = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return {'snapshots': wd.read_jsonl(os.path.join(workdir, wd.SNAPSHOT_LOG)),
          'config': config,
          'train': wd.read_jsonl(os.path.join(workdir, wd.TRAIN_LOG)),
          'eval': wd.read_jsonl(os.path.join(workdir, wd.EVAL_LOG)),
          'spectra': spectra, 'exact': exact}


# The kernel width rule is the library's (the original's convention).
kernel_sigma = density_lib.kernel_sigma


def _support(result):
  nodes, _ = density_lib.weighted_nodes(result.nodes, result.weights)
  if not nodes.size:
    nodes = result.nodes.ravel()
  return float(nodes.min()), float(nodes.max())


def density_grid(low, high, sigma, grid_len=GRID_LEN):
  """A grid covering [low, high] with 6 kernel widths to spare."""
  margin = 6 * sigma + 1e-2 * (high - low)
  return np.linspace(low - margin, high + margin, grid_len)


def plot_snapshot(result, path, *, exact=None, title=None, num_examples=None):
  """One snapshot's density (with the exact density when given)."""
  low, high = _support(result)
  if exact is not None:
    low, high = min(low, float(exact.min())), max(high, float(exact.max()))
  sigma = kernel_sigma(low, high)
  grid = density_grid(low, high, sigma)
  fig, ax = plt.subplots(figsize=(6, 4))
  plotting.plot_spectrum(result, grid=grid, sigma=sigma, exact=exact, ax=ax,
                         label=f'SLQ (order {result.order}, '
                               f'{result.num_draws} draw'
                               f'{"s" if result.num_draws > 1 else ""})',
                         num_examples=num_examples)
  ax.set_title(title or '')
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def plot_snapshots_overlaid(spectra, path, *, title='Hessian spectrum during '
                            'training', num_examples=None):
  """Every snapshot's density on one log-scale axis, a colour per step."""
  supports = [_support(r) for r in spectra.values()]
  low = min(s[0] for s in supports)
  high = max(s[1] for s in supports)
  sigma = kernel_sigma(low, high)
  grid = density_grid(low, high, sigma)
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=plotting.DPI)
  colours = plt.cm.viridis(np.linspace(0, 0.9, len(spectra)))
  styles = plotting.LINE_STYLES
  for i, (colour, (step, result)) in enumerate(
      zip(colours, sorted(spectra.items()))):
    density, _ = result.density(grid, sigma)
    plotting.plot_density(grid, density, ax=ax, label=f'step {step}',
                          color=colour, linewidth=1,
                          linestyle=styles[i % len(styles)])
  orders = {r.order for r in spectra.values()}
  draws = {r.num_draws for r in spectra.values()}
  plotting.annotate_density(
      ax, sigma, order=orders.pop() if len(orders) == 1 else None,
      num_draws=draws.pop() if len(draws) == 1 else None,
      num_examples=num_examples)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def lr_drop_steps(run):
  """The learning-rate drops of a run (from its config.json), or ()."""
  return tuple(run.get('config', {}).get('optimizer', {}).get(
      'lr_drop_steps', ()))


def _mark_drops(axes, drops):
  for ax in axes:
    for i, step in enumerate(drops):
      ax.axvline(step, color='grey', linestyle=':', linewidth=1,
                 label='learning-rate drop' if i == 0 else None)


def plot_curvature_over_training(records, path, lr_drops=()):
  """lambda_max and the gradient concentration against the training step."""
  steps = [r['step'] for r in records]
  fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
  axes[0].plot(steps, [r['lambda_max'] for r in records], 'o-')
  lambda_max = [r['lambda_max'] for r in records]
  if min(lambda_max) > 0 and max(lambda_max) > 10 * min(lambda_max):
    axes[0].set_yscale('log')
  elif min(lambda_max) > 0:
    axes[0].set_ylim(bottom=0)     # from 0: small changes look small
  axes[0].set_ylabel(r'$\lambda_{max}$')
  axes[0].set_title('largest Hessian eigenvalue')
  axes[1].plot(steps, [r['gradient_concentration'] for r in records], 'o-',
               color='tab:red')
  axes[1].set_ylim(-0.02, 1.02)
  k = records[0].get('k', 'k')
  axes[1].set_ylabel(rf'$\|P_{{{k}}} g\|^2 / \|g\|^2$')
  axes[1].set_title(f'gradient in the top-{k} eigenspace')
  # How the top eigenspace moves: overlap with the previous snapshot's top-k
  # space, and the share of the gradient in that previous space.
  tracked = [r for r in records if r.get('subspace_overlap') is not None]
  axes[2].plot([r['step'] for r in tracked],
               [r['subspace_overlap'] for r in tracked], 'o-',
               label='overlap with previous top-k space')
  axes[2].plot([r['step'] for r in tracked],
               [r['gradient_fraction_previous'] for r in tracked], 's--',
               label='gradient in previous top-k space')
  axes[2].set_ylim(-0.02, 1.02)
  axes[2].set_ylabel('fraction')
  axes[2].set_title(f'top-{k} eigenspace over training')
  axes[2].legend(fontsize=8)
  _mark_drops(axes, lr_drops)
  for ax in axes:
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
  if lr_drops:
    axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def plot_exact_vs_slq(result, eigenvalues, path, *, step=None,
                      num_examples=None):
  """The paper's accuracy figure: exact density against the SLQ estimate.

  Left: the whole spectrum; right: the bulk around 0. Same kernel for both.
  """
  eigenvalues = np.asarray(eigenvalues)
  low, high = float(eigenvalues.min()), float(eigenvalues.max())
  sigma = kernel_sigma(low, high)
  grid = density_grid(low, high, sigma, grid_len=20001)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  label = f'SLQ, order {result.order}'
  for ax in axes:
    plotting.plot_spectrum(result, grid=grid, sigma=sigma, exact=eigenvalues,
                           ax=ax, label=label, num_examples=num_examples)
  width = high - low
  axes[1].set_xlim(min(low, 0) - 5 * sigma, 0.1 * width)
  where = '' if step is None else f' at step {step}'
  axes[0].set_title(f'exact vs SLQ{where} ({eigenvalues.size:,} parameters)')
  axes[1].set_title('near 0')
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def loss_axis(ax, losses):
  """A training-loss y axis that shows the trend, not the noise: log scale
  when the losses span more than a decade, else linear from 0."""
  losses = np.asarray(losses, float)
  losses = losses[np.isfinite(losses)]
  if losses.size and losses.min() > 0 and losses.max() > 10 * losses.min():
    ax.set_yscale('log')
  elif losses.size and losses.min() >= 0:
    ax.set_ylim(0, 1.05 * losses.max())
  ax.set_ylabel('training loss')


def plot_training_loss(train, evals, path, lr_drops=()):
  """Training loss and test accuracy (from 0 to 1) against the step."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  axes[0].plot([r['step'] for r in train], [r['loss'] for r in train])
  loss_axis(axes[0], [r['loss'] for r in train])
  if evals:
    axes[1].plot([r['step'] for r in evals], [r['accuracy'] for r in evals],
                 'o-')
  axes[1].set_ylim(0, 1)
  axes[1].set_ylabel('test accuracy')
  _mark_drops(axes, lr_drops)
  if lr_drops:
    axes[0].legend()
  for ax in axes:
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def write_all(workdir):
  """Writes every figure of a run to WORKDIR/plots; returns their paths.

  density_step_XXXXXXX.png (each snapshot, with the exact density where it
  was computed), densities.png (snapshots overlaid), curvature.png
  (lambda_max and gradient concentration over training), exact_vs_slq.png
  (the paper's accuracy figure, at the last step with the exact spectrum),
  training.png (loss and test accuracy).
  """
  run = load_run(workdir)
  os.makedirs(wd.plot_path(workdir, ''), exist_ok=True)
  paths = []

  def path(name):
    paths.append(wd.plot_path(workdir, name))
    return paths[-1]

  examples = {r['step']: r.get('num_examples') for r in run['snapshots']}
  for step, result in sorted(run['spectra'].items()):
    plot_snapshot(result, path(wd.density_plot_name(step)),
                  exact=run['exact'].get(step),
                  title=f'Hessian spectrum at step {step}',
                  num_examples=examples.get(step))
  if run['spectra']:
    counts = set(examples.values())
    plot_snapshots_overlaid(run['spectra'], path('densities.png'),
                            num_examples=counts.pop() if len(counts) == 1
                            else None)
  if run['snapshots']:
    plot_curvature_over_training(run['snapshots'], path('curvature.png'),
                                 lr_drop_steps(run))
  if run['exact']:
    step = max(run['exact'])
    plot_exact_vs_slq(run['spectra'][step], run['exact'][step],
                      path('exact_vs_slq.png'), step=step,
                      num_examples=examples.get(step))
  if run['train']:
    plot_training_loss(run['train'], run['eval'], path('training.png'),
                       lr_drop_steps(run))
  return paths


def summary_table(run):
  """Markdown table of the snapshots of `load_run(workdir)`."""
  has_exact = any('exact_lambda_max' in r for r in run['snapshots'])
  k = run['snapshots'][0].get('k', 'k') if run['snapshots'] else 'k'
  head = ['step', 'loss', 'λ_max', 'λ_min', f'λ_1/λ_{k}', 'negative mass',
          'neg. mass < -1e-3 λ_max', 'trace', f'‖P_{k} g‖²/‖g‖²']
  if has_exact:
    head += ['exact λ_max', 'exact λ_min', 'exact neg. mass < -1e-3 λ_max']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in run['snapshots']:
    row = [str(r['step']), f"{r['loss']:.4f}", f"{r['lambda_max']:.5g}",
           f"{r['lambda_min']:.3g}", f"{r['lambda_ratio']:.3g}",
           f"{r['negative_mass']:.3f}", f"{r['negative_mass_tol']:.3f}",
           f"{r['trace']:.4g}",
           f"{r['gradient_concentration']:.3f}"]
    if has_exact:
      row += ([f"{r['exact_lambda_max']:.5g}", f"{r['exact_lambda_min']:.3g}",
               f"{r['exact_negative_mass_tol']:.3f}"]
              if 'exact_lambda_max' in r else ['', '', ''])
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def write_summary(workdir):
  """Writes WORKDIR/summary.md (snapshots, final accuracy) and returns it."""
  run = load_run(workdir)
  parts = [f'# Summary of {os.path.basename(os.path.normpath(workdir))}', '']
  if run['train']:
    last = run['train'][-1]
    parts.append(f"Training loss at step {last['step']}: {last['loss']:.4f}.")
  if run['eval']:
    last = run['eval'][-1]
    parts.append(f"Test accuracy at step {last['step']}: "
                 f"{last['accuracy']:.4f}.")
  if run['snapshots']:
    first = run['snapshots'][0]
    parts += ['', f"Hessian spectrum snapshots ({first['num_params']:,} "
                  f"parameters, {first['num_examples']:,} examples):", '',
              summary_table(run), '',
              'loss: mean over the Hessian set; negative mass: quadrature '
              'weight on negative Ritz values (the sign of the node that '
              'stands for the cluster at 0 decides much of it, hence also the '
              'weight below -1e-3 λ_max); '
              f"‖P_{first['k']} g‖²/‖g‖²: share of the full-batch gradient "
              f"in the top-{first['k']} Ritz subspace."]
    timed = [r for r in run['snapshots'] if 'seconds_eigh' in r]
    for r in timed:
      exact_err = abs(r['lambda_max'] - r['exact_lambda_max']) / abs(
          r['exact_lambda_max'])
      parts += ['', f"Exact spectrum at step {r['step']}: dense Hessian "
                    f"{r['seconds_dense_hessian']:.1f} s, eigh "
                    f"{r['seconds_eigh']:.1f} s; SLQ {r['seconds_slq']:.2f} s;"
                    f" relative error of SLQ λ_max {exact_err:.1e}."]
  text = '\n'.join(parts) + '\n'
  with open(os.path.join(workdir, wd.SUMMARY_FILE), 'w') as f:
    f.write(text)
  return text


def plot_training_loss_variants(workdirs, labels, path):
  """Training loss of several runs on one log-scale plot (the paper's
  optimisation-progress figure for the batch-norm variants)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drops = set()
  for workdir, label in zip(workdirs, labels):
    run = load_run(workdir)
    ax.plot([r['step'] for r in run['train']],
            [r['loss'] for r in run['train']], label=label)
    drops.update(lr_drop_steps(run))
  _mark_drops([ax], sorted(drops))
  loss_axis(ax, [line_y for line in ax.get_lines()
                 for line_y in line.get_ydata()
                 if line.get_label() in labels])
  ax.set_xlabel('training step')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)


def plot_spectra_side_by_side(workdirs, labels, path, step=None):
  """One panel per run: its density at `step` (default: the last snapshot
  step they all have), each on its own eigenvalue axis."""
  runs = [load_run(w) for w in workdirs]
  if step is None:
    common = set.intersection(*(set(r['spectra']) for r in runs))
    if not common:
      raise ValueError('the runs have no snapshot step in common.')
    step = max(common)
  fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.8),
                           squeeze=False)
  for ax, run, label in zip(axes[0], runs, labels):
    result = run['spectra'][step]
    low, high = _support(result)
    sigma = kernel_sigma(low, high)
    density, grid = result.density(density_grid(low, high, sigma), sigma)
    plotting.plot_density(grid, density, ax=ax)
    examples = [r.get('num_examples') for r in run['snapshots']
                if r['step'] == step]
    plotting.annotate_density(ax, sigma, order=result.order,
                              num_draws=result.num_draws,
                              num_examples=examples[0] if examples else None)
    ax.set_title(f'{label}: λ_max {result.lambda_max:.3g}')
  fig.suptitle(f'Hessian spectra at step {step}')
  fig.tight_layout()
  fig.savefig(path, dpi=plotting.DPI)
  plt.close(fig)
  return step


def comparison_table(workdirs, labels):
  """Markdown: per run, final loss, accuracy and last-snapshot metrics."""
  head = ['run', 'final loss', 'test accuracy', 'snapshot step', 'λ_max',
          'λ_1/λ_k', 'neg. mass < -1e-3 λ_max', 'gradient concentration']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for workdir, label in zip(workdirs, labels):
    run = load_run(workdir)
    loss = f"{run['train'][-1]['loss']:.4f}" if run['train'] else ''
    acc = f"{run['eval'][-1]['accuracy']:.4f}" if run['eval'] else ''
    snap = run['snapshots'][-1] if run['snapshots'] else None
    cells = ([str(snap['step']), f"{snap['lambda_max']:.4g}",
              f"{snap['lambda_ratio']:.3g}",
              f"{snap['negative_mass_tol']:.3f}",
              f"{snap['gradient_concentration']:.3f}"] if snap else [''] * 5)
    lines.append('| ' + ' | '.join([label, loss, acc] + cells) + ' |')
  return '\n'.join(lines)
