"""The tables of `benchmarks.accelerator`: its rows as printed, and one
snapshot at the paper's scale scaled from them."""

import sys

import jax
import numpy as np

ORDER = 90  # the paper's Lanczos order: the draw that `accelerator` times


def snapshot_cost(row: dict) -> dict:
  """One snapshot (gradient + order-ORDER draw) on the paper's Hessian set,
  scaled linearly in examples from this run, and its memory."""
  case = row['case']
  scale = case.paper_examples / row['examples']
  image_bytes = int(np.prod(case.image_shape))
  return {
      'examples': case.paper_examples,
      'seconds': scale * (row['gradient_s'] + row['slq_s']),
      'basis_gb': ORDER * row['params'] * 4 / 1e9,
      'resident_data_gb': (case.paper_examples * image_bytes *
                           (4 if row['set_form'].startswith('float32') else 1)
                           / 1e9),
      'host_uint8_gb': case.paper_examples * image_bytes / 1e9,
  }


def _gb(value):
  return '-' if value is None else f'{value / 1e9:.2f}'


def _f(value, fmt):
  """value formatted, '-' where not measured."""
  return '-' if value is None else format(value, fmt)


def print_tables(rows, file=sys.stdout):
  device = jax.local_devices()[0]
  print(f'Device: {device.device_kind} ({jax.default_backend()}), '
        f'{jax.local_device_count()} local, using 1; float32; Hessian set '
        f"{rows[0]['set_form'] if rows else ''}", file=file)
  header = ('model', 'params', 'H batch', 'train steps/s (batch)', 'epoch s', 'gradient s',
            'Hv resident s', 'Hv streamed s', 'input s/Hv', 'stream rel diff',
            f'SLQ order {ORDER} s', 'Hv/grad', f'SLQ/({ORDER} x epoch)',
            f"Hv per draw, {rows[0]['draws'] if rows else ''} draws s",
            'per draw / one draw', 'block rel diff',
            f'SLQ per draw/({ORDER} x epoch) (derived)',
            'peak GB', 'Hv program GB')
  print(' | '.join(header), file=file)
  for r in rows:
    cells = (r['case'].title, f"{r['params']:,}", str(r['case'].hessian_batch),
             f"{_f(r['train_steps_per_s'], '.2f')} ({r['train_batch']})",
             _f(r['epoch_s'], '.2f'), f"{r['gradient_s']:.3f}",
             _f(r['hv_resident_s'], '.3f'), f"{r['hv_streamed_s']:.3f}",
             f"{r['input_s']:.3f}", _f(r['stream_rel_diff'], '.1e'),
             f"{r['slq_s']:.1f} ({r['slq_label']})",
             f"{r['hv_over_gradient']:.2f}", _f(r['slq_over_epochs'], '.2f'),
             ('skipped (deadline)' if r['block_skipped'] else
              _f(None if r['hv_block_s'] is None else
                 r['hv_block_s'] / r['draws'], '.3f')),
             _f(r['block_per_draw_over_hv'], '.2f'),
             _f(r['block_rel_diff'], '.1e'),
             _f(r['slq_per_draw_over_epochs'], '.2f'),
             _gb(r['peak_bytes']), _gb(r['hv_program_bytes']))
    print(' | '.join(cells), file=file)
  print_flops(rows, file)
  print(f'\nOne snapshot (gradient + one order-{ORDER} draw), scaled linearly '
        'in examples from the rows above:', file=file)
  print('model | Hessian examples | time s | basis GB (float32) | '
        f"resident data GB ({rows[0]['set_form'].split(',')[0] if rows else ''})"
        ' | host uint8 GB (streamed)', file=file)
  for r in rows:
    c = snapshot_cost(r)
    print(f"{r['case'].title} | {c['examples']:,} | {c['seconds']:.0f} | "
          f"{c['basis_gb']:.2f} | {c['resident_data_gb']:.1f} | "
          f"{c['host_uint8_gb']:.1f}", file=file)


def print_flops(rows, file=sys.stdout):
  """XLA's FLOP counts per example and the ratios they imply."""
  draws = rows[0]['draws'] if rows else ''
  print('\nXLA FLOP count per example (HLO cost analysis; the same on every '
        'device), and the time ratios it implies if every program ran '
        'equally efficiently:', file=file)
  print(' | '.join((
      'model', 'train step GFLOP', 'gradient GFLOP', 'Hv GFLOP',
      'Hv/grad', f'Hv/train step = SLQ/({ORDER} x epoch)',
      f'Hv per draw, {draws} draws / grad',
      f'SLQ per draw/({ORDER} x epoch)')), file=file)
  for r in rows:
    f = r['flops']
    per_draw = f['hv_per_draw']
    print(' | '.join((
        r['case'].title, f"{f['train_step'] / 1e9:.4g}",
        f"{f['gradient'] / 1e9:.4g}", f"{f['hv'] / 1e9:.4g}",
        f"{f['hv'] / f['gradient']:.3f}",
        f"{f['hv'] / f['train_step']:.3f}",
        _f(None if per_draw is None else per_draw / f['gradient'], '.3f'),
        _f(None if per_draw is None else per_draw / f['train_step'], '.3f'))),
          file=file)


def print_precision(rows, file=sys.stdout):
  """The matmul-precision rows (`accelerator.precision_row`)."""
  print('\nMatmul precision: JAX\'s default (bfloat16 pass on TPU, TF32 on '
        "NVIDIA GPUs) against full float32 (matmul_precision='highest', the "
        'library default), same snapshot and start vector:', file=file)
  print(' | '.join(('model', 'Hessian examples', 'order', 'Hv default s',
                    'Hv highest s', 'Hv rel diff', 'top-10 Ritz max rel diff',
                    'density L1')), file=file)
  for r in rows:
    head = (r['case'].title, f"{r['examples']:,}", str(r['order']))
    if not r['measured']:
      print(' | '.join(head + (r['reason'],)), file=file)
      continue
    print(' | '.join(head + (
        f"{r['hv_default_s']:.3f}", f"{r['hv_highest_s']:.3f}",
        f"{r['hv_rel_diff']:.1e}", f"{r['top_rel_diff']:.1e}",
        f"{r['density_l1']:.3f}")), file=file)
