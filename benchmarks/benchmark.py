"""Speed and memory of the core library on this machine; prints a table.

  python -m benchmarks.benchmark [--num_examples=10000] [--skip_resnet]

Rows (targets from the issue in brackets):
  * full-data H v time / full-data gradient time   [MLP <= 1.5, ResNet-32 <= 3;
    ResNet-32 streamed, see `streamed_rows`]
  * SLQ order 90 / (90 x one full-data H v)         [<= 1.10]
  * compile time at order 200 / at order 20         [<= 1.5]
  * SLQ order 90 on the MLP, seconds                [<= 2.0]
  * 10 draws / 1 draw of SLQ order 90               [<= 4]
  * peak memory of H v / of the gradient (XLA)      [<= 3]
  * streamed H v (batches from host memory) / resident H v  [<= 1.2]
The MLP is the paper's 784-20-10 on the first 10,000 Fashion-MNIST images,
batch 1,000, float32, one device.
"""

import argparse
import statistics
import time

import jax
import numpy as np

import spectral_density as sd
from spectral_density import batch_functions
from spectral_density import operators
from spectral_density import parallel
from spectral_density import recurrence


def _seconds(fn, repeats=3):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _fresh(loss):
  """A new function object: new cache keys, so the next call compiles."""
  return lambda p, b: loss(p, b)


def _peak_bytes(op, kind, v):
  """XLA's estimate for the compiled program: arguments + outputs + temps."""
  batch_fn = batch_functions.batch_function(op.curvature, op.loss_fn, kind)
  data, weights, rem_batch, rem_weight = op._placed  # pylint: disable=protected-access
  runner = parallel.data_parallel_runner(op.devices)
  program = (operators.matvec_program if kind == 'product'
             else operators.value_program)
  args = (v[None],) if kind == 'product' else ()
  compiled = runner.lower(program, batch_fn, op.accum_dtype, op.params, data,
                          weights, rem_batch, rem_weight, args).compile()
  return compiled_bytes(compiled)


def compiled_bytes(compiled):
  """XLA's estimate for a compiled program: arguments + outputs + temps."""
  mem = compiled.memory_analysis()
  mem = mem[0] if isinstance(mem, (list, tuple)) else mem
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes +
          mem.temp_size_in_bytes)


def measure(name, loss, params, data, batch_size, targets):
  """One model's rows."""
  rows = []
  device = jax.local_devices()[:1]
  op, _, n = sd.get_hvp_fn(loss, params, data, batch_size=batch_size,
                           devices=device)
  v = jax.random.normal(jax.random.key(0), (n,), op.dtype)
  t_hv = _seconds(lambda: op(v))
  t_grad = _seconds(op.gradient)
  rows.append((name, 'full-data H v (s)', t_hv, None))
  rows.append((name, 'full-data gradient (s)', t_grad, None))
  rows.append((name, 'H v / gradient', t_hv / t_grad, targets['hv_grad']))
  num = len(jax.tree.leaves(data)[0])
  batches = [jax.tree.map(lambda x, s=s: np.asarray(x[s:s + batch_size]), data)
             for s in range(0, num, batch_size)]
  streamed, _, _ = sd.get_hvp_fn(loss, params, batches, devices=device)
  t_stream = _seconds(lambda: streamed(v))
  rows.append((name, 'streamed H v (s)', t_stream, None))
  rows.append((name, 'streamed / resident H v', t_stream / t_hv, 1.2))
  mem_hv, mem_grad = _peak_bytes(op, 'product', v), _peak_bytes(
      op, 'gradient', None)
  rows.append((name, 'peak memory H v (MB)', mem_hv / 2**20, None))
  rows.append((name, 'peak memory gradient (MB)', mem_grad / 2**20, None))
  rows.append((name, 'peak memory H v / gradient', mem_hv / mem_grad, 3.0))
  if not targets.get('slq', True):
    return rows
  slq = lambda draws: sd.slq(op, n, order=90, num_draws=draws)
  t_slq = _seconds(lambda: slq(1).tridiag, repeats=3)
  rows.append((name, 'SLQ order 90, 1 draw (s)', t_slq, 2.0))
  rows.append((name, 'SLQ 90 / (90 x H v)', t_slq / (90 * t_hv), 1.10))
  t_slq10 = _seconds(lambda: slq(10).tridiag, repeats=2)
  rows.append((name, 'SLQ order 90, 10 draws (s)', t_slq10, None))
  rows.append((name, '10 draws / 1 draw', t_slq10 / t_slq, 4.0))
  compile_s = {}
  for order in (20, 200):
    # Lower and compile the whole Lanczos program, products included.
    config = recurrence.Config(n, order, 'float32', 'float32', 'gaussian',
                               True, 2, False, 1e-6)
    batch_fn = batch_functions.batch_function(op.curvature, _fresh(loss),
                                              'product')
    runner = parallel.data_parallel_runner(op.devices)
    keys = jax.random.split(jax.random.key(0), 1)
    start = time.perf_counter()
    runner.lower(recurrence.programs(config).full, batch_fn, op.accum_dtype,
                 op.params, *op._placed, (keys, None)).compile()  # pylint: disable=protected-access
    compile_s[order] = time.perf_counter() - start
  rows.append((name, 'compile order 20 (s)', compile_s[20], None))
  rows.append((name, 'compile order 200 (s)', compile_s[200], None))
  rows.append((name, 'compile 200 / compile 20',
               compile_s[200] / compile_s[20], 1.5))
  return rows


