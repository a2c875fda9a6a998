# ---
# jupyter:
#   colab:
#     name: your_model.ipynb
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
# # The spectrum of your model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/spectral-density/spectral_density/blob/main/colab/your_model.ipynb)
#
# `spectral_density` needs three things: a loss `loss(params, batch) ->
# scalar` (the mean over the batch), the parameters (any pytree of arrays)
# and the data. This notebook goes through the cases you will meet:
#
# 1. a model written in plain JAX;
# 2. a Flax module with batch norm: the Hessian of the training loss (batch
#    statistics) or of the evaluation loss (running averages);
# 3. data too large for the device: batches streamed from the host;
# 4. several devices;
# 5. the Hessian, the Gauss-Newton matrix and the empirical Fisher on one
#    plot;
# 6. the top eigenvectors (Ritz vectors) and what they say.
#
# Runs on a CPU, GPU or TPU runtime, in a few minutes on a CPU. The outputs
# stored with this notebook come from its default run, the sizes below (its
# wall time and machine are in the notebook's metadata, under
# `spectral_density`).

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
NUM_EXAMPLES = 256 if SMOKE else 1000  # the Hessian is over all of them
BATCH_SIZE = 64 if SMOKE else 250      # examples per Hessian batch
TRAIN_STEPS = 20 if SMOKE else 400
ORDER = 16 if SMOKE else 60            # Lanczos steps
NUM_DRAWS = 1 if SMOKE else 2

# On a CPU runtime, split the processor into 2 XLA devices so that the
# multi-device code below really runs on several devices. This must happen
# before jax is imported; GPUs and TPUs are not affected.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS',
                                                                ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=2')

# %%
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import spectral_density as sd
from experiments import input_pipeline
from experiments import models
from spectral_density import plotting

plt.rcParams['figure.dpi'] = plotting.DPI     # figures fit for print
raw = input_pipeline.read_embedded_fashion_mnist('train')
data = {'image': raw['image'][:NUM_EXAMPLES].astype(np.float32) / 255.0,
        'label': raw['label'][:NUM_EXAMPLES]}
print(jax.local_devices())
print({k: v.shape for k, v in data.items()})


def random_batches(seed, batch_size):
  """Endless random training batches of `data`."""
  rng = np.random.default_rng(seed)
  while True:
    indices = rng.integers(0, NUM_EXAMPLES, batch_size)
    yield jax.tree.map(lambda x: x[indices], data)


# Your training loop: a few steps of SGD to leave initialisation.
optimizer = optax.sgd(0.05, momentum=0.9)

# %% [markdown]
# ## 1. A model in plain JAX
#
# Parameters are any pytree (here a list of dicts); the loss is any
# differentiable function of `(params, batch)` returning the **mean** loss
# of the batch. `sd.hessian_spectrum` builds the full-dataset Hessian
# operator (`sd.get_hvp_fn`) and runs SLQ (`sd.slq`) in one call.

# %%
def init_mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{'w': jax.random.normal(k, (m, n)) / np.sqrt(m), 'b': jnp.zeros(n)}
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp_loss(params, batch):
  x = batch['image'].reshape(batch['image'].shape[0], -1)
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer['w'] + layer['b'])
  logits = x @ params[-1]['w'] + params[-1]['b']
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label']).mean()


@jax.jit
def mlp_step(params, opt_state, batch):
  updates, opt_state = optimizer.update(jax.grad(mlp_loss)(params, batch),
                                        opt_state, params)
  return optax.apply_updates(params, updates), opt_state


mlp_params = init_mlp(jax.random.key(0), [784, 32, 10])
opt_state = optimizer.init(mlp_params)
for _, batch in zip(range(TRAIN_STEPS), random_batches(0, 64)):
  mlp_params, opt_state = mlp_step(mlp_params, opt_state, batch)

start = time.perf_counter()
mlp_spectrum = sd.hessian_spectrum(mlp_loss, mlp_params, data,
                                   batch_size=BATCH_SIZE, order=ORDER,
                                   num_draws=NUM_DRAWS)
print(f'{mlp_spectrum.dim:,} parameters, SLQ in '
      f'{time.perf_counter() - start:.1f} s')
print(mlp_spectrum.summary())
plotting.plot_spectrum(mlp_spectrum, label='plain-JAX MLP',
                       num_examples=NUM_EXAMPLES)
plt.title('Hessian spectrum of a plain-JAX MLP')
plt.show()

