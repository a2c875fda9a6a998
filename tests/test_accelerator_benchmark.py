"""The accelerator benchmark's --tiny mode, run as CI runs it (CPU, < 60 s)."""

import io

from benchmarks import accelerator

ORDER = accelerator.ORDER


def test_accelerator_benchmark_tiny_runs_and_its_numbers_hold_together():
  rows = accelerator.main(['--tiny'])
  assert len(rows) == 1
  row = rows[0]
  # The tiny stand-in: a 3072-20-10 MLP, parameters in closed form.
  assert row['params'] == 3072 * 20 + 20 + 20 * 10 + 10
  # The streamed product (prepared Hessian set, batches from the host) is
  # the resident one (data on the device).
  assert row['stream_rel_diff'] < 1e-5
  assert row['epoch_s'] == (row['examples'] / row['train_batch'] /
                            row['train_steps_per_s'])
  assert row['hv_over_gradient'] == row['hv_resident_s'] / row['gradient_s']
  assert row['slq_over_epochs'] == row['slq_s'] / (ORDER * row['epoch_s'])
  # Four draws in one product: row 0 of the block is the one-vector product,
  # and the per-draw ratios follow from the times.
  assert row['draws'] == 4 and row['block_rel_diff'] < 1e-5
  assert row['block_per_draw_over_hv'] == (
      row['hv_block_s'] / 4 / row['hv_resident_s'])
  assert row['slq_per_draw_over_epochs'] == (
      row['slq_over_epochs'] * row['block_per_draw_over_hv'])
  # The budget of --tiny is 0 s: the draw is stopped and extrapolated.
  assert row['slq_label'].startswith('extrapolated from steps')
  cost = accelerator.snapshot_cost(row)
  assert cost['basis_gb'] == ORDER * row['params'] * 4 / 1e9
  assert cost['host_uint8_gb'] == 50_000 * 32 * 32 * 3 / 1e9
  assert cost['seconds'] == (50_000 / row['examples'] *
                             (row['gradient_s'] + row['slq_s']))
  out = io.StringIO()
  accelerator.print_tables(rows, out)
  assert 'tiny stand-in for ResNet-32' in out.getvalue()
  assert 'extrapolated' in out.getvalue()