def streamed_rows(name, loss, params, data, batch_size, targets):
  """H v against the gradient, both streamed batch by batch from the host.

  For convolutional nets on CPU: there XLA runs convolutions inside compiled
  loops (the resident operator's `lax.scan`) far slower than in a plain
  program (JAX issue #12868), which the ResNet configs avoid by streaming.
  Memory: XLA's analysis of the one-batch programs.
  """
  device = jax.local_devices()[:1]
  num = len(jax.tree.leaves(data)[0])
  batches = [jax.tree.map(lambda x, s=s: np.asarray(x[s:s + batch_size]), data)
             for s in range(0, num, batch_size)]
  op, _, n = sd.get_hvp_fn(loss, params, batches, devices=device)
  v = jax.random.normal(jax.random.key(0), (n,), op.dtype)
  t_hv = _seconds(lambda: op(v))
  t_grad = _seconds(op.gradient)
  rows = [(name, 'streamed full-data H v (s)', t_hv, None),
          (name, 'streamed full-data gradient (s)', t_grad, None),
          (name, 'H v / gradient', t_hv / t_grad, targets['hv_grad'])]
  mem = {}
  for kind, args in (('product', v[None]), ('gradient', None)):
    batch_fn = batch_functions.batch_function(op.curvature, op.loss_fn, kind)
    single = batch_functions.stream_single_fn(batch_fn, op.accum_dtype)
    compiled = single.lower(op.params, batches[0], 1.0, args).compile()
    mem[kind] = compiled_bytes(compiled)
  rows.append((name, 'peak memory H v, one batch (MB)', mem['product'] / 2**20,
               None))
  rows.append((name, 'peak memory gradient, one batch (MB)',
               mem['gradient'] / 2**20, None))
  rows.append((name, 'peak memory H v / gradient',
               mem['product'] / mem['gradient'], 3.0))
  return rows


def mlp_rows(num_examples):
  from benchmarks import fashion_mlp
  data = fashion_mlp.load_images(num_examples)
  loss, params = fashion_mlp.trained_problem(data)
  return measure('MLP 784-20-10', loss, params, data, 1000,
                 {'hv_grad': 1.5})


def resnet_rows(num_examples=512, batch_size=128):
  from experiments import models
  model = models.create_model('resnet32', 10, 'batch')
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  params, state = models.split_variables(variables)
  loss = models.make_loss_fn(model, state, 'train')
  rng = np.random.default_rng(0)
  data = {'image': rng.normal(size=(num_examples, 32, 32, 3)).astype(
      np.float32), 'label': rng.integers(0, 10, num_examples).astype(np.int32)}
  return streamed_rows(f'ResNet-32 (BN, {num_examples} CIFAR-shaped)', loss,
                       params, data, batch_size, {'hv_grad': 3.0})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_examples', type=int, default=10000)
  parser.add_argument('--skip_resnet', action='store_true')
  args = parser.parse_args()
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, '
        f'{len(jax.devices())} device(s)')
  print('| model | measure | value | target | ok |')
  print('|---|---|---|---|---|', flush=True)
  _print_rows(mlp_rows(args.num_examples))
  if not args.skip_resnet:
    _print_rows(resnet_rows())


def _print_rows(rows):
  for model, what, value, target in rows:
    ok = '' if target is None else ('yes' if value <= target else 'NO')
    tgt = '' if target is None else f'<= {target:g}'
    print(f'| {model} | {what} | {value:.3g} | {tgt} | {ok} |', flush=True)


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('benchmark', main)
