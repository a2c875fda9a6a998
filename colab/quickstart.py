# ---
# jupyter:
#   colab:
#     name: quickstart.ipynb
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
# # Quickstart: the Hessian spectrum of a small network, exactly and by SLQ
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/spectral-density/spectral_density/blob/main/colab/quickstart.ipynb)
#
# Ghorbani, Krishnan & Xiao (ICML 2019) estimate the eigenvalue density of a
# neural network's Hessian with **stochastic Lanczos quadrature** (SLQ): 90
# Hessian-vector products per random start vector, never the matrix itself.
# Their accuracy check is a network small enough to also diagonalise
# exactly: the 784-20-10 tanh MLP on Fashion-MNIST (15,910 parameters).
#
# This notebook redoes that check in a few cells:
#
# 1. train the MLP briefly with the repository's own experiment
#    (`configs/mlp_fashion_mnist.py`, `experiments.train`) on the
#    Fashion-MNIST subset shipped with the package (3,000 images);
# 2. build the exact Hessian of the training loss and its eigenvalues;
# 3. estimate the same spectrum with order-90 SLQ;
# 4. see what the order, the number of draws and the smoothing width do.
#
# Runs on a CPU, GPU or TPU runtime. By default the images are 14x14 centre
# crops (a 196-20-10 MLP, 4,150 parameters), so that the whole notebook runs
# in a few minutes on a 2-core CPU; the outputs stored with it come from
# that default run (its wall time and machine are in the notebook's
# metadata, under `spectral_density`). For the paper's own network set
# `IMAGE_SIZE = 28` (15,910 parameters): the exact eigendecomposition of
# its 15,910 x 15,910 Hessian then takes about 5 minutes on 2 cores and
# 9 GB of memory; everything else still takes seconds.

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
# CI runs the same cells at small sizes.
SMOKE = os.environ.get('SPECTRAL_DENSITY_NOTEBOOK_SMOKE') == '1'
IMAGE_SIZE = 8 if SMOKE else 14    # centre crops; 28: the paper's 784-20-10 MLP
NUM_EXAMPLES = 1000 if SMOKE else 3000  # training set, and the Hessian's
TRAIN_STEPS = 300                  # SGD steps of 120 examples
ORDER = 90                         # Lanczos steps per draw (the paper's)
NUM_DRAWS = 4 if SMOKE else 10     # random start vectors

# %%
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import spectral_density as sd
from configs import mlp_fashion_mnist
from experiments import input_pipeline
from experiments import models
from experiments import plots
from experiments import train
from spectral_density import plotting

# Figures here, in the notebook (`experiments` draws its own to files), at
# a resolution fit for print.
# %matplotlib inline
plt.rcParams['figure.dpi'] = plotting.DPI
print(jax.default_backend(), jax.local_device_count(), 'device(s)')

# %% [markdown]
# ## Training: the repository's MLP experiment, shortened
#
# `configs/mlp_fashion_mnist.py` is the main job's config: the paper's MLP
# (one hidden layer of 20 tanh units, cross-entropy), SGD with momentum on
# the embedded Fashion-MNIST subset. Here it runs `TRAIN_STEPS` steps on
# `IMAGE_SIZE` crops and takes no spectrum snapshots of its own: the cells
# below compute the spectrum with the library.
# `train.train_and_evaluate(config, workdir)` is the same call as
# `python -m experiments.main --config=... --workdir=...`.

# %%
config = mlp_fashion_mnist.get_config()
config.dataset.image_size = IMAGE_SIZE
config.dataset.num_train = NUM_EXAMPLES
config.num_steps = TRAIN_STEPS
config.optimizer.lr_drop_steps = ()
config.log_every_steps = 10
config.eval_every_steps = config.checkpoint_every_steps = TRAIN_STEPS
config.hessian.snapshot_steps = ()
config.hessian.exact = False
config.write_plots = False

