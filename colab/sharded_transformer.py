# ---
# jupyter:
#   colab:
#     name: sharded_transformer.ipynb
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A transformer's Hessian spectrum over sharded parameters
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/spectral-density/spectral_density/blob/main/colab/sharded_transformer.ipynb)
#
# For a model that does not fit one device, the library's usual path
# (`hessian_spectrum`, `get_hvp_fn`: every device holds all the parameters
# and every Lanczos vector) does not fit either. The sharded path keeps the
# parameters where a trainer puts them, on a `jax.sharding.Mesh`:
#
# * `sd.fsdp_shardings(params, mesh)`: a fully sharded (FSDP) layout, each
#   parameter split over the devices;
# * `sd.sharded_hvp_fn(loss, params, data, batch_size=...)`: the whole
#   dataset's Hessian-vector product, whose vectors are laid out like the
#   parameters;
# * `sd.sharded_lanczos(op, order, key, num_draws=...)`: the Lanczos run,
#   every vector and the basis `[order, ...]` of every parameter laid out
#   like it, as one compiled loop.
#
# This notebook trains a small byte-level GPT on the Python standard
# library's source (`experiments/transformer.py`, no download), lays its
# parameters out over 8 devices, measures what each device holds, runs the
# sharded Lanczos and compares it with the replicated run.
#
# On a CPU runtime the processor is split into 8 XLA devices; on a runtime
# with 8 or more accelerators (a TPU) the notebook uses 8 of them, and on one
# with fewer (one GPU) the 8 host CPU devices. It runs in a few minutes on a
# CPU (its stored outputs are from its default run; their wall time and
# machine are in the notebook's metadata).
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
# 8 host CPU devices: XLA reads the flag when its CPU backend starts, so it
# is set before jax is imported. It changes nothing on GPUs and TPUs.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS',
                                                                ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8')

import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import spectral_density as sd
from spectral_density import sharded
from experiments import datasets
from experiments import transformer

SMOKE = os.environ.get('SPECTRAL_DENSITY_NOTEBOOK_SMOKE') == '1'
SEQ_LEN = 16 if SMOKE else 32
WIDTH, LAYERS, HEADS = (8, 1, 2) if SMOKE else (32, 2, 2)
STEPS = 20 if SMOKE else 200
HESSIAN_EXAMPLES, BATCH = 64, 8   # 8 batches: one per data-parallel device
ORDER, DRAWS = (12, 2) if SMOKE else (40, 3)

devices = jax.devices()
if len(devices) < 8:
  devices = jax.devices('cpu')
devices = np.asarray(devices[:8])
print(f'{len(devices)} devices: {devices[0].device_kind} '
      f'({devices[0].platform})')

# %% [markdown]
# ## The model, trained briefly
#
# Every `.py` file of the standard library, sorted by path, cut into byte
# sequences of `SEQ_LEN + 1` (`experiments.datasets`); a pre-LayerNorm GPT
# (`experiments.transformer.GPT`) trained with Adam on one device.

# %%
config = ml_collections.ConfigDict({'dataset': {
    'name': 'stdlib', 'seq_len': SEQ_LEN, 'num_train': 2048, 'num_test': 64}})
train_set, _ = datasets.load_text_dataset(config)
model = transformer.GPT(vocab_size=256, max_len=SEQ_LEN, width=WIDTH,
                        num_layers=LAYERS, num_heads=HEADS,
                        mlp_dim=4 * WIDTH)
params = transformer.init_params(model, jax.random.key(0), SEQ_LEN)
num_params = sum(x.size for x in jax.tree.leaves(params))
print(f'{num_params:,} parameters; training sequences '
      f'{train_set["tokens"].shape}')

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

