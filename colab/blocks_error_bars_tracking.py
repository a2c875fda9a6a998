# ---
# jupyter:
#   colab:
#     name: blocks_error_bars_tracking.ipynb
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab
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
# # Block spectra, error bars, and the top eigenspace over training
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/spectral-density/spectral_density/blob/main/colab/blocks_error_bars_tracking.ipynb)
#
# Three things the Hessian tools are asked for and rarely give, each from
# the same SLQ runs as the density:
#
# 1. **per-layer (block) spectra** in one run: `sd.block_spectra`, here for
#    ResNet-32 with and without batch norm, side by side;
# 2. **error bars**: a 90% band of the smoothed density from the spread over
#    draws, and the a-posteriori band of the spectral CDF of Chen, Trogdon &
#    Ubaru (2021); a deflated trace and spectral sums with standard errors;
# 3. **the top eigenspace over training**: the principal angles between the
#    top-10 Ritz subspaces of consecutive snapshots, and the gradient's share
#    of the previous snapshot's space.
#
# The defaults run on a CPU runtime in a few minutes (ResNet-32 at
# initialisation on 64 Fashion-MNIST images of 16x16, order 8; a 256-20-10
# MLP trained for 200 steps). The outputs stored with this notebook come
# from that default run (its wall time and machine are in the notebook's
# metadata, under `spectral_density`).

# %%
# Colab: install the package from GitHub, keeping every package the runtime
# already has at its installed version (JAX for the runtime's GPU or TPU,
# Flax, optax, NumPy, ...): they go to pip as constraints, so pip adds only
# what is missing (ml_collections) or stops with an error; it never upgrades
# them. Where the package already imports (a checkout, CI) nothing happens.
import importlib.metadata, importlib.util, os, subprocess, sys, tempfile  # pylint: disable=multiple-imports
if importlib.util.find_spec('spectral_density') is None:
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as pins:
    pins.write('\n'.join(f'{d.metadata["Name"]}=={d.version}'
                         for d in importlib.metadata.distributions()))
  subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q',
      '-c', pins.name, 'spectral_density[experiments] @ '
      'git+https://github.com/spectral-density/spectral_density'])

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import spectral_density as sd
from experiments import datasets
from experiments import models
from spectral_density import plotting

# %matplotlib inline
plt.rcParams['figure.dpi'] = plotting.DPI     # figures fit for print

# CI runs the same cells at small sizes.
SMOKE = os.environ.get('SPECTRAL_DENSITY_NOTEBOOK_SMOKE') == '1'
RESNET = 'resnet8' if SMOKE else 'resnet32'
IMAGE_SIZE = 8 if SMOKE else 16          # centre crops of the 28x28 images
RESNET_EXAMPLES = 32 if SMOKE else 64    # the Hessian set of the ResNets
RESNET_ORDER = 4 if SMOKE else 8
MLP_ORDER = 12 if SMOKE else 40
MLP_DRAWS = 4                            # >= 2: bands and standard errors
SNAPSHOT_STEPS = (0, 2, 4, 6) if SMOKE else (0, 25, 50, 100, 200)
TOP_K = 4 if SMOKE else 10               # the number of classes
print(RESNET, f'{IMAGE_SIZE}x{IMAGE_SIZE}', 'on', jax.default_backend())

# %% [markdown]
# ## Data
#
# The Fashion-MNIST subset shipped with the package (3,000 training
# images), centre-cropped and standardised.

# %%
raw = datasets.read_embedded_fashion_mnist('train')
crop = (28 - IMAGE_SIZE) // 2
images = raw['image'][:, crop:crop + IMAGE_SIZE,
                      crop:crop + IMAGE_SIZE].astype(np.float32) / 255.0
images = (images - images.mean()) / images.std()
data = {'image': images, 'label': raw['label'].astype(np.int32)}
print({k: v.shape for k, v in data.items()})

# %% [markdown]
# ## 1. Per-layer spectra of ResNet-32, with and without batch norm
#
# `sd.block_spectra` runs Lanczos on each diagonal block `H_bb` of the
# Hessian (the curvature restricted to one group of parameters), all blocks
# as one batch of vectors: every pass over the data serves all of them, and
# each block's products differentiate only its own parameters. The blocks
# here are the stem, the three stages of residual blocks and the head (the
# final norm and the classifier), given as predicates on the parameter
# paths. The batch-norm network's Hessian is that of the training loss (each
# batch normalised by its own statistics). On a CPU the Hessian set is
# streamed as a list of batches (XLA runs convolutions inside compiled loops
# slowly there, jax#12868).

