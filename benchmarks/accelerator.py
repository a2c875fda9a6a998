"""Cost of the paper's measurements on whatever device JAX finds; prints tables.

  python -m benchmarks.accelerator          # full sizes, < 8 min on an H100
  python -m benchmarks.accelerator --tiny   # a minute on a CPU (CI runs it):
                                            # the same code on a small MLP
  python -m benchmarks.accelerator --flops_only   # FLOP counts, any machine

The full run keeps to --deadline_s (450 s by default, shared equally between
the cases): the SLQ draw's budget shrinks to what is left, and the
several-draw product is skipped (and the table says so) where it would not
fit, so the run ends within 8 minutes on a slower device too.

For ResNet-32 on 50,000 CIFAR-shaped examples and ResNet-18 at 224 x 224 on
10,000 examples (synthetic uint8 images, batch norm in train mode, float32):
  * training steps/s (SGD with momentum, batch 128, data on the device) and the
    epoch time it implies;
  * full-data gradient time (`get_hvp_fn(...).gradient()`);
  * full-data H v time, resident (data on the device) and streamed (the
    prepared `input_pipeline.HessianSet` from host memory), the input seconds
    of each streamed product next to it, and the relative difference of the
    two products (a correctness check). The Hessian set is uint8, normalised
    inside each product (`augmentation.normalized_on_device`), as the
    experiments' probe does; --host_normalized measures the float32 set
    normalised on the host instead;
  * one order-90 SLQ draw (`lanczos_draws`). Where 90 products would not fit
    --slq_budget_s, the draw is stopped after the budget and its time is
    extrapolated from the measured seconds per Lanczos step after the first
    segment (compilation), and labelled so;
  * the ratios H v / gradient and SLQ / (90 x epoch); the authors' rule of
    thumb is SLQ = 2 x 90 x epoch, i.e. a ratio of 2;
  * several draws at once (--draws, default 4): one product of a [draws,
    dim] block of vectors, which shares the primal forward and backward
    pass over each batch between the draws (`vmap` of `jvp` of `grad` over
    the vectors), its time per draw, and the SLQ ratio per draw that
    follows (the one-draw SLQ time scaled by the per-draw product time:
    derived, not a second Lanczos run). The authors ran one draw per job
    (FACTS.md); the paper's density averages several;
  * XLA's FLOP count per example of the same programs (training step,
    gradient, H v, H v per draw of the block; `benchmarks.flop_count`):
    hardware-independent, so
    `--flops_only` prints it on any machine in about a minute, and it says
    what the time ratios would be if every program ran equally efficiently.
Then one snapshot (gradient + order-90 draw) at the paper's scale, scaled
linearly in the number of examples from these per-example costs, with the
memory it needs.

Matmul precision (the ResNet-32 case, on an accelerator): the same snapshot
(--precision_examples of its Hessian set) with the products and the
recurrence at JAX's default matmul precision (one bfloat16 pass on TPU, TF32
on NVIDIA GPUs) and at full float32 (``matmul_precision='highest'``, the
library's default): the H v time of each, the relative difference of the
products, and of one order --precision_order SLQ draw from the same start
vector the largest relative difference of the top-10 Ritz values and the L1
distance of the two densities (a common grid, a kernel 1/100 of the
spectrum's width). On a CPU both settings are the same computation, so the
row says "not measured". `--precision_only` runs it alone (a stage of
accelerator_run.sh); --tiny prints it too. The tables are printed by
`benchmarks.accelerator_report`.
"""

import argparse
import dataclasses
import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import spectral_density as sd
from benchmarks import accelerator_report
from benchmarks import benchmark
from benchmarks import fashion_mlp
from benchmarks import flop_count
from experiments import augmentation
from experiments import datasets
from experiments import input_pipeline
from experiments import models

# The models measured: change the name here when the authors' ResNet-32 gets
# its own entry in `experiments.models.MODELS`.
CIFAR_MODEL = 'resnet32'
IMAGENET_MODEL = 'resnet18'
ORDER = accelerator_report.ORDER
TRAIN_BATCH = 128


