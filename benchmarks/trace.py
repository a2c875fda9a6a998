"""Trace of the MLP Hessian: SLQ's plain and deflated traces, and the
dedicated estimators at 100 and 900 products; prints a table.

  python -m benchmarks.trace [--slq_seeds=3] [--seeds=5] [--products=100,900]
      [--distributions=rademacher,gaussian]
  python -m benchmarks.trace --coverage [--coverage_seeds=100]

`--coverage` measures instead whether the deflated trace is unbiased and its
standard error honest (`coverage_table`): over many seeds, against the exact
trace of a dense matrix (the Hessian-like matrix of
tests/test_trace_coverage.py, and the dense Hessian of the README's MLP), in
float64 and float32, with 2, 4 and 8 draws.

The paper's 784-20-10 tanh MLP, briefly trained (seed 0), on the first 10,000
Fashion-MNIST training images, float64, batch 1,000: the problem of
`benchmarks.mlp_exact_check`. The exact trace is the sum of the Hessian's
diagonal, in closed form per layer (`exact_trace`, checked here against the
dense Hessian of a 7x7-pooled version first). (docs/mlp_exact_check.json
holds an older trace, 28.82, from before the model code changed: every
estimator here agrees on a value 3% away from it.)
The PyTorch peer hessian-eigenthings 1.0.0a5 measured 0.32% mean error with
Hutch++ at 100 products and 0.024% at 900 on this setup (FACTS.md).

Measured (docs/reports/trace_2026-12-07.md), `--slq_seeds=2 --seeds=3
--products=100`, exact trace 28.82450912:

| estimator | products | mean rel. error | mean stderr / trace |
|---|---|---|---|
| SLQ 90 x 10, plain n alpha_0 (the former default trace) | 900 | 12.1% | 14.5% |
| SLQ 90 x 10, deflated (SpectrumResult.trace, no kept bases) | 900 | 0.168% | 0.207% |
| trace_estimate hutch++, rademacher | 100 | 0.613% | 0.546% |
| trace_estimate hutch++, gaussian | 100 | 0.325% | 0.541% |
| trace_estimate krylov, rademacher (the default) | 100 | 0.343% | 0.339% |
| trace_estimate krylov, gaussian | 100 | 0.122% | 0.283% |

Every error was within 2 standard errors (only 2-3 seeds each: compare the
standard errors, not the mean errors).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import spectral_density as sd
from benchmarks import fashion_mlp



def exact_trace(params, data):
  """``tr H`` of the mean cross-entropy of the one-hidden-layer tanh MLP.

  A weight ``W[a, j]`` enters only ``z_j = x . W[:, j] + b_j``, linearly, so
  its diagonal entry is ``mean_n x_a^2 d^2 L_n / dz_j^2``; the same holds
  for the output layer with the hidden activations ``h``. So ``tr H =
  mean_n sum_j (|x_n|^2 + 1) d^2 L_n / dz_j^2 + sum_c (|h_n|^2 + 1) d^2 L_n /
  do_c^2``, from per-example 20 x 20 and 10 x 10 Hessians.
  """
  w0, b0 = params['Dense_0']['kernel'], params['Dense_0']['bias']
  w1, b1 = params['Dense_1']['kernel'], params['Dense_1']['bias']
  x = jnp.reshape(data['image'], (len(data['label']), -1))

  def ce(logits, label):
    return -jax.nn.log_softmax(logits)[label]

  def one(xn, label):
    z = xn @ w0 + b0
    h = jnp.tanh(z)
    dz = jnp.diag(jax.hessian(lambda z: ce(jnp.tanh(z) @ w1 + b1, label))(z))
    do = jnp.diag(jax.hessian(lambda o: ce(o, label))(h @ w1 + b1))
    return (xn @ xn + 1) * dz.sum() + (h @ h + 1) * do.sum()

  return float(jnp.mean(jax.lax.map(lambda a: one(*a), (x, data['label']),
                                    batch_size=500)))


def _check_exact_trace():
  """`exact_trace` against the dense Hessian of a small version."""
  data = fashion_mlp.load_images(300, pool=4)
  loss, params = fashion_mlp.trained_problem(data, dtype=jnp.float64,
                                             train_steps=20)
  data = {'image': data['image'].astype(np.float64), 'label': data['label']}
  dense = np.trace(sd.full_hessian(loss, params, data))
  closed = exact_trace(params, data)
  assert abs(closed - dense) < 1e-9 * abs(dense), (closed, dense)
  return dense


def _row(name, products, errors, stderrs, seconds):
  errors, stderrs = np.asarray(errors), np.asarray(stderrs)
  covered = np.mean(np.abs(errors) <= 2 * stderrs)
  print(f'| {name} | {products} | {len(errors)} | '
        f'{100 * np.mean(np.abs(errors)):.3f}% | '
        f'{100 * np.max(np.abs(errors)):.3f}% | '
        f'{100 * np.mean(stderrs):.3f}% | {covered:.0%} | '
        f'{np.mean(seconds):.1f} |')


def hessian_like(dim=150, seed=0):
  """The test matrix of tests/test_trace_coverage.py: a few outliers, a bulk
  near 0, a few negative eigenvalues."""
  rng = np.random.default_rng(seed)
  ev = np.r_[rng.normal(0.02, 0.05, dim - 9), -rng.uniform(0.1, 0.5, 4),
             rng.uniform(2.0, 10.0, 5)]
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  return (q * ev) @ q.T


def readme_mlp_hessian():
  """The dense Hessian of the README example's MLP (387 parameters)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class MLP(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.tanh(nn.Dense(16)(x)))

  x = jax.random.normal(jax.random.key(0), (512, 20))
  data = {'x': x, 'y': jnp.argmax(x[:, :3], axis=1)}
  model = MLP()
  params = model.init(jax.random.key(1), x[:1])['params']

  def loss(params, batch):
    logits = model.apply({'params': params}, batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['y']).mean()

  return np.asarray(sd.full_hessian(loss, params, data), np.float64)