# %% [markdown]
# `summary()` holds the paper's scalar estimators: the extreme eigenvalues
# (Ritz values, exact at the ends of the spectrum), `lambda_1/lambda_k`, the
# trace (Hutchinson), and the negative mass (how much of the density lies
# below 0).
#
# ## 2. A Flax module with batch norm
#
# Batch norm makes the loss of an example depend on the other examples of
# its batch (in training), so there are two Hessians to speak of:
#
# * **train mode**, the function SGD descends: every batch normalised by its
#   own statistics. The Hessian then depends on the batch size: give
#   `batch_size` the training batch size;
# * **eval mode**: the running averages, a function of each example alone.
#
# The variables other than `params` (`batch_stats`) are closed over: the
# Hessian is with respect to `params` only. `experiments.models` has the
# three functions of a Flax module that the curvatures below take, for any
# module called as `module.apply(variables, images, train=...)`:
# `make_loss_fn` (the mean loss), `make_model_fn` (the logits) and
# `make_per_example_loss_fn`, each in `'train'` or `'eval'` mode.

# %%
class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train, mask=None):
    # mask [B]: the examples that count in the batch statistics (the
    # experiments' losses pass it; padded batches have zeros).
    for features in (8, 16):
      x = nn.Conv(features, (3, 3), strides=2)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(
          x, mask=None if mask is None else mask[:, None, None, None] > 0)
      x = nn.relu(x)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


cnn = SmallCNN()
variables = cnn.init(jax.random.key(1), data['image'][:1], train=False)
cnn_params, batch_stats = variables['params'], variables['batch_stats']


@jax.jit
def cnn_step(params, batch_stats, opt_state, batch):
  """One SGD step; training also updates the running averages."""
  def loss(params):
    logits, updates = cnn.apply({'params': params, 'batch_stats': batch_stats},
                                batch['image'], train=True,
                                mutable=['batch_stats'])
    return (models.cross_entropy(logits, batch['label']).mean(),
            updates['batch_stats'])
  grads, batch_stats = jax.grad(loss, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), batch_stats, opt_state


opt_state = optimizer.init(cnn_params)
for _, batch in zip(range(TRAIN_STEPS), random_batches(1, BATCH_SIZE)):
  cnn_params, batch_stats, opt_state = cnn_step(cnn_params, batch_stats,
                                                opt_state, batch)

model_state = {'batch_stats': batch_stats}
train_mode_loss = models.make_loss_fn(cnn, model_state, 'train')
eval_mode_loss = models.make_loss_fn(cnn, model_state, 'eval')

key = jax.random.key(2)
train_mode = sd.hessian_spectrum(train_mode_loss, cnn_params, data,
                                 batch_size=BATCH_SIZE, order=ORDER,
                                 num_draws=NUM_DRAWS, rng_key=key)
# The two steps of `hessian_spectrum`, to keep the operator (sections 3 to
# 6 use it) and the Lanczos basis (for the eigenvectors of section 6).
hvp_fn, unravel, num_params = sd.get_hvp_fn(eval_mode_loss, cnn_params, data,
                                            batch_size=BATCH_SIZE)
eval_mode = sd.slq(hvp_fn, num_params, order=ORDER, num_draws=NUM_DRAWS,
                   rng_key=key, keep_vecs=True)
ax = None
for name, spectrum in (('train mode (batch statistics)', train_mode),
                       ('eval mode (running averages)', eval_mode)):
  ax = plotting.plot_spectrum(spectrum, ax=ax, label=name,
                              num_examples=NUM_EXAMPLES)
  print(f'{name}: lambda_max = {spectrum.lambda_max:.4f}')
ax.set_title(f'batch-norm CNN ({num_params:,} parameters)')
plt.show()

# %% [markdown]
# Same network, same data, two different functions: here the eval-mode
# Hessian has far larger outliers. With the statistics fixed, the
# normalisation no longer cancels changes in the scale of each layer's
# output; `batchnorm_outliers.ipynb` shows the same effect on a ResNet
# trained with fixed (population) statistics.

# %% [markdown]
# ## 3. Data too large for the device: stream batches from the host
#
# An array dataset is copied to the devices once, which is fastest. When it
# does not fit, pass a **list of batches** or a **callable returning a fresh
# iterator of batches** (a generator reading files, a `tf.data` or `grain`
# pipeline, ...): every Hessian-vector product then makes one pass over it,
# one batch per device at a time, and only those batches are ever on the
# devices. Each batch is weighted by its number of examples, so a short last
# batch is fine.
#
# The same batches give the same Hessian, so the same spectrum:

