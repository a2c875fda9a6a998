"""How the SLQ density error depends on the Lanczos order; prints a table.

  python -m benchmarks.order_sweep [--orders=90,120,150] [--pool=1]

The problem of `mlp_exact_check` (784-20-10 MLP, 10,000 Fashion-MNIST
images, float64, 10 draws). The exact spectrum is computed once; then SLQ
runs at each order, and the density L1 error against the exact smoothed
density is printed for Gaussian kernels of std 1e-4, 3e-4 and 1e-3 x the
spectrum's width.

Why the order: an order-m Gauss rule integrates polynomials up to degree
2m - 1 exactly, and its nodes gather where the spectral mass is. Whether they
resolve a narrow kernel around a dense cluster (the spike at 0) depends on
the order, and the shortfall is a bias that more draws do not remove.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import spectral_density as sd
from benchmarks import fashion_mlp

FACTORS = (1e-4, 3e-4, 1e-3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--orders', default='90,120,150')
  parser.add_argument('--num_examples', type=int, default=10000)
  parser.add_argument('--pool', type=int, default=1)
  parser.add_argument('--num_draws', type=int, default=10)
  args = parser.parse_args()
  orders = [int(o) for o in args.orders.split(',')]
  with jax.enable_x64(True):
    data = fashion_mlp.load_images(args.num_examples, pool=args.pool)
    loss, params = fashion_mlp.trained_problem(data, dtype=jnp.float64)
    data = {'image': data['image'].astype(np.float64), 'label': data['label']}
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=1000)
    start = time.perf_counter()
    exact = sd.exact_eigenvalues(sd.dense_matrix(hvp_fn, n,
                                                 dtype=jnp.float64))
    print(f'{n:,} parameters, {args.num_examples:,} examples; exact '
          f'spectrum in {time.perf_counter() - start:.0f} s')
    width = exact[-1] - exact[0]
    print()
    print('| order | draws | L1, sigma = 1e-4 w | L1, 3e-4 w | L1, 1e-3 w | '
          'SLQ s |')
    print('|---|---|---|---|---|---|')
    for order in orders:
      start = time.perf_counter()
      res = sd.slq(hvp_fn, n, order=order, num_draws=args.num_draws,
                   rng_key=jax.random.key(0), precision='float64')
      seconds = time.perf_counter() - start
      errors = []
      for factor in FACTORS:
        sigma = factor * width
        grid = np.linspace(exact[0] - 6 * sigma, exact[-1] + 6 * sigma,
                           200001)
        estimate, _ = res.density(grid, sigma, normalize=False)
        reference = sd.exact_density(exact, grid, sigma)
        errors.append(np.trapezoid(np.abs(estimate - reference), grid))
      print(f'| {order} | {args.num_draws} | ' +
            ' | '.join(f'{e:.3f}' for e in errors) + f' | {seconds:.1f} |',
            flush=True)


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('order_sweep', main)
