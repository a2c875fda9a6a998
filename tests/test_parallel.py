"""The multi-device mechanics alone: split vectors, collectives, runners and
the saved-state layout, against numpy on the 8 host CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from spectral_density import parallel
from spectral_density import recurrence
from spectral_density import state_layout


def _on_devices(fn, num_devices, *args, in_specs=None):
  """`fn` under `shard_map` over the first `num_devices` devices; every
  argument whole on every device, the output stacked ``[D, ...]``."""
  devices = jax.devices()[:num_devices]
  body = lambda *a: jax.tree.map(lambda x: x[None], fn(*a))
  return np.asarray(jax.jit(jax.shard_map(
      body, mesh=parallel.mesh(devices),
      in_specs=in_specs or PartitionSpec(),
      out_specs=PartitionSpec(parallel.AXIS), check_vma=False))(*args))


@pytest.mark.parametrize('dim,num_devices', [(17, 8), (24, 8), (5, 3)])
def test_slices_gather_and_scatter_sum(dim, num_devices):
  x = np.arange(dim, dtype=np.float32) + 1
  size = parallel.slice_size(dim, num_devices)
  assert size == -(-dim // num_devices)
  slices = _on_devices(lambda v: parallel.local_slice(v, num_devices),
                       num_devices, x)
  padded = np.pad(x, (0, size * num_devices - dim))
  np.testing.assert_array_equal(slices, padded.reshape(num_devices, size))
  whole = _on_devices(
      lambda v: parallel.gather(parallel.local_slice(v, num_devices), dim),
      num_devices, x)
  np.testing.assert_array_equal(whole, np.broadcast_to(x, (num_devices, dim)))
  # Every device adds its own vector (x times its index + 1); each keeps its
  # slice of the sum.
  scattered = _on_devices(
      lambda v: parallel.scatter_sum(
          v * (jax.lax.axis_index(parallel.AXIS) + 1), num_devices),
      num_devices, x)
  total = padded * num_devices * (num_devices + 1) / 2
  np.testing.assert_allclose(scattered, total.reshape(num_devices, size))
  dots = _on_devices(lambda v: parallel.psum(
      jnp.vdot(parallel.local_slice(v, num_devices),
               parallel.local_slice(v, num_devices))), num_devices, x)
  np.testing.assert_allclose(dots, np.full(num_devices, x @ x), rtol=1e-6)


def test_replicate_and_sharding_lay_arrays_out():
  devices = jax.devices()
  tree = {'a': np.ones(3), 'b': np.arange(4.0)}
  out = parallel.replicate(tree, devices)
  for name, x in out.items():
    assert x.sharding.is_fully_replicated
    assert len(x.sharding.device_set) == len(devices)
    np.testing.assert_array_equal(x, tree[name])
  split = jax.device_put(np.arange(16.0).reshape(8, 2),
                         parallel.sharding(devices))
  assert [s.data.shape for s in split.addressable_shards] == [(1, 2)] * 8


def test_on_blocks_strips_and_restores_the_device_axis():
  fn = parallel.on_blocks(lambda a, b: a * 2 + b, 1)
  out = fn(jnp.ones((1, 3)), jnp.arange(3.0))
  np.testing.assert_array_equal(out, [[2.0, 3.0, 4.0]])


def test_data_parallel_runner_sums_weighted_batches_over_devices():
  """Batches dealt over 4 devices, weights 1/4 each, plus a remainder."""
  devices = tuple(jax.devices()[:4])
  rng = np.random.default_rng(0)
  data = rng.normal(size=(4, 2, 3))  # [devices, batches per device, 3]
  weights = np.full((4, 2), 0.1)
  rem_batch, rem_weight = rng.normal(size=3), 0.2
  batch_fn = lambda params, batch, v: params * batch * v
  program = lambda reduce, v: reduce(v)
  out = parallel.data_parallel_runner(devices)(
      program, batch_fn, jnp.float32, 2.0, data, weights, rem_batch,
      rem_weight, (jnp.ones(3),))
  expected = 2.0 * (0.1 * data.sum(axis=(0, 1)) + rem_weight * rem_batch)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # `lower` compiles the same program for XLA's memory analysis (the
  # benchmarks' use), on several devices as on one.
  for devs in (devices, devices[:1]):
    compiled = parallel.data_parallel_runner(devs).lower(
        program, batch_fn, jnp.float32, 2.0, data[:len(devs)],
        weights[:len(devs)], rem_batch, rem_weight, (jnp.ones(3),)).compile()
    mem = compiled.memory_analysis()
    mem = mem[0] if isinstance(mem, (list, tuple)) else mem
    # A device's arguments hold at least its own batches (float32).
    assert mem.argument_size_in_bytes >= data[0].size * 4


def test_function_runner_splits_a_plain_product():
  devices = tuple(jax.devices())
  mat = jnp.asarray(np.random.default_rng(1).normal(size=(11, 11)))
  vs = np.random.default_rng(2).normal(size=(2, 11)).astype(np.float32)
  program = lambda reduce, v_local: reduce(v_local)
  local = jax.device_put(
      state_layout.split_states(_state_with_v(vs), 8).v,
      parallel.sharding(devices))
  out = parallel.function_runner(devices)(
      program, 11, jax.tree_util.Partial(lambda v: mat @ v), (local,), ())
  np.testing.assert_allclose(state_layout.join_slices(np.asarray(out), 11),
                             vs @ np.asarray(mat).T, rtol=1e-5)


def _state_with_v(vs):
  """A `recurrence.State` whose vector fields hold `vs` ``[k, dim]``."""
  k, dim = vs.shape
  zeros = np.zeros(k)
  return recurrence.State(
      basis=np.stack([vs, vs], axis=1), alphas=np.zeros((k, 2)),
      betas=np.zeros((k, 2)), v_prev=vs, v=vs, beta_prev=zeros,
      norm_est=zeros, num_steps=zeros, done=zeros.astype(bool),
      bad_step=zeros, mask=np.ones((k, dim)))


@pytest.mark.parametrize('num_shards', [3, 8])
def test_split_and_whole_states_round_trip(num_shards):
  vs = np.random.default_rng(3).normal(size=(2, 13))
  state = _state_with_v(vs)
  split = state_layout.split_states(state, num_shards)
  size = parallel.slice_size(13, num_shards)
  assert split.v.shape == (num_shards, 2, size)
  assert split.basis.shape == (num_shards, 2, 2, size)
  assert split.alphas.shape == (num_shards, 2, 2)
  back = state_layout.whole_states(split, num_shards, 13)
  for a, b in zip(back, state):
    np.testing.assert_array_equal(a, b)


def test_process_sum_of_one_process_is_the_identity():
  device, total = parallel.process_sum()
  assert device == jax.devices()[0]
  out = total({'x': np.arange(3.0), 'n': np.asarray(5.0)})
  np.testing.assert_array_equal(out['x'], np.arange(3.0))
  assert float(out['n']) == 5.0
