"""The memory benchmarks' programs, which reach into the library's internals
(the runners' `lower`, the operator's placed data) and so can break without
any user-facing test failing: `benchmarks.sharded_basis` once did. Checked
against the benchmarks' own closed forms, at sizes that compile in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
from benchmarks import basis_memory
from benchmarks import sharded_basis

DIM = 200_000


@pytest.mark.parametrize('mode', basis_memory.MODES)
def test_basis_memory_matches_its_formula(mode):
  # XLA's analysis of the Lanczos program (float64, order 90, a diagonal
  # operator) against the formula of what must live on the device: the
  # whole basis ('device'), an eighth of it plus two whole vectors
  # ('sharded'), a few vectors ('none'); 'host' keeps only the product's
  # vectors on the device, less than the formula's allowance.
  with jax.enable_x64(True):
    measured = basis_memory.measured_bytes(mode, DIM)
  formula = basis_memory.formula_bytes(mode, DIM)
  if mode == 'host':
    assert measured <= formula
  else:
    np.testing.assert_allclose(measured, formula,
                               rtol=0.1 if mode == 'sharded' else 0.02)


def test_sharded_basis_programs_hold_the_basis_where_they_say():
  # A small MLP over the 8 test devices: the program with the basis on each
  # device holds order x dim float32 entries there; split over 8, an eighth
  # of them (plus whole vectors for the product); with the basis on the
  # host, less than one basis.
  rng = np.random.default_rng(0)
  data = {'x': rng.normal(size=(64, 100)).astype(np.float32),
          'y': rng.integers(0, 10, 64).astype(np.int32)}
  params = {'w': jnp.asarray(rng.normal(size=(100, 100)) / 10, jnp.float32),
            'v': jnp.asarray(rng.normal(size=(100, 10)) / 10, jnp.float32)}

  def loss(p, batch):
    logp = jax.nn.log_softmax(jnp.tanh(batch['x'] @ p['w']) @ p['v'])
    return -jnp.mean(jnp.take_along_axis(logp, batch['y'][:, None], 1))

  op, _, dim = sd.get_hvp_fn(loss, params, data, batch_size=8)
  assert len(op.devices) == sharded_basis.NUM_DEVICES
  order = 30
  basis = order * dim * 4
  sizes = {mode: sharded_basis.program_bytes(op, mode, order)
           for mode in sharded_basis.MODES}
  assert sizes['device'] >= basis
  assert basis / 8 <= sizes['sharded'] < sizes['device'] / 3
  assert sizes['host'] < basis