# %%
def stage_blocks(params):
  """{name: predicate on the parameter path}: stem, 3 stages, head."""
  per_stage = sum(k.startswith('PreActBlock') for k in params) // 3
  def stage(path):
    if not path.startswith('PreActBlock'):
      return None
    return int(path.split('/')[0].split('_')[1]) // per_stage
  return {'stem': lambda p: p.startswith('conv_init'),
          'stage 1': lambda p: stage(p) == 0,
          'stage 2': lambda p: stage(p) == 1,
          'stage 3': lambda p: stage(p) == 2,
          'head': lambda p: p.startswith(('norm_final', 'Dense_0'))}


hessian_set = {k: v[:RESNET_EXAMPLES] for k, v in data.items()}
batches = [{k: v[i:i + 16] for k, v in hessian_set.items()}
           for i in range(0, RESNET_EXAMPLES, 16)]
block_results, num_params_of = {}, {}
for norm in ('none', 'batch'):
  start = time.perf_counter()
  model = models.create_model(RESNET, 10, norm)
  params, state = models.split_variables(models.init_variables(
      model, jax.random.key(0), (1, IMAGE_SIZE, IMAGE_SIZE, 1)))
  loss = models.make_loss_fn(model, state, 'train')
  num_params_of[norm] = int(sum(x.size for x in jax.tree.leaves(params)))
  block_results[norm] = sd.block_spectra(
      loss, params, batches if jax.default_backend() == 'cpu' else
      hessian_set, batch_size=None if jax.default_backend() == 'cpu' else 16,
      blocks=stage_blocks(params), order=RESNET_ORDER, num_draws=1,
      include_full=False)
  print(f'{norm}: {time.perf_counter() - start:.0f} s')

# %% tags=["readme-figure"]
LABELS = {'none': 'no batch norm', 'batch': 'batch norm'}
fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
for ax, norm in zip(axes, ('none', 'batch')):
  for i, (name, result) in enumerate(block_results[norm].items()):
    ritz = result.nodes[0, :int(result.num_steps[0])]
    ax.scatter(ritz, np.full(ritz.size, i), s=25)
    ax.annotate(f'{result.lambda_max:.3g}', (result.lambda_max, i),
                textcoords='offset points', xytext=(6, -3), fontsize=8)
  ax.set_yticks(range(len(block_results[norm])),
                [f'{k} ({block_results[norm].sizes[k]:,})'
                 for k in block_results[norm]])
  ax.axvline(0, color='gray', lw=0.5)
  ax.set_xlabel('Ritz values of the diagonal block H_bb')
  ax.set_title(f'{RESNET} at initialisation, {LABELS[norm]}\n'
               f'order {RESNET_ORDER}, 1 draw, {RESNET_EXAMPLES} examples',
               fontsize=10)
axes[0].set_ylabel('block (parameters)')
plt.tight_layout()
plt.show()

# %% [markdown]
# Each row: the Ritz values of one block (its Gauss nodes; the largest,
# annotated, is a lower bound of the block's `lambda_max`, and the spread
# of the others shows the block's range). Compare the same block across
# the two panels (note the different x scales): the network without batch
# norm is a plain ResNet whose residual branches start scaled down by the
# square root of their number (`experiments.resnets`, norm `'none'`), the
# one with batch norm normalises every stage by the batch's statistics. The
# blocks are at initialisation, a `BlockSpectra.distance` needs the full
# spectrum too (`include_full=True`, one more set of rows in the batch).
#
# ## 2. A density with its error bars
#
# A 256-20-10 tanh MLP (64-20-10 in the reduced run), trained briefly with
# SGD; at each snapshot the full-data Hessian's spectrum by SLQ with 4
# draws and the Lanczos bases kept.

# %%
mlp = models.create_model('mlp', 10, 'none')
params, state = models.split_variables(models.init_variables(
    mlp, jax.random.key(1), (1, IMAGE_SIZE, IMAGE_SIZE, 1)))
mlp_loss = models.make_loss_fn(mlp, state, 'eval')
tx = optax.sgd(0.1, momentum=0.9)
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, batch):
  grads = jax.grad(mlp_loss)(params, batch)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


rng = np.random.default_rng(0)
snapshots = {}
for step in range(max(SNAPSHOT_STEPS) + 1):
  if step in SNAPSHOT_STEPS:
    hvp_fn, _, num_params = sd.get_hvp_fn(mlp_loss, params, data,
                                          batch_size=1000)
    snapshots[step] = (sd.slq(hvp_fn, num_params, order=MLP_ORDER,
                              num_draws=MLP_DRAWS, keep_vecs=True,
                              rng_key=jax.random.key(step)),
                       np.asarray(hvp_fn.gradient()))
  idx = rng.choice(len(data['label']), 100, replace=False)
  params, opt_state = train_step(params, opt_state,
                                 {k: v[idx] for k, v in data.items()})