@dataclasses.dataclass(frozen=True)
class Case:
  """One model and dataset size to measure."""
  title: str
  model: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: int
  hessian_batch: int
  paper_examples: int  # the Hessian set of the paper-scale snapshot
  normalization: str
  norm: str = 'batch'


def cases(tiny: bool) -> list[Case]:
  """The full cases, or (tiny) the same measurements on small MLPs, whose
  compilation takes seconds where a ResNet's takes minutes on a small CPU."""
  if tiny:
    return [Case('MLP, CIFAR-shaped (tiny stand-in for ResNet-32)', 'mlp',
                 (32, 32, 3), 10, 64, 32, 50_000, 'cifar10', 'none')]
  return [Case('ResNet-32, 50k CIFAR-shaped', CIFAR_MODEL, (32, 32, 3), 10,
               50_000, 128, 50_000, 'cifar10'),
          Case('ResNet-18, 10k at 224x224', IMAGENET_MODEL, (224, 224, 3),
               1000, 10_000, 64, 100_000, 'imagenet2012')]


def _seconds(fn, repeats):
  """Median seconds of fn() after a warm-up (compilation); every call,
  the warm-up included, waits for the device."""
  # pylint: disable-next=protected-access
  return benchmark._seconds(lambda: jax.block_until_ready(fn()), repeats)


