"""The accelerator benchmark's --tiny mode, run as CI runs it (CPU, < 60 s)."""

import io

import numpy as np
import pytest

from benchmarks import accelerator
from benchmarks import accelerator_report
from benchmarks import flop_count

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
  assert row['draws'] == 4 and not row['block_skipped']
  assert row['block_rel_diff'] < 1e-5
  assert row['block_per_draw_over_hv'] == (
      row['hv_block_s'] / 4 / row['hv_resident_s'])
  assert row['slq_per_draw_over_epochs'] == (
      row['slq_over_epochs'] * row['block_per_draw_over_hv'])
  # The budget of --tiny is 0 s: the draw is stopped and extrapolated.
  assert row['slq_label'].startswith('extrapolated from steps')
  cost = accelerator_report.snapshot_cost(row)
  assert cost['basis_gb'] == ORDER * row['params'] * 4 / 1e9
  assert cost['host_uint8_gb'] == 50_000 * 32 * 32 * 3 / 1e9
  assert cost['seconds'] == (50_000 / row['examples'] *
                             (row['gradient_s'] + row['slq_s']))
  out = io.StringIO()
  accelerator_report.print_tables(rows, out)
  assert 'tiny stand-in for ResNet-32' in out.getvalue()
  assert 'extrapolated' in out.getvalue()
  # The FLOP table: H v costs more than a gradient and less than three
  # (forward-over-reverse on an MLP whose input needs no gradient), and
  # sharing the forward pass makes a draw of the block cheaper than one H v.
  flops = row['flops']
  assert 1 < flops['hv'] / flops['gradient'] < 3
  assert flops['hv_per_draw'] < flops['hv']
  assert 'XLA FLOP count per example' in out.getvalue()
  # The matmul-precision row: on a CPU both settings are one computation.
  out = io.StringIO()
  accelerator_report.print_precision([row['precision']], out)
  assert not row['precision']['measured']
  assert 'not measured' in out.getvalue()


def test_flop_counts_of_a_linear_model_are_the_closed_form():
  # Logistic regression, loss = mean(softplus(X w) - y X w) with X [B, d]:
  # its products are dots of 2 B d FLOPs each (a multiply-add counts 2).
  # The gradient is the forward X w and the backward X^T (sigmoid - y):
  # 4 B d. H v = X^T diag(sigmoid') X v / B needs the forward X w, then X v
  # and X^T (...): 6 B d (the primal X^T (sigmoid - y) is no part of the
  # tangent, and the count leaves it out). K vectors share the forward
  # pass: (2 + 4 K) B d, 4.5 B d per draw for K = 4. The elementwise work
  # is O(B + d), under 1% here.
  import jax
  import jax.numpy as jnp
  b, d = 400, 1000

  def loss(params, batch):
    z = batch['x'] @ params['w']
    return jnp.mean(jax.nn.softplus(z) - batch['y'] * z)

  batch = {'x': jnp.zeros((b, d)), 'y': jnp.zeros((b,))}
  params = {'w': jnp.zeros((d,))}
  flops = flop_count.flop_counts(loss, batch, loss, batch, params, 4)
  per_example = 2 * d  # one dot's FLOPs per example
  np.testing.assert_allclose(flops['gradient'], 2 * per_example, rtol=0.01)
  np.testing.assert_allclose(flops['train_step'], 2 * per_example, rtol=0.01)
  np.testing.assert_allclose(flops['hv'], 3 * per_example, rtol=0.01)
  np.testing.assert_allclose(flops['hv_per_draw'], 2.25 * per_example,
                             rtol=0.01)
  single = flop_count.flop_counts(loss, batch, loss, batch, params, 1)
  assert single['hv_per_draw'] is None and single['hv'] == flops['hv']


def test_a_deadline_shrinks_the_run_and_the_table_says_so():
  # A deadline already spent: the several-draw product is skipped, and the
  # SLQ draw, whose own budget would let it run all 90 steps, keeps only its
  # shortest timed form: two compiling segments and one timed.
  rows = accelerator.main(['--tiny', '--deadline_s', '0.001',
                           '--slq_budget_s', '1000'])
  row = rows[0]
  assert row['block_skipped'] and row['hv_block_s'] is None
  assert row['block_per_draw_over_hv'] is None
  assert row['slq_label'] == 'extrapolated from steps 7-9'
  out = io.StringIO()
  accelerator_report.print_tables(rows, out)
  assert 'skipped (deadline)' in out.getvalue()
  with pytest.raises(SystemExit):
    accelerator.parse_args(['--deadline_s', '0'])