def coverage_row(name, a, order, precision, num_draws, seeds):
  """One row of `coverage_table`: default runs (the run's Gram matrix) of
  `seeds` seeds against ``np.trace(a)``."""
  exact = np.trace(a)
  errors, stderrs, spreads, secs = [], [], [], []
  mat = jnp.asarray(a, precision)
  matvec = lambda v: mat @ v
  for seed in range(seeds):
    res = sd.slq(matvec, a.shape[0], order=order, num_draws=num_draws,
                 rng_key=jax.random.key(seed), precision=precision)
    start = time.perf_counter()
    errors.append(res.trace - exact)
    stderrs.append(res.trace_stderr)
    secs.append(time.perf_counter() - start)
    samples = res._deflated.trace_samples  # pylint: disable=protected-access
    spreads.append(np.std(samples, ddof=1) / np.sqrt(num_draws))
  errors, stderrs, spreads = map(np.asarray, (errors, stderrs, spreads))
  sd_error = np.std(errors, ddof=1)
  t_quantile = stats.t.ppf(0.975, num_draws - 1)
  print(f'| {name} | {precision} | {num_draws} | {seeds} | '
        f'{np.mean(errors) / (sd_error / np.sqrt(seeds)):+.2f} | '
        f'{sd_error:.4f} | {np.sqrt(np.mean(stderrs ** 2)):.4f} | '
        f'{np.mean(np.abs(errors) <= 2 * stderrs):.2f} | '
        f'{np.mean(np.abs(errors) <= 2 * spreads):.2f} | '
        f'{np.mean(np.abs(errors) <= t_quantile * spreads):.2f} | '
        f'{1e3 * np.mean(secs):.0f} |', flush=True)


def coverage_table(seeds):
  """Bias and coverage of the deflated trace (module doc)."""
  print('| matrix | precision | draws | seeds | mean error / its stderr | '
        'sd of error | rms trace_stderr | error <= 2 trace_stderr | '
        'error <= 2 spread | error <= t(0.975) spread | ms (deflation) |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for name, a, order in (
      ('Hessian-like, n 150, order 15', hessian_like(), 15),
      ('README MLP, n 387, order 40', readme_mlp_hessian(), 40)):
    for precision in ('float64', 'float32'):
      for num_draws in (2, 4, 8):
        coverage_row(name, a, order, precision, num_draws, seeds)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--slq_seeds', type=int, default=3)
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--products', default='100,900')
  parser.add_argument('--num_examples', type=int, default=10000)
  parser.add_argument('--exact_only', action='store_true')
  parser.add_argument('--distributions', default='rademacher,gaussian',
                      help='probe vectors of trace_estimate to compare')
  parser.add_argument('--coverage', action='store_true',
                      help='the bias and coverage table of the deflated trace')
  parser.add_argument('--coverage_seeds', type=int, default=100)
  args = parser.parse_args()
  if args.coverage:
    with jax.enable_x64(True):
      coverage_table(args.coverage_seeds)
    return
  with jax.enable_x64(True):
    small = _check_exact_trace()
    data = fashion_mlp.load_images(args.num_examples)
    loss, params = fashion_mlp.trained_problem(data, dtype=jnp.float64,
                                               seed=0)
    data = {'image': data['image'].astype(np.float64), 'label': data['label']}
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=1000)
    exact = exact_trace(params, data)
    print(f'MLP 784-20-10, {args.num_examples} images, {n} parameters, '
          f'float64; exact trace {exact:.10g} (closed form; it matched the '
          f'dense Hessian\'s trace {small:.6g} of a 7x7-pooled MLP to 1e-9)')
    if args.exact_only:
      return
    print('| estimator | products | seeds | mean rel. error | max rel. error '
          '| mean stderr / trace | error <= 2 stderr | seconds |')
    print('|---|---|---|---|---|---|---|---|')
    plain, deflated, plain_se, deflated_se, secs = [], [], [], [], []
    for seed in range(args.slq_seeds):
      start = time.perf_counter()
      # The default run (no kept bases): its Gram matrix deflates the trace.
      res = sd.slq(hvp_fn, n, order=90, num_draws=10,
                   rng_key=jax.random.key(seed), precision='float64')
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
        for distribution in args.distributions.split(','):
          errors, stderrs, secs = [], [], []
          for seed in range(args.seeds):
            start = time.perf_counter()
            trace, stderr = sd.trace_estimate(
                hvp_fn, n, products, method=method, seed=seed,
                distribution=distribution,
                **({'precision': 'float64'} if method == 'krylov' else {}))
            secs.append(time.perf_counter() - start)
            errors.append((trace - exact) / exact)
            stderrs.append(stderr / exact)
          _row(f'trace_estimate {method}, {distribution}', products, errors,
               stderrs, secs)


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('trace', main)