def _peak_memory():
  """Peak bytes in use on device 0, where the backend reports it."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


class Clock:
  """Seconds left before a deadline; no deadline when `seconds` is None."""

  def __init__(self, seconds):
    self.end = None if seconds is None else time.perf_counter() + seconds

  def left(self) -> float:
    return math.inf if self.end is None else self.end - time.perf_counter()


def train_steps_per_second(loss, params, images, labels, steps):
  """Steps/s of a jitted SGD-momentum step on batches already on the device."""
  tx, step = fashion_mlp.sgd_momentum_step(loss)

  size = min(TRAIN_BATCH, len(labels))
  batches = [{'image': images[i * size:(i + 1) * size],
              'label': labels[i * size:(i + 1) * size]}
             for i in range(len(labels) // size)]
  state = (params, tx.init(params))
  state = step(*state, batches[0])  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state = step(*state, batches[i % len(batches)])
  jax.block_until_ready(state)
  return steps / (time.perf_counter() - start)


class _StopDraw(Exception):
  pass


def slq_draw_seconds(op, dim, budget_s, segment):
  """(seconds of one order-ORDER draw, label).

  The draw runs in segments of `segment` steps; the first two compile
  (the second once more, measured), so the seconds per step are taken from
  the later ones and multiplied by ORDER. The draw stops once budget_s is
  spent and three segments are done.
  """
  marks = []

  def progress(info):
    marks.append((time.perf_counter(), info['step']))
    if len(marks) >= 3 and marks[-1][0] - start > budget_s:
      raise _StopDraw

  start = time.perf_counter()
  try:
    sd.lanczos_draws(op, dim, ORDER, jax.random.key(0), progress=progress,
                     checkpoint_every=segment)
    how = 'measured'
  except _StopDraw:
    how = 'extrapolated from'
  (t0, s0), (t1, s1) = marks[1], marks[-1]
  return (t1 - t0) / (s1 - s0) * ORDER, f'{how} steps {s0 + 1}-{s1}'


def _hvp_program_bytes(loss, params, batch):
  """XLA's estimate of one batch's H v program: arguments+outputs+temps."""
  return benchmark.compiled_bytes(jax.jit(functools.partial(sd.hvp, loss))
                                  .lower(params, batch, params).compile())


def _resident(case: Case, args) -> bool:
  """Whether to measure the resident operator: not for convolutional models
  on CPU, where XLA runs convolutions inside compiled loops far slower than
  outside (JAX issue #12868; see the README), unless asked."""
  if args.resident != 'auto':
    return args.resident == 'on'
  return jax.default_backend() != 'cpu' or case.model == 'mlp'


def _log(case, what, start):
  print(f'  {case.title}: {what} at {time.perf_counter() - start:.0f} s',
        file=sys.stderr, flush=True)


def _model(case: Case):
  """(params, training loss, the Hessian's loss, dataset info) of a case.

  The Hessian's loss takes uint8 images and normalises them on the device
  (`augmentation.normalized_on_device`), as the experiments' probe does;
  floating images (--host_normalized) pass through it unchanged.
  """
  mean, std = datasets.NORMALIZATION[case.normalization]
  info = datasets.DatasetInfo(case.title, case.num_classes, case.image_shape,
                              mean, std, 'none', case.num_examples, 0)
  model = models.create_model(case.model, case.num_classes, case.norm)
  variables = models.init_variables(model, jax.random.key(0),
                                    (1, *case.image_shape))
  params, model_state = models.split_variables(variables)
  loss = models.make_loss_fn(model, model_state, 'train')
  return params, loss, augmentation.normalized_on_device(loss, mean, std), info


def _batch_shapes(case: Case, size: int, dtype) -> dict:
  return {'image': jax.ShapeDtypeStruct((size, *case.image_shape), dtype),
          'label': jax.ShapeDtypeStruct((size,), jnp.int32)}


def _case_flops(case: Case, args, params, loss, hessian_loss) -> dict:
  """`flop_count.flop_counts` at the case's batches (shapes only)."""
  hessian_dtype = jnp.float32 if args.host_normalized else jnp.uint8
  train_batch = min(TRAIN_BATCH, case.num_examples)
  hessian_batch = min(case.hessian_batch, case.num_examples)
  return flop_count.flop_counts(
      loss, _batch_shapes(case, train_batch, jnp.float32), hessian_loss,
      _batch_shapes(case, hessian_batch, hessian_dtype), params, args.draws)


def flop_row(case: Case, args) -> dict:
  """The FLOP counts of a case, from shapes alone (--flops_only)."""
  params, loss, hessian_loss, _ = _model(case)
  return {'case': case, 'draws': args.draws,
          'params': sum(x.size for x in jax.tree.leaves(params)),
          'flops': _case_flops(case, args, params, loss, hessian_loss)}


def measure(case: Case, args, clock: Clock | None = None) -> dict:
  """The rows of one case, within `clock` (None: no deadline)."""
  clock = clock or Clock(None)
  begin = time.perf_counter()
  rng = np.random.default_rng(0)
  params, loss, hessian_loss, info = _model(case)
  train = {'image': rng.integers(0, 256, (case.num_examples,
                                          *case.image_shape), np.uint8),
           'label': rng.integers(0, case.num_classes, case.num_examples,
                                 dtype=np.int32)}
  normalized = args.host_normalized
  resident = input_pipeline.hessian_dataset(train, info,
                                            normalized=normalized)
  out = {'case': case, 'examples': case.num_examples,
         'set_form': ('float32, normalised on the host' if normalized else
                      'uint8, normalised on the device'),
         'params': sum(x.size for x in jax.tree.leaves(params))}

  # Shapes only: a few seconds of tracing, inside the deadline's plans.
  out['flops'] = _case_flops(case, args, params, loss, hessian_loss)
  _log(case, 'FLOP counts', begin)

  if args.skip_training:
    out['train_batch'] = out['train_steps_per_s'] = out['epoch_s'] = None
  else:
    first = jax.tree.map(lambda x: x[:4 * TRAIN_BATCH], resident)
    if not normalized:  # training takes normalised float32 images
      first = input_pipeline.preprocess(first, info)
    device_images = jnp.asarray(first['image'])
    device_labels = jnp.asarray(first['label'])
    out['train_steps_per_s'] = train_steps_per_second(
        loss, params, device_images, device_labels, args.train_steps)
    del device_images, device_labels
    _log(case, 'training', begin)
    # An epoch of batches of TRAIN_BATCH (smaller runs train on smaller
    # batches: per example).
    out['train_batch'] = min(TRAIN_BATCH, case.num_examples)
    out['epoch_s'] = case.num_examples / (out['train_batch'] *
                                          out['train_steps_per_s'])

  start = time.perf_counter()
  hessian_set = input_pipeline.prepare_hessian_set(
      train, info, case.num_examples, case.hessian_batch, process_index=0,
      process_count=1, normalized=normalized)
  out['prepare_s'] = time.perf_counter() - start
  streamed, _, dim = sd.get_hvp_fn(hessian_loss, params, hessian_set)
  v = jax.random.normal(jax.random.key(1), (dim,), jnp.float32)
  # Streamed products pay the host's input each time: one warm-up, one timed.
  start = time.perf_counter()
  jax.block_until_ready(streamed(v))
  first_call_s = time.perf_counter() - start
  start = time.perf_counter()
  hv_streamed = np.asarray(streamed(v))
  out['hv_streamed_s'] = time.perf_counter() - start
  # What a new program costs to compile, for the deadline's plans below.
  compile_s = max(first_call_s - out['hv_streamed_s'], 0.0)
  start = time.perf_counter()
  for _ in hessian_set():
    pass
  out['input_s'] = time.perf_counter() - start
  _log(case, 'streamed H v', begin)

  if _resident(case, args):
    op, _, _ = sd.get_hvp_fn(hessian_loss, params, resident,
                             batch_size=case.hessian_batch,
                             devices=jax.local_devices()[:1])
    out['gradient_s'] = _seconds(op.gradient, args.repeats)
    out['hv_resident_s'] = _seconds(lambda: op(v), args.repeats)
    hv_resident = np.asarray(op(v))
    out['stream_rel_diff'] = float(np.linalg.norm(hv_streamed - hv_resident) /
                                   np.linalg.norm(hv_resident))
    hv_op = hv_resident
    _log(case, 'resident gradient and H v', begin)
  else:
    op = streamed
    out['gradient_s'] = _seconds(op.gradient, args.repeats)
    out['hv_resident_s'] = out['stream_rel_diff'] = None
    hv_op = hv_streamed
  hv_one_s = out['hv_resident_s'] or out['hv_streamed_s']  # op's product
  first_batch = jax.tree.map(lambda x: x[:case.hessian_batch], resident)
  del resident

  # The shortest draw slq_draw_seconds can time: two compiling segments and
  # one timed; and one more compilation for XLA's memory estimate.
  slq_floor_s = 3 * compile_s + 3 * args.slq_segment * hv_one_s
  # The block product, at no sharing at all: a warm-up, `repeats` timed
  # calls and the check, each `draws` products, plus its compilation.
  block_s = compile_s + (args.repeats + 2) * args.draws * hv_one_s
  out['draws'] = args.draws
  out['hv_block_s'] = out['block_rel_diff'] = None
  out['block_skipped'] = (args.draws > 1 and
                          clock.left() < block_s + slq_floor_s)
  if args.draws > 1 and not out['block_skipped']:
    block = jax.random.normal(jax.random.key(2), (args.draws, dim),
                              jnp.float32).at[0].set(v)
    out['hv_block_s'] = _seconds(lambda: op(block), args.repeats)
    # Row 0 of the block against the one-vector product of `op` above.
    out['block_rel_diff'] = float(
        np.linalg.norm(np.asarray(op(block))[0] - hv_op) /
        np.linalg.norm(hv_op))
    _log(case, f'{args.draws} draws sharing the passes', begin)

  budget_s = min(args.slq_budget_s, max(clock.left() - slq_floor_s, 0.0))
  out['slq_s'], out['slq_label'] = slq_draw_seconds(
      op, dim, budget_s, args.slq_segment)
  _log(case, 'SLQ', begin)
  out['hv_over_gradient'] = hv_one_s / out['gradient_s']
  out['slq_over_epochs'] = (None if out['epoch_s'] is None else
                            out['slq_s'] / (ORDER * out['epoch_s']))
  out['block_per_draw_over_hv'] = (
      None if out['hv_block_s'] is None else
      out['hv_block_s'] / args.draws / hv_one_s)
  out['slq_per_draw_over_epochs'] = (
      None if None in (out['block_per_draw_over_hv'],
                       out['slq_over_epochs']) else
      out['slq_over_epochs'] * out['block_per_draw_over_hv'])
  out['peak_bytes'] = _peak_memory()
  out['hv_program_bytes'] = (None if args.tiny else _hvp_program_bytes(
      hessian_loss, params, first_batch))
  out['seconds'] = time.perf_counter() - begin
  return out


TOP_K = 10  # Ritz values compared by the precision row


def _density_l1(a, b):
  """L1 distance of the smoothed densities of two `SpectrumResult`s on a
  common grid, a kernel 1/100 of the spectrum's width."""
  lo = min(a.lambda_min, b.lambda_min)
  hi = max(a.lambda_max, b.lambda_max)
  sigma = max(hi - lo, 1e-12) / 100
  grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, 4000)
  da = sd.eigv_to_density(a.nodes, a.weights, grid, sigma=sigma)
  db = sd.eigv_to_density(b.nodes, b.weights, grid, sigma=sigma)
  return float(np.sum(np.abs(np.asarray(da) - np.asarray(db))) *
               (grid[1] - grid[0]))