workdir = tempfile.mkdtemp(prefix='quickstart_')
run = train.train_and_evaluate(config, workdir)

# %% [markdown]
# What this notebook uses of the finished run: the trained parameters and
# the training log, both in the value `train_and_evaluate` returns.

# %%
trained_params = run['state'].params
train_log = run['train']

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot([r['step'] for r in train_log], [r['loss'] for r in train_log])
ax.set_xlabel('SGD step')
plots.loss_axis(ax, [r['loss'] for r in train_log])  # from 0: no zoom on noise
plt.show()

# %% [markdown]
# ## Data and loss: the Hessian's
#
# The Hessian is that of the mean training loss over all `NUM_EXAMPLES`
# images, preprocessed as in training (`input_pipeline.hessian_dataset`: the
# first examples, normalised, not augmented). `models.make_loss_fn` turns
# the Flax module into `loss(params, batch) -> scalar`, the one function
# `spectral_density` needs.
#
# float64 makes the exact check exact. TPUs have no native float64: there
# everything stays float32, with full-precision float32 matrix products (a
# TPU's default rounds their inputs to bfloat16).

# %%
USE_FLOAT64 = jax.default_backend() != 'tpu'
jax.config.update('jax_enable_x64', USE_FLOAT64)
if not USE_FLOAT64:
  jax.config.update('jax_default_matmul_precision', 'highest')
DTYPE = jnp.float64 if USE_FLOAT64 else jnp.float32

train_set, _, info = input_pipeline.load_dataset(config)
data = input_pipeline.hessian_dataset(train_set, info, NUM_EXAMPLES)
data['image'] = data['image'].astype(DTYPE)
params = jax.tree.map(lambda p: jnp.asarray(p, DTYPE), trained_params)
model = models.create_model(config.model.name, info.num_classes,
                            config.model.norm)
loss = models.make_loss_fn(model, {}, 'train')

CLASSES = ('T-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
           'shirt', 'sneaker', 'bag', 'boot')
fig, axes = plt.subplots(1, 10, figsize=(12, 1.6))
for label, ax in enumerate(axes):
  ax.imshow(data['image'][np.argmax(data['label'] == label), ..., 0],
            cmap='gray')
  ax.set_title(CLASSES[label], fontsize=9)
  ax.axis('off')
plt.show()
num_params = sum(p.size for p in jax.tree.leaves(params))
print(f'{num_params:,} parameters; loss over all {NUM_EXAMPLES} examples: '
      f'{float(loss(params, data)):.3f}')

# %% [markdown]
# ## The exact spectrum
#
# `sd.get_hvp_fn(loss, params, data, batch_size=...)` returns the Hessian of
# the mean loss over the whole dataset as a linear operator: a function of a
# flat vector `v [num_params]` returning `H v`, batched over the data and
# spread over all local devices. `sd.dense_matrix` applies it to every unit
# vector (for small models only) and `sd.exact_eigenvalues` diagonalises the
# result.

# %%
hvp_fn, unravel, num_params = sd.get_hvp_fn(loss, params, data,
                                            batch_size=500)
start = time.perf_counter()
hessian = sd.dense_matrix(hvp_fn, num_params, dtype=DTYPE)
print(f'dense Hessian {hessian.shape}: {time.perf_counter() - start:.1f} s')
start = time.perf_counter()
exact = sd.exact_eigenvalues(hessian)
print(f'eigh: {time.perf_counter() - start:.1f} s')
del hessian
print(f'lambda_max = {exact[-1]:.6f}, lambda_min = {exact[0]:.6f}, '
      f'trace = {exact.sum():.4f}')

