"""The Lanczos basis on one device, split over 8, or on the host; a table.

  python -m benchmarks.sharded_basis [--num_examples=1000] [--order=90]

A real operator this time (`basis_memory` uses a diagonal stand-in): a tanh
MLP 784-1024-1024-10 (1.86M parameters) on Fashion-MNIST images of the
embedded subset, float32, batches of 125 spread over 8 CPU devices (set
before JAX starts). Rows per basis mode:
  * per-device memory of the compiled program with the products inside (XLA
    analysis: arguments + outputs + temporaries; for 'host' the program of
    one product, the basis being in host memory);
  * seconds for one draw of order `--order`, compile excluded;
  * largest difference of its tridiagonal from the 'device' run's, relative
    to lambda_max.
The 8 devices share 2 CPU cores here, so the seconds compare the modes'
overheads on this machine, not what 8 accelerators would do.
"""

import argparse
import os
import time

NUM_DEVICES = 8
if 'jax' not in os.sys.modules:
  os.environ.setdefault(
      'XLA_FLAGS', f'--xla_force_host_platform_device_count={NUM_DEVICES}')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import spectral_density as sd  # pylint: disable=g-import-not-at-top
from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
from experiments import input_pipeline  # pylint: disable=g-import-not-at-top
from spectral_density import batch_functions  # pylint: disable=g-import-not-at-top
from spectral_density import operators  # pylint: disable=g-import-not-at-top
from spectral_density import parallel  # pylint: disable=g-import-not-at-top
from spectral_density import recurrence  # pylint: disable=g-import-not-at-top

MODES = ('device', 'sharded', 'host')
WIDTHS = (784, 1024, 1024, 10)


def mlp_problem(num_examples, seed=0):
  """``(loss, params, data)``: the wide MLP at initialisation."""
  raw = input_pipeline.read_embedded_fashion_mnist('train')
  data = {'x': raw['image'][:num_examples].reshape(num_examples, -1)
               .astype(np.float32) / 255.0,
          'y': raw['label'][:num_examples].astype(np.int32)}
  keys = jax.random.split(jax.random.key(seed), len(WIDTHS) - 1)
  params = [{'w': jax.random.normal(k, (m, n)) / np.sqrt(m),
             'b': jnp.zeros(n)}
            for k, m, n in zip(keys, WIDTHS[:-1], WIDTHS[1:])]

  def loss(params, batch):
    h = batch['x']
    for layer in params[:-1]:
      h = jnp.tanh(h @ layer['w'] + layer['b'])
    logits = h @ params[-1]['w'] + params[-1]['b']
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch['y'][:, None], 1))
  return loss, params, data


def program_bytes(op, mode, order):
  """Per-device bytes of the program that holds the basis in `mode`."""
  batch_fn = batch_functions.batch_function(op.curvature, op.loss_fn,
                                            'product')
  data, weights, rem_batch, rem_weight = op._placed  # pylint: disable=protected-access
  keys = jax.random.split(jax.random.key(0), 1)
  shards = NUM_DEVICES if mode == 'sharded' else 1
  config = recurrence.Config(op.num_params, order, 'float32', 'float32',
                             'gaussian', True, 2, False, 1e-6, shards)
  programs = recurrence.programs(config)
  if mode == 'device':
    lowered = parallel.data_parallel_runner(op.devices).lower(
        programs.full, batch_fn, op.accum_dtype, op.params, data, weights,
        rem_batch, rem_weight, (keys, None))
  elif mode == 'sharded':
    params, rem_batch, rem_weight = parallel.replicate(
        (op.params, rem_batch, rem_weight), op.devices)
    lowered = parallel.split_vector_runner(op.devices).lower(
        programs.full, batch_fn, op.accum_dtype, params, data, weights,
        rem_batch, rem_weight, (), (keys, None))
  else:
    v = jnp.zeros((1, op.num_params), jnp.float32)
    lowered = parallel.data_parallel_runner(op.devices).lower(
        operators.matvec_program, batch_fn, op.accum_dtype, op.params,
        data, weights, rem_batch, rem_weight, (v,))
  return benchmark.compiled_bytes(lowered.compile())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_examples', type=int, default=1000)
  parser.add_argument('--order', type=int, default=90)
  args = parser.parse_args()
  assert jax.device_count() == NUM_DEVICES, 'set XLA_FLAGS before JAX starts'
  loss, params, data = mlp_problem(args.num_examples)
  op, _, n = sd.get_hvp_fn(loss, params, data,
                           batch_size=args.num_examples // NUM_DEVICES)
  print(f'{n:,} parameters, {args.num_examples} examples, order '
        f'{args.order}, {NUM_DEVICES} CPU devices, float32')
  print()
  print('| basis | per-device memory (MB) | basis per device (MB) | '
        'seconds, one draw | max abs diff of T / lambda_max |')
  print('|---|---|---|---|---|')
  reference = None
  for mode in MODES:
    megabytes = program_bytes(op, mode, args.order) / 2**20
    run = lambda m=mode: sd.lanczos_draws(op, n, args.order,
                                          jax.random.key(0), basis=m)
    run()  # compile
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    tridiag = result.tridiag[0]
    if reference is None:
      reference = tridiag
    scale = np.abs(np.linalg.eigvalsh(reference)).max()
    diff = np.abs(tridiag - reference).max() / scale
    basis_mb = {'device': args.order * n * 4, 'host': 0,
                'sharded': args.order * parallel.slice_size(
                    n, NUM_DEVICES) * 4}[mode] / 2**20
    print(f'| {mode} | {megabytes:,.0f} | {basis_mb:,.0f} | {seconds:.1f} | '
          f'{diff:.1e} |', flush=True)


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('sharded_basis', main)
