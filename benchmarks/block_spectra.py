"""Cost of per-layer block spectra against one full-spectrum run; prints a table.

  python -m benchmarks.block_spectra [--num_examples=10000] [--num_draws=10]

The paper's 784-20-10 tanh MLP on the first Fashion-MNIST training images,
batch 1,000, float32, one device, order 90. Rows: one full-spectrum SLQ run,
the two layers' block spectra (one batch of 2 x num_draws vectors), and the
same with the full spectrum's draws in the batch (3 x num_draws), which also
gives the Wasserstein-1 distance of the block-diagonal approximation.
Target (issue 13): block spectra of all layers <= 1.5 x the full run.

Measured on the shared 2-core machine under heavy load (load average 12 to
17), float32:

* default (10,000 images, `--repeats=1`): full 29.83 s, two layers' blocks
  38.78 s (**1.30x**), blocks + full in one batch 67.03 s (2.25x). One pass
  of products: 10 full vectors 0.292 s, the 20 block rows as masked full
  products 0.734 s (2.52x), as restricted products 0.306 s (1.05x).
  W1(full, union of blocks) = 7.9e-4, 1.5e-4 of the spectrum's width.
* `--num_examples=2000` (products 5x cheaper, so the recurrence weighs
  more): 1.07x at load 7 (one timing each: 10.24 s against 9.54 s), 1.68x
  at load 14 (median of 3 rounds: 14.95 s against 8.89 s) while its
  products were 1.06x. Before the restricted products, 1.63x at load 9.

Each block's rows are products of the loss restricted to the block's
parameters (`block_products`): the output layer's rows skip the first
layer's tangent and weight gradient. What remains above 1x is the
recurrence: each block row is reorthogonalised against a full-length basis
(zero outside the block), so twice the rows read twice the basis memory per
step, which a loaded machine's memory bandwidth makes dearer.
"""

import argparse
import statistics
import time

import jax
import numpy as np

import spectral_density as sd
from spectral_density import blocks as blocks_lib
from benchmarks import fashion_mlp


def _seconds(fn, repeats=1):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_examples', type=int, default=10000)
  parser.add_argument('--num_draws', type=int, default=10)
  parser.add_argument('--order', type=int, default=90)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  data = fashion_mlp.load_images(args.num_examples)
  loss, params = fashion_mlp.trained_problem(data)
  hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=1000)
  key = jax.random.key(0)
  draws, order = args.num_draws, args.order
  result = {}
  def with_full():
    result['out'] = blocks_lib.block_spectra_of(
        hvp_fn, params, order=order, num_draws=draws, rng_key=key)
  runs = {
      'full': lambda: sd.slq(hvp_fn, n, order=order, num_draws=draws,
                             rng_key=key),
      'blocks': lambda: blocks_lib.block_spectra_of(
          hvp_fn, params, order=order, num_draws=draws, rng_key=key,
          include_full=False),
      'both': with_full}
  # Interleaved rounds, the median of each: on a shared machine the load
  # changes within a minute, and each round sees about the same.
  for fn in runs.values():
    fn()  # compile / warm up
  times = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  full, blocks_only, both = (statistics.median(times[k]) for k in runs)
  res = result['out']
  # Where the time goes: one pass of products over the data, per batch.
  masks = blocks_lib.block_masks(params)
  rows = np.tile(np.stack(list(masks.values())), (draws, 1))
  vecs = jax.random.normal(key, rows.shape, hvp_fn.dtype) * rows
  restricted = hvp_fn.restrict_rows(
      [blocks_lib.block_leaves(params, m) for m in masks.values()])
  product_s = {
      'full products, draws vectors': _seconds(
          lambda: hvp_fn(vecs[:draws]).block_until_ready(), 5),
      'full products of the block rows (masked)': _seconds(
          lambda: hvp_fn(vecs).block_until_ready(), 5),
      'restricted products of the block rows': _seconds(
          lambda: restricted(vecs).block_until_ready(), 5)}
  print(f'MLP 784-20-10, {args.num_examples} images, {n} parameters, '
        f'order {order}, {draws} draws per spectrum, float32, 1 device')
  print(f'median of {args.repeats} interleaved rounds')
  print('| run | vectors per pass | seconds | / full run | target | met |')
  print('|---|---|---|---|---|---|')
  print(f'| full spectrum (slq) | {draws} | {full:.2f} | 1.00 | | |')
  ratio = blocks_only / full
  print(f'| block spectra, {len(res)} layers | {len(res) * draws} | '
        f'{blocks_only:.2f} | {ratio:.2f} | <= 1.5 | '
        f"{'yes' if ratio <= 1.5 else '**no**'} |")
  print(f'| block spectra + full, one batch | {(len(res) + 1) * draws} | '
        f'{both:.2f} | {both / full:.2f} | | |')
  print()
  print('| one pass of products | seconds | / full |')
  print('|---|---|---|')
  base = product_s['full products, draws vectors']
  for name, seconds in product_s.items():
    print(f'| {name} | {seconds:.3f} | {seconds / base:.2f} |')
  print()
  print('| block | parameters | lambda_max | lambda_min | trace |')
  print('|---|---|---|---|---|')
  for name, r in [('full', res.full)] + list(res.items()):
    print(f'| {name} | {r.dim} | {r.lambda_max:.4g} | {r.lambda_min:.3g} | '
          f'{r.trace:.4g} |')
  width = res.full.lambda_max - res.full.lambda_min
  print(f'\nW1(full, union of blocks) = {res.distance:.4g} '
        f'({res.distance / width:.2e} of the spectrum width {width:.4g})')


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('block_spectra', main)