# %% [markdown]
# ## The SLQ estimate
#
# `sd.slq` runs `NUM_DRAWS` Lanczos iterations of `ORDER` steps from random
# unit vectors (all draws share each pass over the data) and returns a
# `SpectrumResult`: Gauss quadrature nodes and weights per draw, from which
# the density and the estimators come without further products.
#
# `keep_vecs=True` keeps each draw's Lanczos basis (`NUM_DRAWS x ORDER`
# vectors of `num_params`). The trace needs them: each draw's `v^T H v`
# alone (Hutchinson's estimate) is noisy, dominated by the few outliers;
# with the bases kept, the outliers the other draws' Krylov spaces have
# found are summed exactly and only the rest is estimated (the deflated
# trace), with a standard error from the spread over draws.

# %%
start = time.perf_counter()
result = sd.slq(hvp_fn, num_params, order=ORDER, num_draws=NUM_DRAWS,
                rng_key=jax.random.key(0), keep_vecs=True)
print(f'SLQ, order {ORDER}, {NUM_DRAWS} draws: '
      f'{time.perf_counter() - start:.1f} s '
      f'({ORDER} products over {NUM_EXAMPLES} examples)\n')
print(' k   exact         SLQ')
for k, (e, s) in enumerate(zip(exact[::-1][:5], result.top_eigenvalues(5))):
  print(f'{k + 1:2d}   {e:.9f}   {s:.9f}')
print(f'\nlambda_min: exact {exact[0]:.6f}, SLQ {result.lambda_min:.6f}')
print(f'trace:      exact {exact.sum():.4f}, SLQ {result.trace:.4f} '
      f'+- {result.trace_stderr:.4f} (deflated; relative error '
      f'{abs(result.trace / exact.sum() - 1):.1e})')

# %% [markdown]
# The extreme eigenvalues are Ritz values, exact to the last digits: Lanczos
# finds the outliers first. The density is a smoothed version of the
# quadrature: a Gaussian of width `sigma` around each node, weighted. Drawn
# against the exact eigenvalues smoothed with the same `sigma` (dashed), on
# the paper's log scale:

# %%
width = exact[-1] - exact[0]
grid = np.linspace(exact[0] - 0.02 * width, exact[-1] + 0.02 * width, 20001)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax in axes:
  plotting.plot_spectrum(result, grid=grid, sigma=1e-3 * width, exact=exact,
                         ax=ax, label=f'SLQ, order {ORDER}, {NUM_DRAWS} draws',
                         num_examples=NUM_EXAMPLES)
axes[0].set_title('whole spectrum: the bulk near 0 and a few outliers')
axes[1].set_xlim(exact[0] - 0.01 * width, 0.1 * width)
axes[1].set_title('zoom on the bulk')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Order, draws and smoothing width
#
# What each knob does, against the exact density (dashed), with the L1
# distance between the two curves in the legend:
#
# * **order**: more Lanczos steps resolve more of the spectrum; the outliers
#   converge first, the bulk last;
# * **draws**: each draw is an unbiased but noisy estimate of the density;
#   averaging draws reduces the noise of the bulk;
# * **sigma**: the kernel width trades resolution for smoothness: below the
#   spacing of the quadrature nodes the estimate breaks into spikes.

# %%
def smoothed(nodes, weights, sigma):
  """Density of quadrature nodes [draws, order] on `grid`, unrenormalised."""
  return sd.eigv_to_density(nodes, weights, grid, sigma=sigma,
                            normalize=False)[0]


def l1(estimate, reference):
  """L1 distance of two densities on `grid`."""
  return float(np.trapezoid(np.abs(estimate - reference), grid))


by_order = {}
for order in (10, 30):
  r = sd.slq(hvp_fn, num_params, order=order, num_draws=NUM_DRAWS,
             rng_key=jax.random.key(0))
  by_order[f'order {order}'] = (r.nodes, r.weights)
by_order[f'order {ORDER}'] = (result.nodes, result.weights)
by_draws = {f'{d} draw' + 's' * (d > 1): (result.nodes[:d], result.weights[:d])
            for d in sorted({1, 2, NUM_DRAWS})}
