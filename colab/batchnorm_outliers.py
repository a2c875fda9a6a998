# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     name: batchnorm_outliers.ipynb
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Batch norm and the outliers of the Hessian
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/spectral_density/blob/main/colab/batchnorm_outliers.ipynb)
#
# Section 4 of Ghorbani, Krishnan & Xiao (ICML 2019) compares ResNet-32 on
# CIFAR-10 with and without batch norm and finds:
#
# * **without batch norm** the Hessian has a few large isolated eigenvalues,
#   **outliers**, about as many as there are classes;
# * the gradient lies almost entirely in the **span of those outliers**, so
#   they, not the bulk, set how fast SGD can go;
# * **with batch norm** the outliers are (mostly) gone and `lambda_max` stays
#   small over training;
# * batch norm with **population statistics** (a fixed sample of the training
#   set, not the mini-batch) brings the outliers back: it is the batch
#   statistics that suppress them.
#
# This notebook runs the repository's three experiments
# (`configs/resnet32_cifar10{_nobn,,_popbn}.py`) through
# `experiments.train.train_and_evaluate`, shortened: each trains for a short
# while and takes the Hessian spectrum of the training loss at a few steps.
# Then it plots what changes. The defaults run on a CPU runtime
# (Fashion-MNIST shipped with the package, 16x16 crops, a few hundred steps,
# a small Hessian set); the cell **Full size** below switches to CIFAR-10
# and the paper's settings on a GPU or TPU runtime.
#
# The outputs stored with this notebook come from its reduced run
# (`SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1`: 8x8 crops, 2 training steps, a
# Hessian over 32 images): they show the cells at work, not the paper's
# result.

# %%
# Colab: install the package from GitHub (OWNER: the repository's owner).
# Colab's own JAX already runs on the runtime's GPU or TPU, and where the
# package already imports (a checkout, CI) nothing is installed.
import importlib.util, os, subprocess, sys  # pylint: disable=multiple-imports
if importlib.util.find_spec('spectral_density') is None:
  subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q',
      'spectral_density[notebook] @ git+https://github.com/OWNER/spectral_density'])

# %% [markdown]
# ## Sizes
#
# What the notebook changes in the experiment configs, as flattened config
# keys (the same names as the command line's `--config.KEY=VALUE`).

# %%
import jax

# CI runs the same cells at small sizes.
SMOKE = os.environ.get('SPECTRAL_DENSITY_NOTEBOOK_SMOKE') == '1'
# CPU-runtime defaults (about 15 minutes); SMOKE shrinks them further.
NUM_STEPS = 2 if SMOKE else 200
BATCH_SIZE = 16 if SMOKE else 64    # also the batch of the Hessian's batch norm
OVERRIDES = {
    # The 3,000-image Fashion-MNIST subset shipped with the package.
    'dataset.name': 'embedded_fashion_mnist',
    'dataset.data_dir': None,
    'dataset.augmentation': 'none',
    'dataset.image_size': 8 if SMOKE else 16,   # centre crops of 28x28
    'dataset.num_train': 256 if SMOKE else 3000,
    'dataset.num_test': 64 if SMOKE else 1000,
    'batch_size': BATCH_SIZE,
    'num_steps': NUM_STEPS,
    # Each config keeps its own learning rate (0.1 with BN; 0.03 for
    # population BN and no BN, where 0.1 diverges: README, Experiments).
    # SMOKE trains ResNet-8, the same family with one unit per stage: three
    # ResNet-32 compilations would dominate the CI run.
    'model.name': 'resnet8' if SMOKE else 'resnet32',
    'optimizer.warmup_steps': 1 if SMOKE else 20,
    'optimizer.lr_drop_steps': (),
    'eval_every_steps': NUM_STEPS,
    'eval_batch_size': 64 if SMOKE else 200,
    'log_every_steps': 1 if SMOKE else 10,
    'checkpoint_every_steps': NUM_STEPS,
    'model.population_num_examples': 64 if SMOKE else 1024,
    'model.population_refresh_steps': 50,
    'hessian.snapshot_steps': (0, 2) if SMOKE else (0, 25, 50, 100, 200),
    'hessian.num_examples': 32 if SMOKE else 128,  # the first training examples
    'hessian.batch_size': BATCH_SIZE,
    'hessian.order': 12 if SMOKE else 30,       # Lanczos steps per snapshot
    # On a CPU, XLA runs convolutions inside compiled loops much more slowly
    # than outside them (jax#12868): there the Hessian set is streamed, one
    # call per batch. On a GPU or TPU it is copied to the devices once and
    # the whole Lanczos run is one compiled program.
    'hessian.stream': jax.default_backend() == 'cpu',
    'write_plots': False,
}
# The population-statistics network diverges at the others' rate (see
# Training), so it trains at a tenth of it.
LEARNING_RATE_SCALE = {'none': 1.0, 'batch': 1.0, 'population': 0.1}
TOP_K = 10                          # outliers expected: the number of classes

