"""Trace of the MLP Hessian: SLQ's plain and deflated traces, and the
dedicated estimators at 100 and 900 products; prints a table.

  python -m benchmarks.trace [--slq_seeds=3] [--seeds=5]

The paper's 784-20-10 tanh MLP, briefly trained (seed 0), on the first 10,000
Fashion-MNIST training images, float64, batch 1,000: the problem of
`benchmarks.mlp_exact_check`, whose exact trace (the sum of the exact
eigenvalues of the dense Hessian) is stored in docs/mlp_exact_check.json.
The PyTorch peer hessian-eigenthings 1.0.0a5 measured 0.32% mean error with
Hutch++ at 100 products and 0.024% at 900 on this setup (FACTS.md).
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import spectral_density as sd
from benchmarks import fashion_mlp

EXACT = pathlib.Path(__file__).resolve().parent.parent / 'docs' / (
    'mlp_exact_check.json')


def _row(name, products, errors, stderrs, seconds):
  errors, stderrs = np.asarray(errors), np.asarray(stderrs)
  covered = np.mean(np.abs(errors) <= 2 * stderrs)
  print(f'| {name} | {products} | {len(errors)} | '
        f'{100 * np.mean(np.abs(errors)):.3f}% | '
        f'{100 * np.max(np.abs(errors)):.3f}% | '
        f'{100 * np.mean(stderrs):.3f}% | {covered:.0%} | '
        f'{np.mean(seconds):.1f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--slq_seeds', type=int, default=3)
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--products', default='100,900')
  args = parser.parse_args()
  stored = json.loads(EXACT.read_text())
  exact = stored['exact_trace']
  with jax.enable_x64(True):
    data = fashion_mlp.load_images(stored['num_examples'])
    loss, params = fashion_mlp.trained_problem(data, dtype=jnp.float64,
                                               seed=0)
    data = {'image': data['image'].astype(np.float64), 'label': data['label']}
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=1000)
    assert n == stored['num_params']
    print(f'MLP 784-20-10, {stored["num_examples"]} images, {n} parameters, '
          f'float64; exact trace {exact:.10g}')
    print('| estimator | products | seeds | mean rel. error | max rel. error '
          '| mean stderr / trace | error <= 2 stderr | seconds |')
    print('|---|---|---|---|---|---|---|---|')
    plain, deflated, plain_se, deflated_se, secs = [], [], [], [], []
    for seed in range(args.slq_seeds):
      start = time.perf_counter()
      res = sd.slq(hvp_fn, n, order=90, num_draws=10,
                   rng_key=jax.random.key(seed), precision='float64',
                   keep_vecs=True)
      secs.append(time.perf_counter() - start)
      samples = n * res.tridiag[:, 0, 0]
      plain.append((samples.mean() - exact) / exact)
      plain_se.append(samples.std(ddof=1) / np.sqrt(10) / exact)
      deflated.append((res.trace - exact) / exact)
      deflated_se.append(res.trace_stderr / exact)
    _row('SLQ order 90 x 10 draws, plain (n alpha_0)', 900, plain, plain_se,
         secs)
    _row('SLQ order 90 x 10 draws, deflated (SpectrumResult.trace)', 900,
         deflated, deflated_se, secs)
    for products in [int(p) for p in args.products.split(',')]:
      for method in ('hutch++', 'krylov'):
        errors, stderrs, secs = [], [], []
        for seed in range(args.seeds):
          start = time.perf_counter()
          trace, stderr = sd.trace_estimate(
              hvp_fn, n, products, method=method, seed=seed,
              **({'precision': 'float64'} if method == 'krylov' else {}))
          secs.append(time.perf_counter() - start)
          errors.append((trace - exact) / exact)
          stderrs.append(stderr / exact)
        _row(f'trace_estimate {method}', products, errors, stderrs, secs)


if __name__ == '__main__':
  main()