# %% [markdown]
# ## Three layouts of the same parameters
#
# * **replicated**: every device holds every parameter, and the batches are
#   dealt over the 8 devices (data parallel; the design of `get_hvp_fn`);
# * **FSDP 8**: each parameter split over all 8 devices along its largest
#   dimension that 8 divides (`sd.fsdp_shardings`);
# * **FSDP 4 x data 2**: split over 4 devices, replicated over 2 groups that
#   each run half the batches.
#
# The Hessian is that of the mean per-token loss over `HESSIAN_EXAMPLES`
# training sequences: `transformer.make_loss_fn` weights each batch by its
# real tokens, so the batching does not change it.

# %%
hessian_set = {k: v[:HESSIAN_EXAMPLES] for k, v in train_set.items()}
loss_fn = transformer.make_loss_fn(
    model, transformer.tokens_per_example(hessian_set))
meshes = {'replicated': Mesh(devices, ('data',)),
          'FSDP 8': Mesh(devices, ('fsdp',)),
          'FSDP 4 x data 2': Mesh(devices.reshape(4, 2), ('fsdp', 'data'))}
operators = {}
for name, mesh in meshes.items():
  layout = (jax.tree.map(lambda _, m=mesh: NamedSharding(m, P()), params)
            if name == 'replicated' else sd.fsdp_shardings(params, mesh))
  placed = jax.device_put(params, layout)
  operators[name] = sd.sharded_hvp_fn(loss_fn, placed, hessian_set,
                                      batch_size=BATCH)

shown = ('wte/embedding', 'wpe/embedding', 'block_0/ln_1/scale',
         'block_0/attn/query/kernel', 'block_0/mlp/fc_in/kernel',
         'block_0/mlp/fc_out/kernel', 'head/kernel', 'head/bias')
print(f'{"parameter":26s} {"shape":>10s}  {"FSDP 8 layout":22s} one device')
for path, leaf in jax.tree_util.tree_leaves_with_path(
    operators['FSDP 8'].params):
  name = '/'.join(k.key for k in path)
  if name in shown:
    print(f'{name:26s} {str(leaf.shape):>10s}  {str(leaf.sharding.spec):22s} '
          f'{leaf.addressable_shards[0].data.shape}')

# %% [markdown]
# ## What each device holds
#
# The parameters' bytes on each device, read from the arrays' shards; and
# XLA's memory analysis of the whole compiled Lanczos run (order `ORDER`,
# `DRAWS` draws: parameters, tangents, vectors, the basis, every temporary),
# per device, without running it. Compiling here also serves the runs below.


# %%
def bytes_per_device(tree):
  """[8]: bytes of `tree`'s shards on each device."""
  held = dict.fromkeys(devices.ravel(), 0)
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] += shard.data.nbytes
  return np.asarray(list(held.values()))


def program_bytes(op):
  """Per-device bytes of the compiled Lanczos program (XLA's analysis)."""
  m = sharded.lanczos_program(op, ORDER, num_draws=DRAWS).compile(
      ).memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes +
          m.temp_size_in_bytes - m.alias_size_in_bytes)


start = time.time()
memory = {name: (bytes_per_device(op.params).max(), program_bytes(op))
          for name, op in operators.items()}
print(f'compiled in {time.time() - start:.0f} s\n')
whole = sum(x.nbytes for x in jax.tree.leaves(params))
print(f'{"layout":16s} {"params / device":>16s} {"Lanczos program / device":>26s}')
for name, (param_bytes, run_bytes) in memory.items():
  print(f'{name:16s} {param_bytes / 1e6:10.3f} MB {param_bytes / whole:4.2f}'
        f' {run_bytes / 1e6:14.2f} MB {run_bytes / memory["replicated"][1]:8.2f}')
print(f'\n(fractions: of the whole parameters, {whole / 1e6:.3f} MB, and of '
      'the replicated program)')

# %% [markdown]
# The parameters are split exactly: one eighth per device with FSDP 8, one
# quarter with FSDP 4 x data 2. The program's share is larger than that at
# this small size: the activations of a batch and the weights that XLA
# gathers to compute a layer do not shrink with the layout. The basis
# (`DRAWS x ORDER` vectors) does, and it dominates for large models and
# orders (docs/guide/sharded_models.md has the measurements at order 90).
#
# ## The sharded Lanczos run

