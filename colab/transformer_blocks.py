# ---
# jupyter:
#   colab:
#     name: transformer_blocks.ipynb
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
# # Block heterogeneity of a transformer's Hessian
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/spectral-density/spectral_density/blob/main/colab/transformer_blocks.ipynb)
#
# Zhang et al. (NeurIPS 2024), "Why Transformers Need Adam: A Hessian
# Perspective", compare the spectra of a transformer's Hessian *blocks*
# (embedding, attention query / key / value / output, MLP, norms, head):
# they differ strongly from block to block, which they measure by the
# Jensen-Shannon (JS) distance between the blocks' SLQ densities, and a
# single learning rate for all blocks (SGD) then fits none of them well.
#
# This notebook trains a small byte-level GPT on the Python standard
# library's own source (present on every machine, no download), then
#
# 1. estimates the density of each *role*'s diagonal block `H_bb` with
#    stochastic Lanczos quadrature, with a confidence band over draws;
# 2. draws the JS distances between every pair of blocks as a heat map;
# 3. looks at the Hessian as Adam sees it, `P^-1/2 H P^-1/2` with Adam's own
#    `P = sqrt(nu_hat) + eps`, and how that changes the heterogeneity.
#
# It runs in a few minutes on an idle CPU (its stored outputs are from its
# default run; their wall time and machine are in the notebook's metadata).
# `SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1` runs the same cells smaller.

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
import ml_collections
import numpy as np
import optax

import spectral_density as sd
from spectral_density import blocks as blocks_lib
from experiments import datasets
from experiments import transformer

SMOKE = os.environ.get('SPECTRAL_DENSITY_NOTEBOOK_SMOKE') == '1'
SEQ_LEN = 16 if SMOKE else 32
WIDTH, LAYERS, HEADS = (8, 1, 2) if SMOKE else (32, 2, 2)
STEPS = 30 if SMOKE else 400
HESSIAN_EXAMPLES = 16 if SMOKE else 64
ORDER, DRAWS = (12, 2) if SMOKE else (40, 4)
print(jax.devices())

# %% [markdown]
# ## The corpus and the model
#
# Every `.py` file of the standard library (tests and site-packages left
# out), sorted by path, cut into byte sequences of `SEQ_LEN + 1`; the last
# piece of each file is padded, and its padding masked out of the loss.

# %%
config = ml_collections.ConfigDict({'dataset': {
    'name': 'stdlib', 'seq_len': SEQ_LEN,
    'num_train': 512 if SMOKE else 4096, 'num_test': 64}})
train_set, test_set = datasets.load_text_dataset(config)
print(f'{len(datasets.stdlib_files())} files; training sequences '
      f'{train_set["tokens"].shape}, real-token fraction '
      f'{train_set["mask"].mean():.3f}')
print(repr(bytes(train_set['tokens'][7].astype(np.uint8))))

model = transformer.GPT(vocab_size=256, max_len=SEQ_LEN, width=WIDTH,
                        num_layers=LAYERS, num_heads=HEADS,
                        mlp_dim=4 * WIDTH)
params = transformer.init_params(model, jax.random.key(0), SEQ_LEN)
print(f'{sum(x.size for x in jax.tree.leaves(params)):,} parameters')
for name, size in sd.parameter_paths(params)[:8]:
  print(f'  {name:32s} {size:6d}')

# %% [markdown]
# ## Training with Adam
#
# A plain optax loop over shuffled batches; the loss of a batch is its mean
# over real tokens.

# %%
tx = optax.adam(3e-3)
opt_state = tx.init(params)


@jax.jit
def step(params, opt_state, batch):
  loss, grads = jax.value_and_grad(
      lambda p: transformer.batch_mean_loss(model, p, batch))(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


rng = np.random.default_rng(0)
losses, start = [], time.time()
for i in range(STEPS):
  idx = rng.choice(len(train_set['mask']), 32, replace=False)
  batch = {k: jnp.asarray(v[idx]) for k, v in train_set.items()}
  params, opt_state, loss = step(params, opt_state, batch)
  losses.append(float(loss))
print(f'{STEPS} steps in {time.time() - start:.0f} s; loss {losses[0]:.3f} '
      f'-> {np.mean(losses[-20:]):.3f} nats per byte')
plt.figure(figsize=(5, 3))
plt.plot(losses)
plt.xlabel('step')
plt.ylabel('training loss (nats / byte)')
plt.show()

# %% [markdown]
# ## Block densities by role
#
# The Hessian is that of the mean per-token loss over a fixed set of
# `HESSIAN_EXAMPLES` sequences: `transformer.make_loss_fn` weights each batch
# by its real tokens, so the batching does not change it. `blocks='per_role'`
# groups the parameters by role, pooled over layers (the rule is a function
# of each parameter's path name; `sd.parameter_paths` lists them).
# `restricted_products=False` computes all blocks' rows with one compiled
# product, the cheaper choice for many blocks of a small model.

# %%
hessian_set = {k: v[:HESSIAN_EXAMPLES] for k, v in train_set.items()}
loss_fn = transformer.make_loss_fn(
    model, transformer.tokens_per_example(hessian_set))
start = time.time()
roles = sd.block_spectra(loss_fn, params, hessian_set, batch_size=32,
                         blocks='per_role', order=ORDER, num_draws=DRAWS,
                         rng_key=jax.random.key(1), include_full=True,
                         restricted_products=False)
print(f'{len(roles)} blocks x {DRAWS} draws (+ the full Hessian) in '
      f'{time.time() - start:.0f} s')
for name, result in roles.items():
  print(f'  {name:18s} {roles.sizes[name]:7d} parameters, lambda in '
        f'[{result.lambda_min:9.3g}, {result.lambda_max:9.3g}]')

# %% tags=["readme-figure"]
names = list(roles)
cols = 3
fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(13, 9),
                         sharey=True)