# %%
def host_batches():
  """One pass over the data, a batch at a time (here from host memory)."""
  for start in range(0, NUM_EXAMPLES, BATCH_SIZE):
    yield {k: v[start:start + BATCH_SIZE] for k, v in data.items()}


def relative_difference(a, b, k=5):
  """Largest difference of the top-k eigenvalues, relative to lambda_max."""
  return float(np.max(np.abs(a.top_eigenvalues(k) - b.top_eigenvalues(k))) /
               a.lambda_max)


streamed = sd.hessian_spectrum(eval_mode_loss, cnn_params, host_batches,
                               order=ORDER, num_draws=NUM_DRAWS, rng_key=key)
stream_difference = relative_difference(eval_mode, streamed)
print('top 5, on the devices:', eval_mode.top_eigenvalues(5))
print('top 5, streamed:      ', streamed.top_eigenvalues(5))
print(f'largest difference / lambda_max: {stream_difference:.1e} '
      '(float32 sums in another order)')

# %% [markdown]
# ## 4. Several devices
#
# By default the products use every device (on one host:
# `jax.local_devices()`): the batches are dealt to the devices, each sums
# the products of its own batches, and one `psum` adds them up. `devices=`
# picks a subset. The batch layout does not depend on the number of
# devices, so neither does the result. On a multi-host TPU pod every host
# runs the same call with the same arrays (or memory maps of them) and reads
# only its own devices' batches.
#
# The Lanczos basis (`order` vectors as long as the parameters) is the
# largest thing a run keeps. By default every device holds all of it;
# `basis='sharded'` gives each device a slice of every vector instead, so
# that D devices hold 1/D of it each, and inner products add the slices
# with a `psum`.

# %%
devices = jax.local_devices()
print(f'{len(devices)} local devices:', devices)
one_device = sd.hessian_spectrum(eval_mode_loss, cnn_params, data,
                                 batch_size=BATCH_SIZE, order=ORDER,
                                 num_draws=NUM_DRAWS, rng_key=key,
                                 devices=devices[:1])
devices_difference = relative_difference(eval_mode, one_device)
print(f'top 5, {len(devices)} devices:', eval_mode.top_eigenvalues(5))
print('top 5, 1 device: ', one_device.top_eigenvalues(5))
print(f'largest difference / lambda_max: {devices_difference:.1e}')

split = sd.hessian_spectrum(eval_mode_loss, cnn_params, data,
                            batch_size=BATCH_SIZE, order=ORDER,
                            num_draws=NUM_DRAWS, rng_key=key,
                            basis='sharded')
sharded_difference = relative_difference(eval_mode, split)
print(f'top 5, basis split over {len(devices)} devices:',
      split.top_eigenvalues(5))
print(f'largest difference / lambda_max: {sharded_difference:.1e}')

# %% [markdown]
# ## 5. Hessian, Gauss-Newton and empirical Fisher
#
# `curvature=` picks the matrix, and with it what `loss` must be:
#
# | `curvature` | matrix | `loss` |
# |---|---|---|
# | `'hessian'` | $H = \nabla^2 L$ | `loss(params, batch) -> scalar` |
# | `'ggn'` | $G = J^\top H_{out} J$ | `(model_fn, output_loss)`: `model_fn(params, batch) -> outputs`, `output_loss(outputs, batch) -> scalar` |
# | `'fisher'` | $F = \frac{1}{N}\sum_i g_i g_i^\top$ | `loss(params, batch) -> [B]`, the per-example losses |
#
# The Gauss-Newton matrix drops the term of the Hessian that holds the
# network's second derivatives; for a loss convex in the outputs
# (cross-entropy) what is left is positive semi-definite. The empirical
# Fisher, a mean of outer products of per-example gradients, is positive
# semi-definite too.

# %%
by_curvature = {
    'Hessian': eval_mode,
    'Gauss-Newton': sd.hessian_spectrum(
        (models.make_model_fn(cnn, model_state, 'eval'), models.output_loss),
        cnn_params, data, batch_size=BATCH_SIZE, order=ORDER,
        num_draws=NUM_DRAWS, rng_key=key, curvature='ggn'),
    'empirical Fisher': sd.hessian_spectrum(
        models.make_per_example_loss_fn(cnn, model_state, 'eval'),
        cnn_params, data, batch_size=BATCH_SIZE, order=ORDER,
        num_draws=NUM_DRAWS, rng_key=key, curvature='fisher'),
}
for name, spectrum in by_curvature.items():
  print(f'{name:17s} lambda_max {spectrum.lambda_max:9.4f}   '
        f'lambda_min {spectrum.lambda_min:9.2e}')