# %%
runs = {}
for name, op in operators.items():
  start = time.time()
  runs[name] = sd.sharded_lanczos(op, ORDER, jax.random.key(1),
                                  num_draws=DRAWS)
  print(f'{name:16s} {DRAWS} draws of order {ORDER} in '
        f'{time.time() - start:5.1f} s, steps {runs[name].num_steps}')

# %% tags=["readme-figure"]
ritz = {name: np.linalg.eigvalsh(run.tridiag) for name, run in runs.items()}
low = min(r.min() for r in ritz.values())
high = max(r.max() for r in ritz.values())
sigma = (high - low) / 200
grid = np.linspace(low - 5 * sigma, high + 5 * sigma, 4000)
curves = {f'{name}': (grid, sd.tridiag_to_density(run.tridiag, sigma=sigma,
                                                   grids=grid)[0])
          for name, run in runs.items()}
fig, ax = plt.subplots(figsize=(8, 4.5))
sd.plotting.plot_densities(curves, ax=ax)
sd.plotting.annotate_density(ax, sigma, order=ORDER, num_draws=DRAWS,
                             num_examples=HESSIAN_EXAMPLES)
ax.set_title(f'Hessian density of a {num_params:,}-parameter GPT, '
             f'{len(devices)} devices')
fig.tight_layout()
plt.show()

# %% [markdown]
# The three curves lie on one another: every layout starts from the same
# vectors (each parameter's slice drawn where it lives), and the products
# are exact (`jvp` of `grad`), so only the order of floating-point sums
# differs.

# %%
reference = runs['replicated'].tridiag
scale = np.abs(reference).max()
difference = {name: float(np.abs(run.tridiag - reference).max() / scale)
              for name, run in runs.items() if name != 'replicated'}
for name, value in difference.items():
  print(f'{name:16s} largest tridiagonal difference from the replicated '
        f'run: {value:.1e} of its largest entry')
print('\ntop 5 Ritz values, draw 0:')
for name, values in ritz.items():
  print(f'  {name:16s}', np.array2string(values[0, -5:][::-1], precision=5))

# %% [markdown]
# ## In one call
#
# `sd.hessian_spectrum` (and `get_hvp_fn`, `block_spectra`) see that the
# parameters are split over a mesh and take this path themselves. The
# result is the usual `SpectrumResult`: its trace is deflated with the
# draws' bases (their Gram matrix computed on the devices), and the top
# Ritz vectors come back laid out like the parameters, never gathered.

# %%
placed = operators['FSDP 8'].params
result = sd.hessian_spectrum(loss_fn, placed, hessian_set, batch_size=BATCH,
                             order=ORDER, num_draws=DRAWS, keep_vecs=True)
one_call = result.summary(k=3)
print({k: one_call[k] for k in ('lambda_max', 'trace', 'trace_stderr',
                                'trace_deflated', 'negative_mass')})
top = result.ritz_vectors(1, pytree=True)
kernel = top['block_0']['attn']['query']['kernel']
print('top Ritz vector, one leaf:', kernel.shape, kernel.sharding.spec)

# %%
summary = {
    'num_devices': len(devices),
    'num_params': int(num_params),
    'initial_loss': losses[0],
    'final_loss': float(np.mean(losses[-20:])),
    'param_bytes_whole': int(whole),
    'param_bytes_per_device': {k: int(v[0]) for k, v in memory.items()},
    'lanczos_bytes_per_device': {k: int(v[1]) for k, v in memory.items()},
    'tridiag_difference': difference,
    'top_ritz': {k: v[:, -5:][:, ::-1].tolist() for k, v in ritz.items()},
    'one_call': {k: one_call[k] for k in ('lambda_max', 'trace',
                                          'trace_stderr', 'negative_mass')},
}
summary
