"""Block heterogeneity of the Hessian: a transformer against a CNN, reduced.

Zhang et al. (NeurIPS 2024), "Why Transformers Need Adam: A Hessian
Perspective": the SLQ densities of a transformer's Hessian blocks differ from
block to block (large Jensen-Shannon distances between them), a CNN's look
alike, and SGD falls behind Adam where they differ. This script measures, for
each seed of the config:

* the mean pairwise JS distance of the block densities of the GPT
  (experiments/transformer.py, bytes of the Python standard library) and of
  the ResNet-8 (experiments/resnets.py, Fashion-MNIST) at initialisation and
  after training with Adam;
* the final training loss of SGD (momentum) and of Adam at rates tuned on the
  first seed over a small grid, and the gap between them on each model;
* on the transformer after Adam, the same JS distances of the preconditioned
  Hessian ``P^-1/2 H P^-1/2`` with Adam's own ``P = sqrt(nu_hat) + eps``.

  python -m experiments.block_heterogeneity [--config=configs/transformer_lm.py]

writes docs/reports/block_heterogeneity_<date>.md (commit, date, machine,
command, numbers per seed), docs/reports/block_heterogeneity_<date>.json and
the figures docs/figures/block_heterogeneity_{js,densities}.png.

Training here is a plain optax loop over shuffled batches (the same for both
models and optimisers), not experiments/train.py, whose pipeline is for
images; the Hessians are the library's `block_spectra` of the whole-set
losses (the GPT's mean per-token loss, the CNN's mean cross-entropy).
"""

import datetime
import json
import os
import pathlib
import platform
import subprocess
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

from experiments import datasets
from experiments import models
from experiments import resnets
from experiments import transformer
import spectral_density as sd
from spectral_density import blocks as blocks_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
REPORT_DIR = REPO / 'docs' / 'reports'
FIGURE_DIR = REPO / 'docs' / 'figures'
MODELS = ('transformer', 'cnn')
OPTIMIZERS = ('sgd', 'adam')


# --- The two problems: params, the whole-set loss, training batches. -------

class Problem:
  """A model with its training set, its Hessian set and both losses.

  Attributes:
    name: 'transformer' or 'cnn'.
    train: dict of arrays [N, ...] (the training set).
    hessian_set: the first `hessian.num_examples` training examples.
    loss: ``loss(params, batch)`` whose example-weighted mean over the
      Hessian set's batches is the whole set's mean loss (for the Hessian).
    batch_loss: ``loss(params, batch)``, the mean over one batch (training).
    init: ``init(seed) -> params``.
  """