def precision_row(case: Case, args) -> dict:
  """Default against full float32 matmul precision on one snapshot (see the
  module doc); 'not measured' on a CPU, where they are the same."""
  row = {'case': case,
         'examples': min(args.precision_examples, case.num_examples),
         'order': args.precision_order, 'measured': False,
         'reason': None}
  if jax.default_backend() == 'cpu':
    row['reason'] = ('not measured: a CPU computes float32 matmuls in full '
                     'precision either way (run on a GPU or TPU)')
    return row
  rng = np.random.default_rng(0)
  params, _, hessian_loss, info = _model(case)
  n = min(args.precision_examples, case.num_examples)
  train = {'image': rng.integers(0, 256, (n, *case.image_shape), np.uint8),
           'label': rng.integers(0, case.num_classes, n, dtype=np.int32)}
  data = input_pipeline.hessian_dataset(train, info, normalized=False)
  results, products = {}, {}
  for setting in ('default', 'highest'):
    op, _, dim = sd.get_hvp_fn(hessian_loss, params, data,
                               batch_size=case.hessian_batch,
                               devices=jax.local_devices()[:1],
                               matmul_precision=setting)
    v = jax.random.normal(jax.random.key(1), (dim,), jnp.float32)
    row[f'hv_{setting}_s'] = _seconds(lambda op=op, v=v: op(v), args.repeats)
    products[setting] = np.asarray(op(v), np.float64)
    results[setting] = sd.slq(op, dim, order=args.precision_order,
                              rng_key=jax.random.key(0),
                              matmul_precision=setting)
  full, fast = results['highest'], results['default']
  k = min(TOP_K, int(full.num_steps.min()), int(fast.num_steps.min()))
  top_full, top_fast = full.top_eigenvalues(k), fast.top_eigenvalues(k)
  row.update(
      measured=True, params=int(dim), top_k=k,
      hv_rel_diff=float(np.linalg.norm(products['default'] -
                                       products['highest']) /
                        np.linalg.norm(products['highest'])),
      top_rel_diff=float(np.max(np.abs(top_fast - top_full) /
                                np.abs(top_full))),
      density_l1=_density_l1(fast, full),
      lambda_max=float(top_full[0]))
  return row


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tiny', action='store_true',
                      help='small sizes, seconds on a CPU (CI)')
  parser.add_argument('--only', choices=('cifar', 'imagenet'), default=None)
  parser.add_argument('--num_examples', type=int, default=None,
                      help='override the examples of every case')
  parser.add_argument('--train_steps', type=int, default=None)
  parser.add_argument('--repeats', type=int, default=None)
  parser.add_argument('--slq_budget_s', type=float, default=None,
                      help='seconds an SLQ draw may run before extrapolation')
  parser.add_argument('--slq_segment', type=int, default=ORDER // 30,
                      help='Lanczos steps between two time marks')
  parser.add_argument('--resident', choices=('auto', 'on', 'off'),
                      default='auto', help='measure the resident operator '
                      '(auto: not for ResNets on CPU)')
  parser.add_argument('--skip_training', action='store_true')
  parser.add_argument('--hessian_batch', type=int, default=None,
                      help='override the Hessian batch of every case')
  parser.add_argument('--draws', type=int, default=4,
                      help='vectors of the shared-pass product (1: skip it)')
  parser.add_argument('--deadline_s', type=float, default=None,
                      help='seconds the whole run may take, shared equally '
                      'between the cases (default 450; none for --tiny)')
  parser.add_argument('--flops_only', action='store_true',
                      help='print only the FLOP counts (shapes, no data; '
                      'about a minute on any machine)')
  parser.add_argument('--precision_examples', type=int, default=2048,
                      help='Hessian examples of the matmul-precision row')
  parser.add_argument('--precision_order', type=int, default=30,
                      help='Lanczos order of the matmul-precision row')
  parser.add_argument('--precision_only', action='store_true',
                      help='only the matmul-precision row (ResNet-32 case; '
                      'accelerator_run.sh runs it as a stage of its own)')
  parser.add_argument('--host_normalized', action='store_true',
                      help='a float32 Hessian set normalised on the host '
                      '(the default: uint8, normalised on the device)')
  args = parser.parse_args(argv)
  defaults = ({'train_steps': 2, 'repeats': 1, 'slq_budget_s': 0.0}
              if args.tiny else
              {'train_steps': 200, 'repeats': 2, 'slq_budget_s': 60.0,
               'deadline_s': 450.0})
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.deadline_s is not None and args.deadline_s <= 0:
    parser.error(f'--deadline_s must be positive, got {args.deadline_s}')
  if args.draws < 1:
    parser.error(f'--draws must be at least 1, got {args.draws}')
  return args


