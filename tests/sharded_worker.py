"""One process of a multi-process sharded run (started by test_sharded.py).

  python tests/sharded_worker.py PORT NUM_PROCESSES PROCESS_ID OUT_DIR DEVICES

Each process has DEVICES CPU devices. Together they run `sharded_lanczos` on
the MLP of `problem` with its parameters fully sharded over a (data 2, fsdp 4)
mesh whose fsdp axis spans both processes, checkpointing every 4 steps. The
first run is killed right after its first save (an exception out of the save);
the rerun resumes from it. Process 0 writes OUT_DIR/tridiag.npy and
OUT_DIR/resumed_from.npy.
"""

import sys

import numpy as np

ORDER, EVERY, BATCH = 12, 4, 8


def problem():
  """A float64 tanh MLP 6-8-4 with a squared loss, and 64 examples."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = {'w1': rng.normal(size=(6, 8)) / 2, 'b1': rng.normal(size=8) / 4,
            'w2': rng.normal(size=(8, 4)) / 3}
  data = {'x': rng.normal(size=(64, 6)), 'y': rng.normal(size=(64, 4))}
  def loss(p, b):
    out = jnp.tanh(b['x'] @ p['w1'] + p['b1']) @ p['w2']
    return jnp.mean((out - b['y']) ** 2)
  return loss, jax.tree.map(np.asarray, params), data


def mesh_across_processes():
  """(data 2, fsdp 4): each fsdp row holds two devices of each process."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  count = jax.process_count()
  grid = np.asarray(devices, object).reshape(count, 2, -1)
  return jax.sharding.Mesh(grid.transpose(1, 0, 2).reshape(2, -1),
                           ('data', 'fsdp'))


class Killed(Exception):
  pass


def interrupted_then_resumed(directory):
  """``(result, first_save_step)``: a run killed after its first save, then
  rerun with the same settings."""
  import jax  # pylint: disable=g-import-not-at-top
  from spectral_density import mesh_layout  # pylint: disable=g-import-not-at-top
  from spectral_density import sharded  # pylint: disable=g-import-not-at-top
  from spectral_density import tree_checkpoint  # pylint: disable=g-import-not-at-top
  loss, params, data = problem()
  mesh = mesh_across_processes()
  placed = mesh_layout.place(params, mesh_layout.fsdp_shardings(params, mesh))
  op = sharded.sharded_hvp_fn(loss, placed, data, batch_size=BATCH)
  save = tree_checkpoint.TreeCheckpoints.save
  def save_then_die(self, step, states):
    save(self, step, states)
    raise Killed(step)
  tree_checkpoint.TreeCheckpoints.save = save_then_die
  try:
    sharded.sharded_lanczos(op, ORDER, jax.random.key(3), num_draws=2,
                            checkpoint_dir=directory, checkpoint_every=EVERY)
  except Killed as e:
    first = e.args[0]
  else:
    raise AssertionError('the first run was not interrupted')
  finally:
    tree_checkpoint.TreeCheckpoints.save = save
  result = sharded.sharded_lanczos(
      op, ORDER, jax.random.key(3), num_draws=2, checkpoint_dir=directory,
      checkpoint_every=EVERY)
  return result, first, placed


def main(port, num_processes, process_id, out_dir):
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_enable_x64', True)
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=num_processes,
                             process_id=process_id)
  result, first, placed = interrupted_then_resumed(f'{out_dir}/ckpt')
  # The parameters are split across the processes: this one holds only its
  # devices' slices of w1, half of its rows.
  w1 = placed['w1']
  local = {tuple((s.start, s.stop) for s in shard.index)
           for shard in w1.addressable_shards}
  assert len(local) == 2, local
  if jax.process_index() == 0:
    np.save(f'{out_dir}/tridiag.npy', result.tridiag)
    np.save(f'{out_dir}/resumed_from.npy', np.asarray([first,
                                                       result.resumed_from]))
  jax.distributed.shutdown()


if __name__ == '__main__':
  import os  # pylint: disable=g-import-not-at-top
  os.environ['XLA_FLAGS'] = (
      f'--xla_force_host_platform_device_count={sys.argv[5]}')
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