spectrum = snapshots[max(SNAPSHOT_STEPS)][0]
print(num_params, 'parameters; lambda_max', spectrum.lambda_max)

# %% [markdown]
# Left: the smoothed density with its pointwise 90% band from the spread
# over the draws (`density_band`). Right: the spectral CDF `#{lambda <= x} /
# n` by SLQ with the a-posteriori band of Chen, Trogdon & Ubaru (2021)
# (`cdf_band`): each draw's Gauss rule bounds its own weighted CDF between
# the rule shifted one node each way, and the average over draws is within
# `sqrt(ln(2 / 0.1) / (draws (n + 2)))` of the CDF with probability 0.9.

# %%
sigma = 0.01 * (spectrum.lambda_max - spectrum.lambda_min)
lower, upper, grid = spectrum.density_band(sigma, level=0.9)
density, _ = spectrum.density(grid, sigma, normalize=False)
band = spectrum.cdf_band(level=0.9)
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
axes[0].fill_between(grid, np.maximum(lower, 1e-7), upper, alpha=0.3,
                     label='90% band')
axes[0].semilogy(grid, np.maximum(density, 1e-7), label='SLQ density')
axes[0].set_ylim(1e-5, None)
axes[0].set_xlabel('eigenvalue')
axes[0].set_ylabel('density')
axes[0].legend()
plotting.annotate_density(axes[0], sigma, order=MLP_ORDER,
                          num_draws=MLP_DRAWS,
                          num_examples=len(data['label']))
axes[1].fill_between(band.grid, band.lower, band.upper, step='post',
                     alpha=0.3, label='90% band (Chen, Trogdon & Ubaru)')
axes[1].step(band.grid, band.cdf, where='post', label='SLQ CDF')
axes[1].set_xlabel('eigenvalue x')
axes[1].set_ylabel('#{eigenvalues <= x} / n')
axes[1].legend(loc='lower right')
plotting.annotate_density(axes[1], None, order=MLP_ORDER,
                          num_draws=MLP_DRAWS,
                          num_examples=len(data['label']))
fig.suptitle(f'MLP at step {max(SNAPSHOT_STEPS)}, order {MLP_ORDER}, '
             f'{MLP_DRAWS} draws')
plt.tight_layout()
plt.show()
print(f'trace {spectrum.trace:.4g} +- {spectrum.trace_stderr:.2g} '
      '(deflated by the other draws\' Krylov spaces)')
print(f'tr(H^2) {spectrum.spectral_sum(np.square):.4g} +- '
      f'{spectrum.spectral_sum_stderr(np.square):.2g}')

# %% [markdown]
# ## 3. The top eigenspace over training
#
# For consecutive snapshots: the overlap of their top-10 Ritz subspaces
# (the mean squared cosine of the principal angles, `sd.subspace_overlap`;
# 1 is the same space, about `10 / n` unrelated ones), and the fraction of
# the current full-batch gradient in the previous snapshot's top-10 space
# and in its own (`sd.subspace_tracking`).

# %%
tracking, previous = [], None
for step in SNAPSHOT_STEPS:
  current, gradient = snapshots[step]
  tracking.append({'step': step, **sd.subspace_tracking(previous, current,
                                                        gradient, TOP_K)})
  previous = current
fig, ax = plt.subplots(figsize=(7, 3.5))
later = tracking[1:]
ax.plot([r['step'] for r in later], [r['overlap'] for r in later], 'o-',
        label=f'overlap with the previous top-{TOP_K} space')
ax.plot([r['step'] for r in later],
        [r['gradient_fraction_previous'] for r in later], 's-',
        label='gradient in the previous space')
ax.plot([r['step'] for r in tracking],
        [r['gradient_fraction_current'] for r in tracking], '^:',
        label='gradient in its own space')
ax.set_ylim(0, 1.05)
ax.set_xlabel('training step')
ax.set_ylabel('fraction')
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## In numbers

# %%
summary = {
    'resnet': RESNET,
    'block_lambda_max': {norm: {k: r.lambda_max for k, r in res.items()}
                         for norm, res in block_results.items()},
    'block_sizes': {norm: res.sizes for norm, res in block_results.items()},
    'num_params': num_params_of,
    'mlp_lambda_max': spectrum.lambda_max,
    'mlp_trace': spectrum.trace, 'mlp_trace_stderr': spectrum.trace_stderr,
    'cdf_band_inside': bool(np.all((band.lower <= band.cdf) &
                                   (band.cdf <= band.upper))),
    'cdf_band_width': float(np.mean(band.upper - band.lower)),
    'tracking': tracking,
}
for norm, res in block_results.items():
  print(LABELS[norm], {k: round(r.lambda_max, 4) for k, r in res.items()})
for r in tracking:
  print(r)
