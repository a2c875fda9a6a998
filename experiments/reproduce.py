"""The paper's three batch-norm findings at a scale a 2-core CPU runs.

  python -m experiments.reproduce --workdir=/tmp/reproduce --seeds=0,1,2

For each seed and each normalisation (mini-batch BN 'batch', population BN
'population', none 'none'), the authors' pre-activation ResNet family
(`experiments.resnets`, one unit per stage: 'resnet8') is trained on the
embedded Fashion-MNIST subset by `experiments.train.train_and_evaluate`
(configs built from `configs/resnet32_cifar10.py` by `reduced_config`), with
Hessian snapshots of the training cost by `experiments.probe`. From them:

  outliers       lambda_1 / lambda_10 of the top Ritz values at the end
                 (`probe.snapshot_metrics`' 'lambda_ratio', k = 10 classes);
                 the paper: large without BN, small with mini-batch BN, large
                 again with population BN.
  concentration  ||P_10 g||^2 / ||g||^2, the full-batch gradient's share in
                 the top-10 Ritz space ('gradient_concentration'), against
                 10 / n for a random direction; the paper: most of the
                 gradient lies in the outlier space.
  slow training  the training loss of population BN against mini-batch BN
                 at the same steps and learning rate; the paper: slower.

Writes WORKDIR/results.json (per seed and norm: the snapshot metrics, the
training log, the test accuracy; per effect: the margin for every seed and
whether its direction held for all), the figures densities.png,
ratios.png and training_loss.png, and one run directory per (seed, norm)
(`experiments.workdir` layout).

Reduced against the paper (ResNet-32 on CIFAR-10, 100k steps, the Hessian
over 49,920 images at order 90), so that 3 seeds x 3 norms fit in about 25
minutes on the shared 2-core CPU (29 measured, at a load average of 5 to
14):
  * ResNet-8 (75,002 parameters with BN on 1 channel, 74,522 without), the
    authors' units, not ResNet-32 (464,154): 3 residual units instead of
    15, so a step and its compilation cost a fraction of ResNet-32's;
  * 1-channel 16x16 centre crops of the 3,000 embedded images (a third of
    the pixels of 28x28, so about a third of the convolutions' cost);
  * batch 64 (authors: 128) for REDUCED_STEPS steps, about 6 epochs, without
    learning-rate drops or augmentation: only the early phase of the
    paper's training, before any drop;
  * the Hessian over the first 256 training images, in batches of 64 (the
    training batch, so mini-batch BN normalises as in training), order 30,
    one draw, at the last step only: one snapshot of 512 images at order 40
    took over 2 minutes here. The largest Ritz values converge first, but
    lambda_10 of 30 steps is less certain than lambda_1, and the bulk of
    the density is coarser than at order 90;
  * population statistics of all 3,000 images ('exact'), refreshed every 50
    steps (the paper gives no interval).
Kept as the authors': leaky ReLU, option-A shortcuts, BN epsilon 1e-3 and
momentum 0.9, SGD with momentum 0.9, weight decay 2e-4 on the kernels and in
the Hessian's loss, Hessian batches in train mode.

The learning rate is the same for the three norms, LEARNING_RATE = 0.03: the
rate at which population BN and no BN train (the authors' 0.1 diverges for
both, `configs/resnet32_cifar10_popbn.py`), so that a slower loss of
population BN is not a smaller step size. Mini-batch BN also trains at 0.03.
"""

import json
import os
import time

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import resnet32_cifar10
from experiments import plots
from experiments import train
from spectral_density import plotting

NORMS = ('batch', 'population', 'none')
LABELS = {'batch': 'mini-batch BN', 'population': 'population BN',
          'none': 'no BN'}
LEARNING_RATE = 0.03
REDUCED_STEPS = 300
RESULTS_FILE = 'results.json'