# %% tags=["readme-figure"]
lo = min(s.lambda_min for s in by_curvature.values())
hi = max(s.lambda_max for s in by_curvature.values())
negative = max(-lo, 1e-3 * (hi - lo))   # extent of the negative eigenvalues
views = (  # (grid, sigma): the whole spectrum, then a close-up of 0
    (np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 5000),
     3e-3 * (hi - lo)),
    (np.linspace(-1.5 * negative, 3 * negative, 5000), negative / 20))
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for style, (name, spectrum) in zip(plotting.LINE_STYLES,
                                   by_curvature.items()):
  for ax, (grid, sigma) in zip(axes, views):
    density, _ = spectrum.density(grid, sigma, normalize=False)
    plotting.plot_density(grid, density, ax=ax, label=name, linestyle=style)
    plotting.annotate_density(ax, sigma, order=spectrum.order,
                              num_draws=spectrum.num_draws,
                              num_examples=NUM_EXAMPLES)
axes[0].set_title(f'the same CNN, {NUM_EXAMPLES} examples')
axes[1].set_title('close to 0: only the Hessian has negative eigenvalues')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. The top eigenvectors
#
# With `keep_vecs=True` the Lanczos basis is kept, and `ritz_vectors(k)`
# gives unit approximations of the top-k eigenvectors (flat,
# `[k, num_params]`; `unravel` turns one back into a parameter pytree). Two
# checks and one use:
#
# * the residual $\|Hv - \lambda v\| / \lambda$: small for converged
#   outliers;
# * where the vectors live: their squared norm per layer;
# * how much of the full-batch gradient lies in their span
#   (`subspace_fraction`): the paper's gradient concentration.

# %%
TOP_K = 4
vectors = eval_mode.ritz_vectors(TOP_K)               # [k, num_params]
# Their Rayleigh quotients: the Ritz values of the draw they come from.
products = np.asarray(hvp_fn(vectors.astype(np.float32)))
eigenvalues = np.sum(products * vectors, axis=1)
residuals = (np.linalg.norm(products - eigenvalues[:, None] * vectors, axis=1)
             / np.abs(eigenvalues))
gradient_fraction = eval_mode.subspace_fraction(hvp_fn.gradient(), TOP_K)
for i in range(TOP_K):
  print(f'lambda_{i + 1} = {eigenvalues[i]:.5f}, '
        f'|Hv - lambda v| / lambda = {residuals[i]:.1e}')
print(f'fraction of the gradient in the top-{TOP_K} eigenspace: '
      f'{gradient_fraction:.3f}')

layers = {}
for i, vector in enumerate(vectors):
  for path, leaf in jax.tree_util.tree_leaves_with_path(unravel(vector)):
    layer = jax.tree_util.keystr(path[:1], simple=True, separator='/')
    layers.setdefault(layer, np.zeros(TOP_K))[i] += float(np.sum(leaf ** 2))
fig, ax = plt.subplots(figsize=(7, 3))
bottom = np.zeros(TOP_K)
for layer, share in layers.items():
  ax.bar([f'v{i + 1}' for i in range(TOP_K)], share, bottom=bottom,
         label=layer)
  bottom += share
ax.set_xlabel('Ritz vector of the i-th largest Ritz value')
ax.set_ylabel('share of squared norm')
ax.set_title('where the top Hessian eigenvectors live')
ax.legend(loc='center left', bbox_to_anchor=(1, 0.5))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## In numbers

# %%
summary = {
    'num_devices': len(devices),
    'mlp_lambda_max': mlp_spectrum.lambda_max,
    'bn_lambda_max': {'train mode': train_mode.lambda_max,
                      'eval mode': eval_mode.lambda_max},
    'stream_difference': stream_difference,
    'devices_difference': devices_difference,
    'sharded_difference': sharded_difference,
    'lambda_min': {k: v.lambda_min for k, v in by_curvature.items()},
    'lambda_max': {k: v.lambda_max for k, v in by_curvature.items()},
    'ritz_residuals': residuals.tolist(),
    'gradient_fraction': gradient_fraction,
}
summary