for ax, name in zip(axes.ravel(), names):
  result = roles[name]
  low, high = result.lambda_min, result.lambda_max
  sigma = max((high - low) / 100, 1e-6)   # 1% of the block's own range
  lower, upper, grid = result.density_band(sigma, level=0.9)
  density, _ = result.density(grid, sigma=sigma, normalize=False)
  ax.fill_between(grid, np.maximum(lower, 1e-7), upper, alpha=0.3)
  sd.plotting.plot_density(grid, density, ax=ax)
  ax.set_title(f'{name} ({roles.sizes[name]:,})')
for ax in axes.ravel()[len(names):]:
  ax.axis('off')
fig.suptitle('Hessian block densities by role, after training (90% bands '
             'over draws; each block on its own eigenvalue range)')
fig.tight_layout()
plt.show()

# %% [markdown]
# Each block has its own scale: the widths of the ranges above differ by
# orders of magnitude. The JS distance compares the densities on **one**
# common grid with one kernel width (Zhang et al.'s convention), so it sees
# both the different scales and the different shapes.
#
# ## JS distances between blocks

# %%
matrix, names = sd.js_distances(roles)
per_layer = sd.block_spectra(loss_fn, params, hessian_set, batch_size=32,
                             blocks='per_layer', order=ORDER,
                             num_draws=max(DRAWS // 2, 1),
                             rng_key=jax.random.key(2), include_full=False,
                             restricted_products=False)
layer_matrix, layer_names = sd.js_distances(per_layer)
fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
sd.plot_js_heatmap(matrix, names, ax=axes[0],
                   title=f'per role: mean {sd.mean_js_distance(matrix):.3f}')
sd.plot_js_heatmap(layer_matrix, layer_names, ax=axes[1],
                   title=f'per layer: mean '
                   f'{sd.mean_js_distance(layer_matrix):.3f}')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The optimiser's view: `P^-1/2 H P^-1/2`
#
# Adam steps along `-P^-1 m` with `P = sqrt(nu_hat) + eps`. In the
# coordinates `u = P^1/2 w` that is a plain momentum step on a loss whose
# Hessian is `P^-1/2 H P^-1/2`: its spectrum, not `H`'s, is what one step
# size has to fit. `sd.adam_preconditioner` reads `nu` from the optax state,
# `sd.preconditioned` wraps the operator (any curvature, blocks included).

# %%
diagonal = sd.adam_preconditioner(opt_state, b2=0.999, eps=1e-8)
op, _, _ = sd.get_hvp_fn(loss_fn, params, hessian_set, batch_size=32)
pre = blocks_lib.block_spectra_of(
    sd.preconditioned(op, diagonal), params, blocks='per_role', order=ORDER,
    num_draws=DRAWS, rng_key=jax.random.key(1), include_full=True,
    restricted_products=False)
pre_matrix, _ = sd.js_distances(pre)
fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
for result, label in ((roles.full, 'H'), (pre.full, 'P^-1/2 H P^-1/2')):
  density, grid = result.density()
  sd.plotting.plot_density(grid / abs(result.lambda_max), density * abs(
      result.lambda_max), ax=axes[0], label=label)
axes[0].set_xlabel('eigenvalue / lambda_max')
axes[0].set_title('full spectrum, scaled by lambda_max')
sd.plot_js_heatmap(matrix, names, ax=axes[1],
                   title=f'H: mean JS {sd.mean_js_distance(matrix):.3f}')
sd.plot_js_heatmap(pre_matrix, names, ax=axes[2],
                   title=f'P^-1/2 H P^-1/2: mean JS '
                   f'{sd.mean_js_distance(pre_matrix):.3f}')
fig.tight_layout()
plt.show()
for name in names:
  print(f'{name:18s} lambda_max  H {roles[name].lambda_max:10.3g}   '
        f'preconditioned {pre[name].lambda_max:10.3g}')

# %% [markdown]
# Read the two heat maps with care: the JS distance depends on the kernel
# width relative to the blocks' spreads. With the default (Zhang et al.'s
# absolute width, growing only as the square root of the common span) a
# spectrum a hundred times wider, as the preconditioned one is, looks more
# heterogeneous partly because its kernel is relatively narrower.
# `sd.js_distances(res, relative_sigma=0.01)` uses a kernel of 1% of the
# common span, invariant to scaling the operator; the reproduction
# (`python -m experiments.block_heterogeneity`) reports both, with the
# number of decades the blocks' largest eigenvalues span.

# %%
summary = {
    'final_loss': float(np.mean(losses[-20:])),
    'initial_loss': losses[0],
    'mean_js_per_role': sd.mean_js_distance(matrix),
    'mean_js_per_layer': sd.mean_js_distance(layer_matrix),
    'mean_js_preconditioned': sd.mean_js_distance(pre_matrix),
    'lambda_max': roles.full.lambda_max,
    'lambda_max_preconditioned': pre.full.lambda_max,
    'roles': names,
}
summary