# %% [markdown]
# ## Full size (GPU / TPU runtime)
#
# On a GPU or TPU runtime this cell replaces the CPU sizes by the real
# experiment: the configs as they are (ResNet-32 on CIFAR-10, downloaded,
# 170 MB; the paper's batch size, learning rate and weight decay; order-90
# SLQ) for the first 5,000 training steps, with the Hessian over 4,096
# training examples (the population-statistics network still at a tenth of
# the learning rate). About half an hour on an A100, longer on a T4. Set
# `FULL_SIZE` by hand to override the choice.

# %%
FULL_SIZE = jax.default_backend() in ('gpu', 'tpu') and not SMOKE
if FULL_SIZE:
  import tarfile
  import urllib.request

  CIFAR_DIR = os.path.expanduser('~/.cache/cifar-10-batches-py')
  if not os.path.exists(CIFAR_DIR):
    archive, _ = urllib.request.urlretrieve(
        'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz')
    with tarfile.open(archive) as tar:
      tar.extractall(os.path.dirname(CIFAR_DIR), filter='data')
  NUM_STEPS = 5_000
  OVERRIDES = {
      'dataset.data_dir': CIFAR_DIR,
      'num_steps': NUM_STEPS,
      'optimizer.lr_drop_steps': (),  # the paper's drop comes at step 40k
      'optimizer.warmup_steps': 200,
      'eval_every_steps': 1_000,
      'checkpoint_every_steps': 1_000,
      'hessian.snapshot_steps': (0, 100, 250, 500, 1_000, 2_500, 5_000),
      'hessian.num_examples': 4_096,
      'write_plots': False,
  }
print('full size' if FULL_SIZE else 'smoke' if SMOKE else 'CPU-sized defaults',
      'on', jax.default_backend())

# %%
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

from configs import resnet32_cifar10
from configs import resnet32_cifar10_nobn
from configs import resnet32_cifar10_popbn
from experiments import input_pipeline
from experiments import plots
from experiments import train
from spectral_density import plotting

# Figures here, in the notebook (`experiments` draws its own to files).
# %matplotlib inline

NORMS = ('none', 'batch', 'population')
CONFIGS = {'none': resnet32_cifar10_nobn, 'batch': resnet32_cifar10,
           'population': resnet32_cifar10_popbn}
LABELS = {'none': 'no batch norm', 'batch': 'batch norm',
          'population': 'population batch norm'}
COLORS = {'none': 'tab:red', 'batch': 'tab:blue', 'population': 'tab:green'}


def make_config(norm):
  """The experiment of one normalisation, at this notebook's sizes."""
  config = CONFIGS[norm].get_config()
  config.update_from_flattened_dict(OVERRIDES)
  config.optimizer.learning_rate *= LEARNING_RATE_SCALE[norm]
  return config


experiment_configs = {norm: make_config(norm) for norm in NORMS}
SNAPSHOT_STEPS = tuple(experiment_configs['none'].hessian.snapshot_steps)
ORDER = experiment_configs['none'].hessian.order
HESSIAN_EXAMPLES = experiment_configs['none'].hessian.num_examples

# %% [markdown]
# ## Data
#
# `experiments.input_pipeline` reads the data (`load_dataset` takes the
# `dataset` part of the config), makes shuffled training batches and the
# fixed, unaugmented set the Hessian is taken over (`hessian_dataset`): the
# first `hessian.num_examples` training examples, in batches of
# `hessian.batch_size`. With batch norm every such batch is normalised by its
# own statistics, exactly as in training: the Hessian is that of the
# **training loss**. A few of the Hessian set's images:

# %%
train_set, _, info = input_pipeline.load_dataset(experiment_configs['none'])
print(info)
fig, axes = plt.subplots(1, 10, figsize=(12, 1.5))
for ax, image in zip(axes, input_pipeline.hessian_dataset(train_set, info,
                                                          10)['image']):
  image = (image - image.min()) / (image.max() - image.min())
  ax.imshow(image.squeeze(), cmap='gray')
  ax.axis('off')
plt.show()

# %% [markdown]
# ## Training
#
# SGD with momentum, weight decay on the kernels, a linear warm-up, as the
# configs say. The network without batch norm keeps batch norm's learnable
# scale and bias and starts each residual branch at zero
# (`experiments.models`), so it trains at the same learning rate as the
# batch-norm one. The population statistics are recomputed every
# `model.population_refresh_steps` steps and before each snapshot.
#
# The network with population statistics starts with a `lambda_max` one to
# two orders of magnitude above the others (its first snapshot below), and
# gradient descent is unstable once the step size times `lambda_max`
# exceeds about 2 (`2 (1 + momentum)` with momentum): at the others'
# learning rate it diverges within a few dozen steps, so it trains at a
# tenth of it. That is the paper's point about outliers in one number.
#
# Each run is `python -m experiments.main --config=... --workdir=...`: it
# writes its snapshots, logs and checkpoints to its work directory, and
# prints its summary table at the end.