def main(argv=None):
  args = parse_args(argv)
  selected = cases(args.tiny)
  if args.only:
    selected = [c for c in selected
                if (c.normalization == 'cifar10') == (args.only == 'cifar')]
  if args.num_examples:
    selected = [dataclasses.replace(c, num_examples=args.num_examples)
                for c in selected]
  if args.hessian_batch:
    selected = [dataclasses.replace(c, hessian_batch=args.hessian_batch)
                for c in selected]
  if args.flops_only:
    rows = [flop_row(case, args) for case in selected]
    accelerator_report.print_flops(rows)
    return rows
  if args.precision_only:
    rows = [precision_row(case, args) for case in selected
            if case.normalization == 'cifar10']
    accelerator_report.print_precision(rows)
    return rows
  run = Clock(args.deadline_s)
  rows = []
  for i, case in enumerate(selected):
    # Each case gets an equal share of what is left.
    rows.append(measure(case, args, Clock(run.left() / (len(selected) - i)
                                          if args.deadline_s is not None
                                          else None)))
    print(f"{case.title}: measured in {rows[-1]['seconds']:.0f} s",
          file=sys.stderr, flush=True)
  accelerator_report.print_tables(rows)
  if args.tiny:  # the row's code path (on a CPU it says "not measured")
    rows[0]['precision'] = precision_row(selected[0], args)
    accelerator_report.print_precision([rows[0]['precision']])
  if run.left() < 0:
    print(f'The run took {-run.left():.0f} s more than --deadline_s '
          f'{args.deadline_s:.0f} s: the compulsory measurements alone did '
          'not fit.', file=sys.stderr)
  return rows


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('accelerator', main)