def reduced_config(norm, seed, *, num_steps=REDUCED_STEPS, image_size=16,
                   hessian_examples=256, order=30, batch_size=64,
                   snapshot_steps=None, num_train=None):
  """The CIFAR-10 ResNet experiment, reduced (module docstring).

  Args:
    norm: one of NORMS.
    seed: initialisation, data order and Lanczos start vectors.
    num_steps: training steps.
    image_size: centre crop of the 28x28 images.
    hessian_examples: the Hessian set, the first this many training images.
    order: Lanczos steps (at least 10, the number of outliers).
    batch_size: training batch, and the Hessian's.
    snapshot_steps: steps of the Hessian snapshots; None: the end only.
    num_train: only the first this many training images (None: 3,000).

  Returns:
    The locked ConfigDict.
  """
  if norm not in NORMS:
    raise ValueError(f'norm: must be one of {NORMS}, got {norm!r}')
  if order < 10:
    raise ValueError(f'order: at least 10 (the outliers), got {order}')
  config = resnet32_cifar10.base_config(norm)
  config.seed = int(seed)
  config.model.name = 'resnet8'
  config.dataset.name = 'embedded_fashion_mnist'
  config.dataset.image_size = image_size
  config.dataset.channels = 1
  config.dataset.augmentation = 'none'
  config.dataset.num_train = num_train
  config.batch_size = batch_size
  config.num_steps = num_steps
  config.optimizer.learning_rate = LEARNING_RATE
  config.optimizer.lr_drop_steps = ()
  config.log_every_steps = 10
  config.eval_every_steps = num_steps
  config.eval_batch_size = 1000
  config.checkpoint_every_steps = num_steps
  config.max_checkpoints_to_keep = 1
  config.model.population_mode = 'exact'
  config.model.population_num_examples = None
  config.model.population_batch_size = 1000
  config.model.population_refresh_steps = 50
  if snapshot_steps is None:
    snapshot_steps = (num_steps,)
  config.hessian.snapshot_steps = tuple(snapshot_steps)
  config.hessian.num_examples = hessian_examples
  config.hessian.batch_size = batch_size
  config.hessian.order = order
  config.hessian.num_draws = 1
  # On CPU a convolution inside a compiled loop is far slower
  # (jax-ml/jax#12868): one call per Hessian batch instead.
  config.hessian.stream = True
  config.write_plots = False
  config.lock()
  return config


def run_one(config, workdir):
  """Trains one configuration; the numbers this module compares.

  Returns:
    {'snapshots': the probe's records (step, lambda_ratio, lambda_max,
    gradient_concentration, num_params, ...), 'train': [{'step', 'loss',
    ...}], 'test_accuracy', 'seconds'}.
  """
  start = time.time()
  out = train.train_and_evaluate(config, workdir)
  keep = ('step', 'loss', 'lambda_max', 'lambda_min', 'lambda_ratio', 'k',
          'gradient_concentration', 'gradient_norm', 'num_params',
          'num_examples', 'trace', 'negative_mass_tol', 'seconds_slq')
  return {'snapshots': [{k: r[k] for k in keep if k in r}
                        for r in out['snapshots']],
          'train': [{'step': r['step'], 'loss': r['loss'],
                     'accuracy': r['accuracy']} for r in out['train']],
          'test_accuracy': out['eval']['accuracy'],
          'seconds': time.time() - start}


def final_loss(run, window=3):
  """Mean of the last `window` logged training losses (each a mean over
  `log_every_steps` steps)."""
  return float(np.mean([r['loss'] for r in run['train'][-window:]]))


def effect_margins(runs):
  """The paper's effects in one seed's runs, as signed margins.

  Args:
    runs: {norm: `run_one` output} for the norms of NORMS.

  Returns:
    {effect: margin}; a margin > 0 means the paper's direction held:
      'ratio_none_over_batch': log10(ratio no BN / ratio mini-batch BN);
      'ratio_population_over_batch': log10(ratio population / mini-batch);
      'concentration_<norm>': log10(gradient share / (10 / n)), the share
        against a random direction's;
      'concentration_none_over_batch': share no BN - share mini-batch BN;
      'loss_population_over_batch': final loss population BN - mini-batch BN.
  """
  last = {norm: run['snapshots'][-1] for norm, run in runs.items()}
  margins = {
      'ratio_none_over_batch': float(np.log10(
          last['none']['lambda_ratio'] / last['batch']['lambda_ratio'])),
      'ratio_population_over_batch': float(np.log10(
          last['population']['lambda_ratio'] / last['batch']['lambda_ratio'])),
      'concentration_none_over_batch': (
          last['none']['gradient_concentration'] -
          last['batch']['gradient_concentration']),
      'loss_population_over_batch': (final_loss(runs['population']) -
                                     final_loss(runs['batch'])),
  }
  for norm, snap in last.items():
    chance = snap['k'] / snap['num_params']
    margins[f'concentration_{norm}'] = float(np.log10(
        snap['gradient_concentration'] / chance))
  return margins


