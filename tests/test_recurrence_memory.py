"""The Lanczos loop holds its basis once, in the flat and the sharded paths.

XLA's memory analysis of the compiled whole-run programs (compiled as users
compile them: all optimisations), per device: arguments, outputs and
temporaries, against the basis's bytes on that device. Before the step
recorded each vector at its end, the sharded loop held about 2.7 copies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from spectral_density import execution
from spectral_density import mesh_layout
from spectral_density import recurrence
from spectral_density import sharded

ORDER = 90


def _bytes(compiled):
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes +
          m.temp_size_in_bytes - m.alias_size_in_bytes)


@pytest.mark.optimized
@pytest.mark.parametrize('num_draws', [1, 3])
def test_the_flat_loop_holds_its_basis_once(num_draws):
  dim = 200_000
  matvec = jax.tree_util.Partial(lambda d, v: d * v,
                                 jnp.linspace(0., 1., dim))
  config = recurrence.Config(dim, ORDER, 'float32', 'float32', 'gaussian',
                             True, 2, False, 1e-6)
  keys = jax.random.split(jax.random.key(0), num_draws)
  compiled = execution.run_jit.lower(recurrence.programs(config).full,
                                     matvec, keys, None).compile()
  basis = num_draws * ORDER * dim * 4
  # the basis, and fewer than 8 vectors per draw (v, v_prev, w, the product,
  # the operator's diagonal)
  assert _bytes(compiled) <= basis + 8 * num_draws * dim * 4


@pytest.mark.optimized
@pytest.mark.parametrize('layout,num_draws', [('replicated', 1),
                                              ('fsdp8', 2)])
def test_the_sharded_loop_holds_its_basis_once(layout, num_draws):
  # H = diag of the squared examples' sum, a [256, 64] and a [64] leaf.
  rng = np.random.default_rng(0)
  params = {'w': jnp.zeros((256, 64)), 'b': jnp.zeros(64)}
  data = {'w': rng.normal(size=(8, 256, 64)).astype(np.float32),
          'b': rng.normal(size=(8, 64)).astype(np.float32)}
  loss = lambda p, x: 0.5 * (jnp.sum((x['w'] * p['w']) ** 2) +
                             jnp.sum((x['b'] * p['b']) ** 2))
  if layout == 'replicated':
    mesh = Mesh(np.asarray(jax.devices()[:8]), ('data',))
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()), params)
    batch_size = 1  # a batch per device
  else:
    mesh = Mesh(np.asarray(jax.devices()[:8]), ('fsdp',))
    shardings = mesh_layout.fsdp_shardings(params, mesh)
    batch_size = 8  # one batch, an example per device
  op = sharded.sharded_hvp_fn(loss, jax.device_put(params, shardings), data,
                              batch_size=batch_size,
                              basis_rows_over_data=False)
  split = 1 if layout == 'replicated' else 8
  n = 256 * 64 + 64
  basis = num_draws * ORDER * n * 4 / split
  compiled = sharded.lanczos_program(op, ORDER, num_draws=num_draws).compile()
  data_bytes = sum(x.addressable_shards[0].data.nbytes
                   for x in jax.tree.leaves(op.data))
  # the basis and a few vectors: 1.3 copies of the basis at most (2.7 before)
  assert _bytes(compiled) - data_bytes <= 1.3 * basis
