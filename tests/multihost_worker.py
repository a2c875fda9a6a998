"""One process of a multi-process run (started by test_multihost.py).

  python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID OUT_DIR DEVICES \
      DATA BASIS

Each process has DEVICES CPU devices; together they run the same Lanczos run as one
process would, on the batch-norm conv net of toy_problems, with checkpoints.
DATA: 'arrays' (every process passes the whole data set as arrays and reads
its own shard), 'stream' (each process streams its own contiguous share of
the batches of 10) or 'stream-first' (process 0 streams them all, the others
none). BASIS: the `lanczos_draws` basis.
Process 0 writes the tridiagonal to OUT_DIR/tridiag.npy.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (
    f'--xla_force_host_platform_device_count={sys.argv[5]}')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_enable_x64', True)


def stream_share(data, all_on_first=False, batch_size=10):
  """This process's contiguous share of the batches of `batch_size`."""
  import toy_problems as tp  # pylint: disable=g-import-not-at-top
  batches = tp.batches_of(data, batch_size)
  p, count = jax.process_index(), jax.process_count()
  if all_on_first:
    return batches if p == 0 else []
  return batches[len(batches) * p // count:len(batches) * (p + 1) // count]


def main(port, num_processes, process_id, out_dir, data_mode, basis):
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=num_processes,
                             process_id=process_id)
  import spectral_density as sd  # pylint: disable=g-import-not-at-top
  import toy_problems as tp  # pylint: disable=g-import-not-at-top
  loss, params, data = tp.conv_bn_problem(53)
  if data_mode.startswith('stream'):
    hvp_fn, _, n = sd.get_hvp_fn(
        loss, params, stream_share(data, data_mode == 'stream-first'))
  else:
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10)
  result = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0), num_draws=2,
                            precision='float64',
                            basis=basis,
                            checkpoint_dir=os.path.join(out_dir, 'ckpt'),
                            checkpoint_every=5)
  grad = np.asarray(hvp_fn.gradient())
  assert hvp_fn.num_examples == 53, hvp_fn.num_examples
  if jax.process_index() == 0:
    np.save(os.path.join(out_dir, 'tridiag.npy'), result.tridiag)
    np.save(os.path.join(out_dir, 'grad.npy'), grad)
  jax.distributed.shutdown()


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
       sys.argv[6], sys.argv[7])
