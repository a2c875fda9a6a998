"""Lanczos basis placement: device memory at scale, and accuracy; a table.

  python -m benchmarks.basis_memory

Memory rows: order 90, one draw, float64 Lanczos vectors, for 1M, 10M and 25M
parameters, per device. 'XLA analysis' is the compiled Lanczos program's
memory analysis (arguments + outputs + temporaries; compiling needs no device
memory, so every size is analysed, none extrapolated), with a diagonal
operator standing in for H v (whose own memory comes on top in every mode).
'sharded' splits the basis over 8 devices (8 CPU devices here, set before JAX
starts; the analysis is per device). 'formula' is the minimum: the basis (or
its slice) plus a few vectors. This CPU reports no runtime peak
(`memory_stats` is None), so the table is not a measured peak.
Accuracy rows: the n = 2000 Marchenko-Pastur + outliers matrix of the tests.
"""

import os

NUM_SHARDS = 8
if 'jax' not in os.sys.modules:
  os.environ.setdefault(
      'XLA_FLAGS', f'--xla_force_host_platform_device_count={NUM_SHARDS}')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import spectral_density as sd  # pylint: disable=g-import-not-at-top
from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
from spectral_density import execution  # pylint: disable=g-import-not-at-top
from spectral_density import parallel  # pylint: disable=g-import-not-at-top
from spectral_density import recurrence  # pylint: disable=g-import-not-at-top

ORDER = 90
BYTES = 8  # float64
MODES = ('device', 'sharded', 'host', 'none')


def formula_bytes(mode, dim, order=ORDER):
  vectors = 6 * dim * BYTES  # v, v_prev, w, the product's input/output, slack
  if mode == 'device':
    return order * dim * BYTES + vectors
  if mode == 'sharded':  # a slice of the basis and of v, v_prev, w; the
    # product's whole input and output
    return (order + 4) * dim * BYTES / NUM_SHARDS + 2 * dim * BYTES
  return vectors  # 'host' keeps the basis in host memory; 'none' has none


def measured_bytes(mode, dim):
  """Peak of the compiled programs that live on the device in this mode."""
  diag = jnp.linspace(0.0, 1.0, dim)
  matvec = jax.tree_util.Partial(lambda d, v: d * v, diag)
  num_shards = NUM_SHARDS if mode == 'sharded' else 1
  config = recurrence.Config(dim, ORDER, 'float64', 'float64', 'gaussian',
                             mode != 'none', 2, False, 1e-15, num_shards)
  programs = recurrence.programs(config)
  keys = jax.random.split(jax.random.key(0), 1)
  if mode == 'host':
    # On the device: only the products; the recurrence runs on the host.
    lowered = jax.jit(jax.vmap(matvec)).lower(jnp.zeros((1, dim)))
  elif mode == 'sharded':
    devices = tuple(jax.devices()[:NUM_SHARDS])
    assert len(devices) == NUM_SHARDS, 'set XLA_FLAGS before importing jax'
    runner = parallel.function_runner(devices)
    lowered = runner.lower(programs.full, dim, matvec, (), (keys, None))
  else:
    lowered = execution.run_jit.lower(programs.full, matvec, keys, None)
  return benchmark.compiled_bytes(lowered.compile())


def accuracy_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 4000)) / np.sqrt(4000)
  ev, q = np.linalg.eigh(x @ x.T)
  ev[-3:] = [5.0, 10.0, 20.0]
  ev[:2] = [-3.0, -1.5]
  ev = np.sort(ev)
  a = jnp.asarray((q * np.sort(ev)) @ q.T)
  sigma = 1e-3 * (ev[-1] - ev[0])
  grid = np.linspace(ev[0] - 6 * sigma, ev[-1] + 6 * sigma, 40001)
  exact = sd.exact_density(ev, grid, sigma)
  rows = []
  for mode in MODES:
    res = sd.slq(lambda v: a @ v, 2000, order=ORDER, num_draws=10,
                 rng_key=jax.random.key(2), precision='float64', basis=mode)
    top = res.top_eigenvalues(3)
    rel = np.max(np.abs(top - ev[::-1][:3]) / ev[::-1][:3])
    dens, _ = res.density(grid, sigma, normalize=False)
    l1 = np.trapezoid(np.abs(dens - exact), grid)
    ghosts = int(np.sum(np.abs(res.nodes[0] - 20.0) < 1e-6 * 20))
    rows.append((mode, rel, l1, ghosts))
  return rows


def main():
  print('| basis | parameters | device memory (MB) | how | formula (MB) |')
  print('|---|---|---|---|---|')
  for mode in MODES:
    for dim in (1_000_000, 10_000_000, 25_000_000):
      print(f'| {mode} | {dim / 1e6:g}M | '
            f'{measured_bytes(mode, dim) / 2**20:,.0f} | XLA analysis | '
            f'{formula_bytes(mode, dim) / 2**20:,.0f} |')
  print()
  print('| basis | top-3 max rel. error | density L1 (sigma = 1e-3 width) '
        '| copies of lambda_max=20 among draw 0 nodes |')
  print('|---|---|---|---|')
  for mode, rel, l1, ghosts in accuracy_rows():
    print(f'| {mode} | {rel:.1e} | {l1:.3f} | {ghosts} |')


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    report.run('basis_memory', main)
