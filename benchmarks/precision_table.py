"""The precision table of docs/guide/precision.md: each setting of the three
knobs against the exact spectrum of the MLP check.

The problem is `benchmarks.mlp_exact_check`'s (the 784-20-10 tanh MLP on
Fashion-MNIST, briefly trained in float64; `--pool 2` gives 14 x 14 images,
the reduced version its test runs); the reference is the eigh of its dense
float64 Hessian (`jacfwd(jacrev(.))` of the whole-data loss, no operator).
Each setting runs order-90 SLQ with 10 draws at the float64-trained
parameters rounded to float32 (float64 for the float64 rows):

  python -m benchmarks.precision_table --num_examples 2000 --pool 2

Prints a Markdown table: lambda_max's and the top-10's largest relative
error, the trace's relative error, and the density's L1 distance at
sigma = 1e-3 of the spectrum's width. On a CPU, ``matmul_precision`` changes
nothing (CPUs compute float32 matmuls in full); on a GPU or TPU the
``'default'`` row is the accelerator's reduced precision.
"""

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

import spectral_density as sd
from benchmarks import mlp_exact_check

# (name, params dtype, get_hvp_fn options, slq options, x64)
SETTINGS = (
    ('float32 (x64 off)', jnp.float32, {}, {'precision': 'float32'}, False),
    ("float32, matmul_precision='default'", jnp.float32,
     {'matmul_precision': 'default'},
     {'precision': 'float32', 'matmul_precision': 'default'}, False),
    ("'mixed' (authors'; configs' default)", jnp.float32, {},
     {'precision': 'mixed'}, True),
    ("'float64' (float32 params cast)", jnp.float32, {'dtype': jnp.float64},
     {'precision': 'float64'}, True),
    ('float64 params', jnp.float64, {}, {'precision': 'float64'}, True),
)


def measure(reference, order, num_draws, batch_size, seed=0):
  exact = reference['exact']
  width = exact[-1] - exact[0]
  sigma = 1e-3 * width
  grid = np.linspace(exact[0] - 6 * sigma, exact[-1] + 6 * sigma, 20001)
  expected = sd.exact_density(exact, grid, sigma)
  rows = []
  for name, dtype, op_options, slq_options, x64 in SETTINGS:
    with jax.enable_x64(x64):
      params = jax.tree.map(lambda p, d=dtype: jnp.asarray(
          np.asarray(p).astype(np.dtype(d))), reference['params'])
      data = {'image': np.asarray(reference['data']['image'], np.float32),
              'label': reference['data']['label']}
      start = time.perf_counter()
      op, _, n = sd.get_hvp_fn(reference['loss'], params, data,
                               batch_size=batch_size, **op_options)
      res = sd.slq(op, n, order=order, num_draws=num_draws,
                   rng_key=jax.random.key(seed), **slq_options)
      seconds = time.perf_counter() - start
      products, accum = str(op.dtype), str(op.accum_dtype)
    top = res.top_eigenvalues(10)
    estimate, _ = res.density(grid, sigma, normalize=False)
    rows.append({
        'setting': name, 'products': products, 'sum over batches': accum,
        'recurrence': slq_options['precision'],
        'lambda_max_rel_err': abs(res.lambda_max - exact[-1]) / exact[-1],
        'top10_max_rel_err': float(np.max(np.abs(top - exact[::-1][:10]) /
                                          np.abs(exact[::-1][:10]))),
        'trace_rel_err': abs(res.trace - exact.sum()) / abs(exact.sum()),
        'l1': float(np.trapezoid(np.abs(estimate - expected), grid)),
        'seconds': seconds})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_examples', type=int, default=2000)
  parser.add_argument('--pool', type=int, default=2)
  parser.add_argument('--order', type=int, default=90)
  parser.add_argument('--num_draws', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=500)
  parser.add_argument('--out', default='docs/reports')
  args = parser.parse_args()
  reference = mlp_exact_check.exact_reference(args.num_examples, args.pool)
  rows = measure(reference, args.order, args.num_draws, args.batch_size)
  n = reference['exact'].size
  lines = [
      f"MLP check: {n} parameters, {args.num_examples} examples (pool "
      f"{args.pool}), order {args.order}, {args.num_draws} draws; exact "
      f"lambda_max {reference['exact'][-1]:.6g}",
      '',
      '| setting | products | sum over batches | recurrence | lambda_max '
      'rel. err | top-10 max rel. err | trace rel. err | L1 (sigma = 1e-3 w) '
      '| s |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['setting']} | {r['products']} | {r['sum over batches']} | "
        f"{r['recurrence']} | {r['lambda_max_rel_err']:.1e} | "
        f"{r['top10_max_rel_err']:.1e} | {r['trace_rel_err']:.1e} | "
        f"{r['l1']:.4f} | {r['seconds']:.0f} |")
  text = '\n'.join(lines)
  print(text)
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
  meta = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), 'commit': commit,
          'machine': f'{platform.node()} {jax.devices()[0].device_kind} '
                     f'({jax.default_backend()})',
          'command': 'python -m benchmarks.precision_table '
                     f'--num_examples {args.num_examples} --pool {args.pool} '
                     f'--order {args.order} --num_draws {args.num_draws}'}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'precision_table.md').write_text(
      '# Precision table\n\n' + '\n'.join(f'- {k}: {v}' for k, v in
                                           meta.items()) + '\n\n' + text + '\n')
  (out / 'precision_table.json').write_text(json.dumps(
      {**meta, 'rows': rows}, indent=1))


if __name__ == '__main__':
  main()