# %%
workdirs = {}
for norm in NORMS:
  start = time.perf_counter()
  workdirs[norm] = tempfile.mkdtemp(prefix=f'batchnorm_outliers_{norm}_')
  train.train_and_evaluate(experiment_configs[norm], workdirs[norm])
  print(f'{LABELS[norm]}: {time.perf_counter() - start:.0f} s\n')

# %% [markdown]
# Reading the runs back: the one cell that knows where `train_and_evaluate`
# puts its results (`experiments.plots.load_run` reads a work directory).

# %%
def read_run(workdir):
  """(snapshot records, {step: SpectrumResult}, test accuracy) of a run."""
  run = plots.load_run(workdir)
  return run['snapshots'], run['spectra'], run['eval'][-1]['accuracy']


records, spectra, accuracy = {}, {}, {}
for norm in NORMS:
  snapshots, by_step, accuracy[norm] = read_run(workdirs[norm])
  records[norm] = [{key: r[key] for key in ('step', 'lambda_max',
                                            'lambda_ratio',
                                            'gradient_concentration')}
                   for r in snapshots]
  spectra[norm] = by_step[max(by_step)]      # the last snapshot's SLQ

# %% [markdown]
# ## What changed
#
# Left: the largest Ritz values at the end of training, each network's
# divided by its own `lambda_max`: outliers show as a few values well above
# the rest, then a drop. Middle: `lambda_max` over training. Right: the
# fraction of the full-batch gradient in the span of the top-10 Ritz
# vectors, the paper's gradient concentration.

# %% tags=["readme-figure"]
fig, axes = plt.subplots(1, 3, figsize=(17, 4.3))
shown = min(2 * TOP_K, ORDER)
for norm in NORMS:
  top_values = spectra[norm].top_eigenvalues(shown)
  axes[0].plot(np.arange(1, shown + 1), top_values / top_values[0], 'o-',
               color=COLORS[norm],
               label=f'{LABELS[norm]} (lambda_max {top_values[0]:.3g})')
  steps = [r['step'] for r in records[norm]]
  axes[1].plot(steps, [r['lambda_max'] for r in records[norm]], 'o-',
               color=COLORS[norm], label=LABELS[norm])
  axes[2].plot(steps, [r['gradient_concentration'] for r in records[norm]],
               'o-', color=COLORS[norm], label=LABELS[norm])
axes[0].axvline(TOP_K + 0.5, color='gray', linestyle=':')
axes[0].set_xlabel('rank i')
axes[0].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
axes[0].set_ylabel('lambda_i / lambda_max')
axes[0].set_title(f'top Ritz values at step {NUM_STEPS}')
axes[1].set_yscale('log')
axes[1].set_title('lambda_max over training')
axes[2].set_ylim(0, 1)
axes[2].set_title(f'gradient in the top-{min(TOP_K, ORDER)} eigenspace')
for ax in axes[1:]:
  ax.set_xlabel('training step')
for ax in axes:
  ax.legend()
fig.suptitle(f'{"ResNet-8" if SMOKE else "ResNet-32"} on {"CIFAR-10" if FULL_SIZE else "Fashion-MNIST"}, '
             f'Hessian over {HESSIAN_EXAMPLES} training examples', y=1.02)
plt.tight_layout()
plt.show()

# %% [markdown]
# The densities themselves, on the paper's log scale, each against its own
# `lambda_max` (the three differ by an order of magnitude). With only
# `ORDER` quadrature nodes per draw every node is a bump: what matters is
# whether the largest ones stand apart from the bulk at 0 or continue it.

# %%
fig, axes = plt.subplots(1, 3, figsize=(17, 3.8), sharey=True)
relative = np.linspace(-0.3, 1.05, 4000)   # eigenvalue / lambda_max
for ax, norm in zip(axes, NORMS):
  scale = spectra[norm].lambda_max
  density, _ = spectra[norm].density(relative * scale, 5e-3 * scale)
  plotting.plot_density(relative, density * scale, ax=ax, color=COLORS[norm])
  ax.set_xlabel('eigenvalue / lambda_max')
  ax.set_title(f'{LABELS[norm]}: lambda_max {scale:.3g}')
plt.tight_layout()
plt.show()

# %% [markdown]
# Read these with the sizes in mind: on the CPU defaults the networks see
# 200 steps on small crops and the Hessian is over 128 examples, so the
# picture is a sketch of the paper's; the full-size cell gives the real
# one.
#
# ## In numbers

# %%
summary = {
    'full_size': FULL_SIZE,
    'snapshot_steps': list(SNAPSHOT_STEPS),
    'records': records,
    'test_accuracy': accuracy,
    'top_eigenvalues': {
        n: spectra[n].top_eigenvalues(min(TOP_K, ORDER)).tolist()
        for n in NORMS},
}
for norm in NORMS:
  last = records[norm][-1]
  print(f'{LABELS[norm]:22s} lambda_max {last["lambda_max"]:8.3f}  '
        f'lambda_1/lambda_{min(TOP_K, ORDER)} {last["lambda_ratio"]:6.2f}  '
        f'gradient concentration {last["gradient_concentration"]:.2f}  '
        f'test accuracy {accuracy[norm]:.3f}')