def summarise(per_seed):
  """Per effect: the margins over seeds and whether all are positive."""
  effects = sorted(next(iter(per_seed.values())))
  return {e: {'margins': {s: m[e] for s, m in per_seed.items()},
              'min_margin': min(m[e] for m in per_seed.values()),
              'holds_for_every_seed': all(m[e] > 0 for m in per_seed.values())}
          for e in effects}


def plot_densities(workdir, seed, path):
  """One panel per norm: the density at the last snapshot of `seed`, log
  scale (the paper's figures), each on its own eigenvalue axis."""
  fig, axes = plt.subplots(1, len(NORMS), figsize=(12, 3.4))
  for ax, norm in zip(axes, NORMS):
    run = plots.load_run(run_dir(workdir, seed, norm))
    step = max(run['spectra'])
    result = run['spectra'][step]
    nodes = result.nodes[result.weights > 0]
    low, high = float(nodes.min()), float(nodes.max())
    sigma = plots.kernel_sigma(low, high)
    density, grid = result.density(plots.density_grid(low, high, sigma),
                                   sigma)
    plotting.plot_density(grid, density, ax=ax)
    ratio = run['snapshots'][-1]['lambda_ratio']
    ax.set_title(f'{LABELS[norm]}: λ1/λ10 = {ratio:.3g}', fontsize=10)
  fig.suptitle(f'Hessian spectra after {step} steps (seed {seed})',
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def plot_ratios(results, path):
  """Bars per seed: lambda_1 / lambda_10 (log) and the gradient share."""
  seeds = sorted(results['runs'], key=int)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  width = 0.8 / len(NORMS)
  for i, norm in enumerate(NORMS):
    x = np.arange(len(seeds)) + (i - 1) * width
    last = [results['runs'][s][norm]['snapshots'][-1] for s in seeds]
    axes[0].bar(x, [r['lambda_ratio'] for r in last], width,
                label=LABELS[norm])
    axes[1].bar(x, [r['gradient_concentration'] for r in last], width,
                label=LABELS[norm])
  axes[0].set_yscale('log')
  # Room above the bars for the legend.
  top = max(r['snapshots'][-1]['lambda_ratio'] for runs in
            results['runs'].values() for r in runs.values())
  axes[0].set_ylim(1, 3 * top)
  axes[0].set_ylabel('λ1 / λ10')
  axes[1].set_ylabel('‖P10 g‖² / ‖g‖²')
  axes[1].set_ylim(0, 1)
  for ax in axes:
    ax.set_xticks(np.arange(len(seeds)), [f'seed {s}' for s in seeds])
    ax.grid(alpha=0.3, axis='y')
  axes[0].legend(fontsize=8, ncol=3, loc='upper left')
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def plot_losses(results, path):
  """Training loss against the step, every seed, a colour per norm."""
  fig, ax = plt.subplots(figsize=(6, 3.6))
  colours = dict(zip(NORMS, ('tab:blue', 'tab:orange', 'tab:green')))
  first = min(results['runs'], key=int)
  for seed, runs in results['runs'].items():
    for norm in NORMS:
      train_log = runs[norm]['train']
      ax.plot([r['step'] for r in train_log], [r['loss'] for r in train_log],
              color=colours[norm], linewidth=1, alpha=0.8,
              label=LABELS[norm] if seed == first else None)
  ax.set_yscale('log')
  ax.set_xlabel('training step')
  ax.set_ylabel('training loss')
  ax.set_title(f'learning rate {LEARNING_RATE} for all; seeds '
               f'{", ".join(sorted(results["runs"], key=int))}', fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def run_dir(workdir, seed, norm):
  """WORKDIR/seed_S/NORM, one run's `experiments.workdir` directory."""
  return os.path.join(workdir, f'seed_{seed}', norm)


def reproduce(workdir, seeds, **overrides):
  """Every (seed, norm) run, the margins, JSON and figures.

  Args:
    workdir: output directory.
    seeds: ints.
    **overrides: keyword arguments of `reduced_config`.

  Returns:
    The contents of WORKDIR/results.json.
  """
  if not seeds:
    raise ValueError('seeds: give at least one seed.')
  os.makedirs(workdir, exist_ok=True)
  config = reduced_config('batch', seeds[0], **overrides)
  results = {'config': json.loads(config.to_json_best_effort()),
             'learning_rate': LEARNING_RATE, 'runs': {}, 'margins': {}}
  for seed in seeds:
    runs = {norm: run_one(reduced_config(norm, seed, **overrides),
                          run_dir(workdir, seed, norm))
            for norm in NORMS}
    results['runs'][str(seed)] = runs
    results['margins'][str(seed)] = effect_margins(runs)
    results['effects'] = summarise(results['margins'])
    # After every seed, so that a long run can be read while it goes on.
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump(results, f, indent=1)
  plot_densities(workdir, seeds[0], os.path.join(workdir, 'densities.png'))
  plot_ratios(results, os.path.join(workdir, 'ratios.png'))
  plot_losses(results, os.path.join(workdir, 'training_loss.png'))
  return results


def table(results):
  """Markdown: per seed and norm, the numbers behind the effects."""
  head = ['seed', 'norm', 'λ1/λ10', 'λ_max', '‖P10 g‖²/‖g‖²',
          'final train loss', 'test acc.']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for seed, runs in sorted(results['runs'].items(), key=lambda x: int(x[0])):
    for norm in NORMS:
      snap = runs[norm]['snapshots'][-1]
      lines.append(
          f"| {seed} | {LABELS[norm]} | {snap['lambda_ratio']:.3g} | "
          f"{snap['lambda_max']:.3g} | {snap['gradient_concentration']:.3f} "
          f"| {final_loss(runs[norm]):.3f} | "
          f"{runs[norm]['test_accuracy']:.3f} |")
  lines += ['', '| effect | margin per seed | holds for every seed |',
            '|---|---|---|']
  for effect, summary in results['effects'].items():
    margins = ', '.join(f'{s}: {m:+.3g}' for s, m in
                        sorted(summary['margins'].items(),
                               key=lambda x: int(x[0])))
    lines.append(f"| {effect} | {margins} | "
                 f"{'yes' if summary['holds_for_every_seed'] else 'no'} |")
  return '\n'.join(lines)


def define_flags():
  """The command line's flags, defined only when this module is the program:
  `experiments.main` defines `--workdir` too, and both are imported in one
  process by the tests."""
  return (flags.DEFINE_string('workdir', None, 'Output directory.',
                              required=True),
          flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.'),
          flags.DEFINE_integer('num_steps', REDUCED_STEPS, 'Training steps.'))


def main(argv, workdir, seeds, num_steps):
  """Args: argv from absl; the flag holders of `define_flags`."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  results = reproduce(workdir.value, [int(s) for s in seeds.value],
                      num_steps=num_steps.value)
  print(table(results))


if __name__ == '__main__':
  _FLAG_HOLDERS = define_flags()
  try:  # The dated report (docs/reports/) is written from a checkout only:
    # the benchmarks package, which writes it, is not installed.
    from benchmarks import report  # pylint: disable=g-import-not-at-top
    app.run(lambda argv: report.run('reproduce', main, argv, *_FLAG_HOLDERS))
  except ImportError:
    app.run(lambda argv: main(argv, *_FLAG_HOLDERS))