def transformer_problem(config):
  p = Problem()
  p.name = 'transformer'
  cfg = config.transformer
  model = transformer.GPT(vocab_size=cfg.vocab_size, max_len=cfg.seq_len,
                          width=cfg.width, num_layers=cfg.num_layers,
                          num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
  p.train, _ = datasets.load_text_dataset(
      _as_dataset_config(config.text))
  p.hessian_set = {k: v[:config.hessian.num_examples]
                   for k, v in p.train.items()}
  p.loss = transformer.make_loss_fn(
      model, transformer.tokens_per_example(p.hessian_set))
  p.batch_loss = lambda params, batch: transformer.batch_mean_loss(
      model, params, batch)
  p.init = lambda seed: transformer.init_params(model, jax.random.key(seed),
                                                cfg.seq_len)
  return p


def _as_dataset_config(text):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({'dataset': dict(text)})


def cnn_problem(config):
  p = Problem()
  p.name = 'cnn'
  cfg = config.cnn
  if cfg.dataset == 'embedded_fashion_mnist':
    data = datasets.read_embedded_fashion_mnist('train')
    mean, std = datasets.NORMALIZATION['fashion_mnist']
  elif cfg.dataset == 'cifar10_python':
    data = datasets.read_cifar10_python(cfg.data_dir, 'train')
    mean, std = datasets.NORMALIZATION['cifar10']
  else:
    raise ValueError(f'cnn.dataset: {cfg.dataset!r} is not supported here.')
  images = ((data['image'][:cfg.num_train] / 255.0 - np.asarray(mean)) /
            np.asarray(std)).astype(np.float32)
  p.train = {'image': images, 'label': data['label'][:cfg.num_train]}
  p.hessian_set = {k: v[:config.hessian.num_examples]
                   for k, v in p.train.items()}
  model = resnets.PreActResNet(stage_sizes=tuple(cfg.stage_sizes),
                               num_filters=cfg.num_filters, num_classes=10,
                               norm=cfg.norm)
  shape = (1,) + images.shape[1:]
  p._state = {}

  def init(seed):
    variables = models.init_variables(model, jax.random.key(seed), shape)
    params, p._state = models.split_variables(variables)
    return params

  p.init = init
  # Batch norm (full size) normalises each batch by its own statistics, in
  # training and in the Hessian ('train' mode; the running averages unused).
  p.loss = lambda params, batch: models.make_loss_fn(
      model, p._state, 'train')(params, batch)
  p.batch_loss = p.loss
  return p


# --- Training. -----------------------------------------------------------

def make_optimizer(name, rate, config):
  if name == 'sgd':
    return optax.sgd(rate, momentum=config.train.momentum)
  return optax.adam(rate, b2=config.train.adam_b2, eps=config.train.adam_eps)


def train(problem, params, optimizer, config, seed):
  """Plain minibatch training; returns (params, opt_state, losses [steps])."""
  tx = optimizer
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(problem.batch_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  n = len(next(iter(problem.train.values())))
  b = config.train.batch_size
  rng = np.random.default_rng(seed)
  order, losses = np.array([], int), []
  for _ in range(config.train.num_steps):
    if order.size < b:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:b], order[b:]
    batch = {k: jnp.asarray(v[idx]) for k, v in problem.train.items()}
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(float(loss))
  if losses and not np.all(np.isfinite(losses)):
    return params, opt_state, np.full(len(losses), np.inf)
  return params, opt_state, np.asarray(losses)


def final_loss(losses, config):
  return (float(np.mean(losses[-config.train.final_window:]))
          if len(losses) else float('nan'))


# --- Block spectra and JS distances. ---------------------------------------

def block_js(problem, params, config, seed, diagonal=None):
  """(BlockSpectra, JS matrix, names) of the Hessian (or its preconditioned
  form, given Adam's `diagonal`) on the Hessian set."""
  num = config.hessian.get('num_devices')
  op, _, _ = sd.get_hvp_fn(problem.loss, params, problem.hessian_set,
                           batch_size=config.hessian.batch_size,
                           devices=jax.devices()[:num] if num else None)
  if diagonal is not None:
    op = sd.preconditioned(op, diagonal)
  # Many small blocks: one compiled full product beats one per block.
  res = blocks_lib.block_spectra_of(
      op, params, blocks=config.hessian.blocks, order=config.hessian.order,
      num_draws=config.hessian.num_draws, rng_key=jax.random.key(seed),
      include_full=False, restricted_products=False)
  grid, sigma = blocks_lib.common_grid(res, grid_len=config.hessian.grid_len)
  matrix, names = sd.js_distances(res, grid, sigma)
  grid, sigma = blocks_lib.common_grid(
      res, grid_len=config.hessian.grid_len,
      relative_sigma=config.hessian.relative_sigma)
  relative, _ = sd.js_distances(res, grid, sigma)
  res.relative_js = relative
  return res, matrix, names


def scale_spread(res):
  """log10 of the ratio of the largest to the smallest block's |lambda_max|:
  how many decades the blocks' curvature scales span."""
  tops = np.array([abs(r.lambda_max) for r in res.values()])
  return float(np.log10(tops.max() / max(tops.min(), 1e-30)))


def run(config, log=print):
  """All measurements of the config; returns a JSON-ready dict."""
  problems = {'transformer': transformer_problem(config),
              'cnn': cnn_problem(config)}
  out = {'per_seed': {}, 'tuned_rates': {}, 'num_params': {},
         'blocks': {}}
  kept = {}
  seeds = list(config.seeds)
  grids = {'sgd': list(config.train.sgd_rates),
           'adam': list(config.train.adam_rates)}
  for name, problem in problems.items():
    params = problem.init(seeds[0])
    out['num_params'][name] = int(sum(x.size for x in jax.tree.leaves(params)))
    out['blocks'][name] = {k: int(v.sum()) for k, v in sd.block_masks(
        params, config.hessian.blocks).items()}
    # Tuning on the first seed: the lowest final training loss.
    out['tuned_rates'][name] = {}
    if config.train.num_steps:
      for opt in OPTIMIZERS:
        finals = {}
        for rate in grids[opt]:
          _, _, losses = train(problem, params, make_optimizer(opt, rate,
                                                                config),
                               config, seeds[0])
          finals[rate] = final_loss(losses, config)
          log(f'{name} {opt} lr={rate:g}: final loss {finals[rate]:.4f}',
              flush=True)
        out['tuned_rates'][name][opt] = {
            'rate': min(finals, key=finals.get),
            'grid': {str(k): v for k, v in finals.items()}}
  for seed in seeds:
    record = {}
    for name, problem in problems.items():
      start = time.time()
      params = problem.init(seed)
      rec = {}
      res, matrix, names = block_js(problem, params, config, seed)
      rec['js_init'] = sd.mean_js_distance(matrix)
      rec['jsrel_init'] = sd.mean_js_distance(res.relative_js)
      rec['spread_init'] = scale_spread(res)
      kept[(name, seed, 'init')] = (res, matrix, names)
      if config.train.num_steps:
        trained = {}
        for opt in OPTIMIZERS:
          rate = out['tuned_rates'][name][opt]['rate']
          new, state, losses = train(problem, params,
                                     make_optimizer(opt, rate, config),
                                     config, seed)
          rec[f'loss_{opt}'] = final_loss(losses, config)
          trained[opt] = (new, state)
        rec['initial_loss'] = float(
            sd.get_hvp_fn(problem.loss, params, problem.hessian_set,
                          batch_size=config.hessian.batch_size)[0].loss())
        rec['gap_sgd_minus_adam'] = rec['loss_sgd'] - rec['loss_adam']
        new, state = trained['adam']
        res, matrix, names = block_js(problem, new, config, seed)
        rec['js_trained'] = sd.mean_js_distance(matrix)
        rec['jsrel_trained'] = sd.mean_js_distance(res.relative_js)
        rec['spread_trained'] = scale_spread(res)
        kept[(name, seed, 'trained')] = (res, matrix, names)
        if name == 'transformer':
          diagonal = sd.adam_preconditioner(state, b2=config.train.adam_b2,
                                            eps=config.train.adam_eps)
          res, matrix, names = block_js(problem, new, config, seed, diagonal)
          rec['js_trained_preconditioned'] = sd.mean_js_distance(matrix)
          rec['jsrel_trained_preconditioned'] = sd.mean_js_distance(
              res.relative_js)
          rec['spread_trained_preconditioned'] = scale_spread(res)
          kept[(name, seed, 'preconditioned')] = (res, matrix, names)
      rec['seconds'] = time.time() - start
      record[name] = rec
      log(f'seed {seed} {name}: ' + ', '.join(
          f'{k}={v:.4g}' for k, v in rec.items()), flush=True)
    out['per_seed'][str(seed)] = record
  return out, kept


def summary_lines(out):
  """The report's table and the answers, as Markdown lines."""
  lines = ['| seed | model | mean JS, init | mean JS, after Adam | '
           'mean JS, Adam-preconditioned | mean JS, relative kernel: init / '
           'after Adam / preconditioned | decades of block scales: init / '
           'after Adam / preconditioned | final loss SGD | final loss Adam '
           '| gap SGD - Adam |', '|---|---|---|---|---|---|---|---|---|---|']
  fmt = lambda rec, k: f'{rec[k]:.4f}' if k in rec else '-'
  for seed, record in out['per_seed'].items():
    for name in MODELS:
      if name not in record:
        lines.append(f'| {seed} | {name} | not finished |' + ' |' * 7)
        continue
      rec = record[name]
      rel = ' / '.join(f'{rec[k]:.4f}' for k in (
          'jsrel_init', 'jsrel_trained', 'jsrel_trained_preconditioned')
                       if k in rec)
      spread = ' / '.join(f'{rec[k]:.2f}' for k in (
          'spread_init', 'spread_trained', 'spread_trained_preconditioned')
                          if k in rec)
      lines.append(f'| {seed} | {name} | ' + ' | '.join(fmt(rec, k) for k in (
          'js_init', 'js_trained', 'js_trained_preconditioned')) +
                   f' | {rel} | {spread} | ' + ' | '.join(fmt(rec, k) for k in (
                       'loss_sgd', 'loss_adam', 'gap_sgd_minus_adam')) + ' |')
  seeds = list(out['per_seed'])
  per = lambda k, name: np.array([
      out['per_seed'][s].get(name, {}).get(k, np.nan) for s in seeds])
  lines.append('')
  js = ('* Transformer mean JS larger than the CNN\'s {} for every seed '
        'measured: **{}**; margins (transformer - CNN) per seed: {}.')
  spread = ('* Transformer block scales (log10 of max / min block lambda_max) '
            'span more decades than the CNN\'s {} for every seed: **{}**; '
            'margins in decades: {}.')
  for key, label, sentence, digits in (
      ('js_init', 'at initialisation', js, 4),
      ('js_trained', 'after Adam training', js, 4),
      ('jsrel_init', 'at initialisation, relative kernel', js, 4),
      ('jsrel_trained', 'after Adam training, relative kernel', js, 4),
      ('spread_init', 'at initialisation', spread, 2),
      ('spread_trained', 'after Adam training', spread, 2)):
    margin = per(key, 'transformer') - per(key, 'cnn')
    if np.all(np.isnan(margin)):
      continue
    verdict = 'yes' if np.all(margin[~np.isnan(margin)] > 0) else 'no'
    lines.append(sentence.format(
        label, verdict, ', '.join(f'{m:+.{digits}f}' for m in margin)))
  gap_t, gap_c = per('gap_sgd_minus_adam', 'transformer'), per(
      'gap_sgd_minus_adam', 'cnn')
  if not np.all(np.isnan(gap_t - gap_c)):
    diff = gap_t - gap_c
    verdict = 'yes' if np.all(diff[~np.isnan(diff)] > 0) else 'no'
    lines.append(f'* SGD - Adam final-loss gap larger on the transformer for '
                 f'every seed: **{verdict}**; transformer gaps '
                 f'{", ".join(f"{g:+.4f}" for g in gap_t)}, CNN gaps '
                 f'{", ".join(f"{g:+.4f}" for g in gap_c)}.')
    # The two losses are in different units (bytes vs classes): the same
    # gap as a fraction of the loss decrease Adam achieved.
    share = lambda name: per('gap_sgd_minus_adam', name) / (
        per('initial_loss', name) - per('loss_adam', name))
    rel_t, rel_c = share('transformer'), share('cnn')
    diff = rel_t - rel_c
    verdict = 'yes' if np.all(diff[~np.isnan(diff)] > 0) else 'no'
    lines.append(f'* The same gap as a fraction of Adam\'s loss decrease '
                 f'(initial loss - Adam\'s final loss) larger on the '
                 f'transformer for every seed: **{verdict}**; transformer '
                 f'{", ".join(f"{g:.3f}" for g in rel_t)}, CNN '
                 f'{", ".join(f"{g:.3f}" for g in rel_c)}.')
  pre = per('js_trained_preconditioned', 'transformer')
  if not np.all(np.isnan(pre)):
    plain = per('js_trained', 'transformer')
    lines.append('* Transformer after Adam, mean JS of H vs of '
                 'P^-1/2 H P^-1/2 per seed: ' + ', '.join(
                     f'{a:.4f} -> {b:.4f}' for a, b in zip(plain, pre)) +
                 '; with the relative kernel: ' + ', '.join(
                     f'{a:.4f} -> {b:.4f}' for a, b in zip(
                         per('jsrel_trained', 'transformer'),
                         per('jsrel_trained_preconditioned', 'transformer')))
                 + '; decades of block scales: ' + ', '.join(
                     f'{a:.2f} -> {b:.2f}' for a, b in zip(
                         per('spread_trained', 'transformer'),
                         per('spread_trained_preconditioned', 'transformer')))
                 + '.')
  return lines


def figures(kept, seed, date):
  """Heat maps (init, both models; after Adam and preconditioned for the
  transformer) and the transformer's per-block densities; returns paths."""
  FIGURE_DIR.mkdir(parents=True, exist_ok=True)
  if ('transformer', seed, 'init') not in kept or ('cnn', seed,
                                                    'init') not in kept:
    return []
  panels = [(k, t) for k, t in (
      (('transformer', seed, 'init'), 'transformer, init'),
      (('cnn', seed, 'init'), 'ResNet-8, init'),
      (('transformer', seed, 'trained'), 'transformer, after Adam'),
      (('transformer', seed, 'preconditioned'),
       'transformer, after Adam, P^-1/2 H P^-1/2')) if k in kept]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6))
  axes = np.atleast_1d(axes)
  for ax, (key, title) in zip(axes, panels):
    _, matrix, names = kept[key]
    sd.plot_js_heatmap(matrix, names, ax=ax,
                       title=f'{title}: mean {sd.mean_js_distance(matrix):.3f}')
  fig.tight_layout()
  heat = FIGURE_DIR / 'block_heterogeneity_js.png'
  fig.savefig(heat, dpi=150)
  plt.close(fig)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for ax, key, title in ((axes[0], ('transformer', seed, 'init'),
                          'transformer blocks, init'),
                         (axes[1], ('cnn', seed, 'init'),
                          'ResNet-8 blocks, init')):
    res = kept[key][0]
    densities, grid, _ = sd.block_densities(res)
    for name, d in densities.items():
      sd.plotting.plot_density(grid, d, ax=ax, label=None, lw=0.8)
    ax.set_title(title)
  fig.tight_layout()
  dens = FIGURE_DIR / 'block_heterogeneity_densities.png'
  fig.savefig(dens, dpi=150)
  plt.close(fig)
  return [heat, dens]