SIGMA = 1e-3 * width                # the first two panels
# The third: sigma / (lambda_max - lambda_min).
FACTORS = (1e-4, 1e-3, 1e-2)
reference = sd.exact_density(exact, grid, SIGMA)
knobs = {}                          # L1 distances, kept for the summary

# %% tags=["readme-figure"]
fig, axes = plt.subplots(1, 3, figsize=(16, 4.3), sharey=True)
for ax, (title, curves) in zip(
    axes, ((f'order ({NUM_DRAWS} draws, sigma = 1e-3 x range)', by_order),
           (f'draws (order {ORDER}, sigma = 1e-3 x range)', by_draws))):
  for style, (label, (nodes, weights)) in zip(plotting.LINE_STYLES,
                                              curves.items()):
    density = smoothed(nodes, weights, SIGMA)
    knobs[label] = l1(density, reference)
    plotting.plot_density(grid, density, ax=ax, linestyle=style,
                          label=f'{label}: L1 {knobs[label]:.2g}')
  plotting.plot_density(grid, reference, ax=ax, label='exact',
                        **plotting.EXACT_STYLE)
  ax.set_title(title)
plotting.annotate_density(axes[0], SIGMA, num_draws=NUM_DRAWS,
                          num_examples=NUM_EXAMPLES)
plotting.annotate_density(axes[1], SIGMA, order=ORDER,
                          num_examples=NUM_EXAMPLES)
plotting.annotate_density(axes[2], None, order=ORDER, num_draws=NUM_DRAWS,
                          num_examples=NUM_EXAMPLES)
for style, factor in zip(plotting.LINE_STYLES, FACTORS):
  density = smoothed(result.nodes, result.weights, factor * width)
  reference_sigma = sd.exact_density(exact, grid, factor * width)
  knobs[f'sigma {factor:g}'] = l1(density, reference_sigma)
  # Narrow kernels drawn first, so that the smooth curves stay visible.
  axes[2].plot(grid, np.maximum(density, plotting.LOG_FLOOR), linestyle=style,
               label=f'sigma {factor:g} x range: L1 '
               f'{knobs[f"sigma {factor:g}"]:.2g}')
  axes[2].plot(grid, np.maximum(reference_sigma, plotting.LOG_FLOOR),
               **plotting.EXACT_STYLE)
axes[2].set_xlabel('eigenvalue')
axes[2].set_ylabel('density')
axes[2].yaxis.set_tick_params(labelleft=True)
axes[2].legend()
axes[2].set_title(f'smoothing width (order {ORDER}, {NUM_DRAWS} draws)')
# The bulk and the smaller outliers; the largest ones lie further right.
for ax in axes:
  ax.set_xlim(exact[0] - 0.02 * width, exact[0] + 0.4 * width)
fig.suptitle(f'SLQ against the exact Hessian spectrum of a {num_params:,}-'
             'parameter MLP on Fashion-MNIST', y=1.02)
plt.tight_layout()
plt.show()

# %% [markdown]
# Dashed: the exact density at the same width. At order 10 only the largest
# outliers have converged and the bulk is a few broad bumps; at order 90 the
# estimate follows the exact density closely. More draws lower the noise of
# the bulk. A narrower kernel resolves more, until it falls below the spacing
# of the quadrature nodes in the pile of near-zero eigenvalues: there the
# estimate breaks into spikes, a bias that more draws do not remove.
#
# ## In numbers

# %%
summary = {
    'num_params': int(num_params),
    'num_examples': NUM_EXAMPLES,
    'exact_lambda_max': float(exact[-1]),
    'slq_lambda_max': result.lambda_max,
    'exact_lambda_min': float(exact[0]),
    'slq_lambda_min': result.lambda_min,
    'exact_top5': exact[::-1][:5].tolist(),
    'slq_top5': result.top_eigenvalues(5).tolist(),
    'exact_trace': float(exact.sum()),
    'slq_trace': result.trace,
    'slq_trace_stderr': result.trace_stderr,
    'l1': knobs,
}
summary
