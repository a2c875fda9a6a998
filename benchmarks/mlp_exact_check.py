"""SLQ against the exact Hessian spectrum of the paper's MLP on Fashion-MNIST.

The 784-20-10 tanh MLP (15,910 parameters), briefly trained, on the first
10,000 training images, in float64: the exact eigenvalues of the dense
Hessian, and order-90 SLQ with 10 draws. Prints a table and writes the
numbers (JSON) and the paper's accuracy figure (PNG).

The reference is independent of the operator that SLQ uses: the dense
Hessian comes from `jax.hessian`'s own composition, ``jacfwd(jacrev(loss))``,
of the mean loss over all examples at once (no batches, weights, devices or
`get_hvp_fn`), a block of columns at a time (all at once would need 25 GB).

  python -m benchmarks.mlp_exact_check --num_examples=10000 --out=results/

Takes about 20 minutes on 2 CPU cores (the dense Hessian and its eigh); the
test suite runs a reduced version (14x14 images, 2,000 examples).
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import spectral_density as sd
from benchmarks import fashion_mlp


def jax_hessian(loss, params, data, block=128):
  """``[n, n]`` Hessian of ``loss(params, data)`` by ``jacfwd(jacrev(.))``.

  `jax.hessian` is ``jacfwd(jacrev(f))``; here `jacfwd` pushes forward one
  block of `block` coordinate directions at a time, so memory is `block`
  tangents of the whole-data forward pass instead of `n`.
  """
  flat, unravel = ravel_pytree(params)
  n = flat.size
  block = min(block, n)
  full_loss = lambda x: loss(unravel(x), data)

  @jax.jit
  def columns(start):  # [n, block]: columns start .. start + block - 1
    def gradient(u):
      moved = jax.lax.dynamic_slice(flat, (start,), (block,)) + u
      return jax.jacrev(full_loss)(
          jax.lax.dynamic_update_slice(flat, moved, (start,)))
    return jax.jacfwd(gradient)(jnp.zeros(block, flat.dtype))

  hessian = np.empty((n, n), flat.dtype)
  for start in range(0, n, block):
    start = min(start, n - block)  # one shape, one compilation
    hessian[:, start:start + block] = columns(start)
  return hessian


def exact_reference(num_examples, pool, seed=0):
  """The trained float64 problem and the exact eigenvalues of its Hessian.

  Returns ``{'loss', 'params', 'data', 'exact' [n] ascending,
  'seconds_dense_hessian', 'seconds_eigh'}``; `compare` takes it, so that
  several SLQ settings share one dense Hessian.
  """
  with jax.enable_x64(True):
    data = fashion_mlp.load_images(num_examples, pool=pool)
    loss, params = fashion_mlp.trained_problem(data, dtype=jnp.float64,
                                               seed=seed)
    data = {'image': data['image'].astype(np.float64), 'label': data['label']}
    t0 = time.perf_counter()
    hessian = jax_hessian(loss, params, data)
    t1 = time.perf_counter()
    exact = sd.exact_eigenvalues(hessian)
    del hessian
    t2 = time.perf_counter()
  return {'loss': loss, 'params': params, 'data': data, 'exact': exact,
          'seconds_dense_hessian': t1 - t0, 'seconds_eigh': t2 - t1}


def run(num_examples, pool, order, num_draws, sigma_factors, batch_size=1000,
        seed=0):
  """Exact vs SLQ; returns a dict of results (arrays included)."""
  return compare(exact_reference(num_examples, pool, seed), order, num_draws,
                 sigma_factors, batch_size, seed)


def compare(reference, order, num_draws, sigma_factors, batch_size=1000,
            seed=0, grid_len=200001):
  """SLQ against `exact_reference`'s eigenvalues: ``(out, exact, result)``.

  The L1 distances of the densities are trapezoid integrals over `grid_len`
  points (200001: a spacing of 1/20 of the kernel width at factor 1e-4).
  """
  exact, data = reference['exact'], reference['data']
  num_examples = len(data['label'])
  with jax.enable_x64(True):
    hvp_fn, _, n = sd.get_hvp_fn(reference['loss'], reference['params'], data,
                                 batch_size=batch_size)
    t2_slq = time.perf_counter()
    res = sd.slq(hvp_fn, n, order=order, num_draws=num_draws,
                 rng_key=jax.random.key(seed), precision='float64')
    t3 = time.perf_counter()
  width = exact[-1] - exact[0]
  out = {
      'num_params': n, 'num_examples': num_examples, 'order': order,
      'reference': 'eigh of jacfwd(jacrev(mean loss over all examples))',
      'num_draws': num_draws, 'exact_lambda_max': float(exact[-1]),
      'slq_lambda_max': res.lambda_max,
      'lambda_max_rel_err': abs(res.lambda_max - exact[-1]) / abs(exact[-1]),
      'exact_lambda_min': float(exact[0]), 'slq_lambda_min': res.lambda_min,
      'exact_top10': exact[::-1][:10].tolist(),
      'slq_top10': res.top_eigenvalues(10).tolist(),
      'exact_trace': float(exact.sum()), 'slq_trace': res.trace,
      'seconds_dense_hessian': reference['seconds_dense_hessian'],
      'seconds_eigh': reference['seconds_eigh'],
      'seconds_slq': t3 - t2_slq, 'l1': {},
  }
  for factor in sigma_factors:
    sigma = factor * width
    grid = np.linspace(exact[0] - 6 * sigma, exact[-1] + 6 * sigma, grid_len)
    estimate, _ = res.density(grid, sigma, normalize=False)
    expected = sd.exact_density(exact, grid, sigma)
    out['l1'][f'{factor:g}'] = float(np.trapezoid(np.abs(estimate - expected),
                                                  grid))
  return out, exact, res


def plot(exact, res, sigma, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from spectral_density import plotting
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  width = exact[-1] - exact[0]
  grid = np.linspace(exact[0] - 0.02 * width, exact[-1] + 0.02 * width, 20001)
  for ax in axes:
    plotting.plot_spectrum(res, grid=grid, sigma=sigma, exact=exact, ax=ax,
                           label=f'SLQ, order {res.order}, {res.num_draws} draws')
  axes[1].set_xlim(-5 * sigma - 0.02 * width, 0.1 * width)
  axes[0].set_title('whole spectrum')
  axes[1].set_title('bulk near 0')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_examples', type=int, default=10000)
  parser.add_argument('--pool', type=int, default=1)
  parser.add_argument('--order', type=int, default=90)
  parser.add_argument('--num_draws', type=int, default=10)
  parser.add_argument('--out', default='results')
  args = parser.parse_args()
  factors = (1e-4, 3e-4, 1e-3)
  out, exact, res = run(args.num_examples, args.pool, args.order,
                        args.num_draws, factors)
  path = pathlib.Path(args.out)
  path.mkdir(parents=True, exist_ok=True)
  (path / 'mlp_exact_check.json').write_text(json.dumps(out, indent=1))
  plot(exact, res, 1e-3 * (exact[-1] - exact[0]),
       path / 'mlp_exact_vs_slq.png')
  print("| parameters | examples | lambda_max exact | lambda_max SLQ | rel. "
        "err | L1 (sigma=1e-4 w) | L1 (3e-4 w) | L1 (1e-3 w) | SLQ s |")
  print('|---|---|---|---|---|---|---|---|---|')
  l1 = out['l1']
  print(f"| {out['num_params']} | {out['num_examples']} | "
        f"{out['exact_lambda_max']:.10g} | {out['slq_lambda_max']:.10g} | "
        f"{out['lambda_max_rel_err']:.1e} | {l1['0.0001']:.3f} | "
        f"{l1['0.0003']:.3f} | {l1['0.001']:.3f} | {out['seconds_slq']:.1f} |")
  print(f"dense Hessian {out['seconds_dense_hessian']:.0f} s, eigh "
        f"{out['seconds_eigh']:.0f} s")


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('mlp_exact_check', main)
