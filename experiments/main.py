"""Runs one experiment: `python -m experiments.main --config=configs/X.py
--workdir=DIR [--config.field=value ...]`.

The same command runs on every host of a multi-host (TPU pod) job: with
several processes, `jax.distributed.initialize()` connects them first. Its
arguments come from the runtime (Cloud TPU, SLURM, ...), or from
JAX_COORDINATOR_ADDRESS (host:port of process 0) with --num_processes and
--process_id. Only process 0 writes logs, spectra and plots; checkpoints are
written by orbax's own multi-host protocol.
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of checkpoints, '
                               'logs, spectra and plots.', required=True)
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/mlp_fashion_mnist.py '
    '(append :smoke for a tiny CPU run).', lock_config=True)
_MULTIHOST = flags.DEFINE_bool(
    'multihost', None, 'Call jax.distributed.initialize() before anything '
    'else. Default: when the environment names several processes.')

_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With JAX_COORDINATOR_ADDRESS: processes in all.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With JAX_COORDINATOR_ADDRESS: this process, from 0.')


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's per-checkpoint INFO lines (a dozen per save)."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def several_processes(environ=os.environ):
  """Whether the environment describes a job of more than one process."""
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return True
  if environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return True
  return int(environ.get('SLURM_NTASKS', '1') or 1) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  multihost = _MULTIHOST.value
  if multihost is None:
    multihost = several_processes()
  if multihost:
    jax.distributed.initialize(num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  logging.info('JAX process %d of %d; %d local devices of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  if jax.process_index() == 0:
    logging.info('Config:\n%s', _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