def _commit():
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def parse_log(lines):
  """(out, seeds) of `run` rebuilt from its printed lines (a run stopped
  before its report: the numbers to 4 significant digits)."""
  out = {'per_seed': {}, 'tuned_rates': {}, 'num_params': {}, 'blocks': {}}
  finals = {}
  for line in lines:
    words = line.split()
    if len(words) >= 5 and words[0] in MODELS and words[1] in OPTIMIZERS:
      rate = float(words[2].split('=')[1].rstrip(':'))
      finals.setdefault(words[0], {}).setdefault(words[1], {})[rate] = float(
          words[-1])
    elif line.startswith('seed '):
      head, _, body = line.partition(': ')
      _, seed, name = head.split()
      rec = {k: float(v) for k, v in (kv.split('=') for kv in
                                      body.split(', '))}
      out['per_seed'].setdefault(seed, {})[name] = rec
  for name, opts in finals.items():
    out['tuned_rates'][name] = {
        opt: {'rate': min(g, key=g.get), 'grid': {str(k): v for k, v in
                                                  g.items()}}
        for opt, g in opts.items()}
  return out


def write_report(config, out, kept, seconds, command, note=None):
  date = datetime.datetime.now(datetime.timezone.utc)
  stamp = date.strftime('%Y-%m-%d')
  REPORT_DIR.mkdir(parents=True, exist_ok=True)
  paths = figures(kept, list(config.seeds)[0], stamp)
  meta = {'commit': _commit(), 'date': date.isoformat(timespec='seconds'),
          'machine': f'{platform.node()} ({platform.machine()}, '
                     f'{os.cpu_count()} CPUs, jax {jax.__version__}, '
                     f'{jax.default_backend()}, Python '
                     f'{platform.python_version()})',
          'command': command, 'seconds': round(seconds, 1)}
  json_path = REPORT_DIR / f'block_heterogeneity_{stamp}.json'
  json_path.write_text(json.dumps({**meta, 'config': config.to_dict(),
                                   **out}, indent=1, default=str) + '\n')
  lines = [f'# Block heterogeneity, reduced ({config.name})', '',
           f'* commit `{meta["commit"]}`, {meta["date"]}',
           f'* machine: {meta["machine"]}',
           f'* command: `{command}` ({seconds:.0f} s)',
           *([f'* **{note}**'] if note else []),
           *([f'* parameters: transformer '
              f'{out["num_params"]["transformer"]:,}, CNN '
              f'{out["num_params"]["cnn"]:,}; blocks `{config.hessian.blocks}`'
              f': {len(out["blocks"]["transformer"])} and '
              f'{len(out["blocks"]["cnn"])}'] if out['num_params'] else []),
           f'* SLQ order {config.hessian.order}, {config.hessian.num_draws} '
           f'draws per block, {config.hessian.num_examples} examples; '
           f'{config.train.num_steps} training steps of batch '
           f'{config.train.batch_size}',
           '* tuned rates (first seed, lowest final loss): ' + '; '.join(
               f'{m} {o} {v["rate"]:g}' for m, r in out['tuned_rates'].items()
               for o, v in r.items()), '',
           *summary_lines(out), '',
           *[f'![{p.stem}](../figures/{p.name})' for p in paths], '',
           f'Numbers: `{json_path.relative_to(REPO)}`.']
  md = REPORT_DIR / f'block_heterogeneity_{stamp}.md'
  md.write_text('\n'.join(lines) + '\n')
  return md


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags, defined only when this module is the program:
  `experiments.main` defines `--config` too, and both are imported in one
  process by the tests."""
  flags.DEFINE_string('config', 'configs/transformer_lm.py',
                      'A config file (path[:arg]) with get_config(arg).')
  flags.DEFINE_string('from_log', None,
                      'Write the report from the printed lines of a run that '
                      'was stopped before its end (the seeds it finished; no '
                      'figures), instead of running.')


def load_config(spec):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  spec_ = importlib.util.spec_from_file_location('block_config', REPO / path
                                                 if not os.path.isabs(path)
                                                 else path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  return module.get_config(arg or None)


def main(argv):
  del argv
  config = load_config(FLAGS.config)
  if FLAGS.from_log:
    out = parse_log(pathlib.Path(FLAGS.from_log).read_text().splitlines())
    command = 'python -u -m experiments.block_heterogeneity' + (
        f' --config={FLAGS.config}'
        if FLAGS.config != 'configs/transformer_lm.py' else '')
    note = (f'partial: the run was stopped after seeds '
            f'{", ".join(out["per_seed"])}; numbers (4 significant digits) '
            f'from its printed lines by --from_log; no figures')
    path = write_report(config, out, {}, float('nan'), command, note)
    print('\n'.join(summary_lines(out)))
    print(f'report: {path}')
    return
  start = time.time()
  out, kept = run(config)
  command = 'python -m experiments.block_heterogeneity' + (
      f' --config={FLAGS.config}' if FLAGS.config != 'configs/transformer_lm.py'
      else '')
  path = write_report(config, out, kept, time.time() - start, command)
  print('\n'.join(summary_lines(out)))
  print(f'report: {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
