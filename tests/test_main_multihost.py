"""The main command on two processes (jax.distributed on 127.0.0.1, gloo
collectives on CPU) ends as one process with as many devices does."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
OVERRIDES = ('--config=configs/mlp_fashion_mnist.py:smoke',
             '--config.dataset.image_size=8', '--config.hessian.batch_size=50',
             '--config.write_plots=False')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items()
         if k != 'XLA_FLAGS' and not k.startswith('JAX_')}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_CPU_COLLECTIVES_IMPLEMENTATION'] = 'gloo'
  if 'JAX_DISABLE_MOST_OPTIMIZATIONS' in os.environ:  # tests/conftest.py
    env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = os.environ[
        'JAX_DISABLE_MOST_OPTIMIZATIONS']
  env.update(extra)
  return env


def _final_state(workdir):
  manager = ocp.CheckpointManager(os.path.abspath(workdir / 'checkpoints'))
  step = manager.latest_step()
  state = manager.restore(step)
  manager.close()
  return step, state


def _snapshots(workdir):
  lines = (workdir / 'spectra' / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


@pytest.mark.parametrize('hessian_set', [
    ('--config.hessian.stream=False', '--config.hessian.basis=sharded'),
    ('--config.hessian.stream=True',)], ids=['resident-sharded', 'streamed'])
def test_two_processes_end_as_one_process_with_two_devices(tmp_path,
                                                           hessian_set):
  """Resident: every process holds the set and reads its own shard, the basis
  split over the devices of both; streamed: each streams its share."""
  overrides = OVERRIDES + hessian_set
  one = tmp_path / 'one'
  subprocess.run([sys.executable, '-m', 'experiments.main', *overrides,
                  f'--workdir={one}'], cwd=REPO, env=_env(2), check=True,
                 capture_output=True, timeout=300)

  two = tmp_path / 'two'
  env = _env(1, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{_free_port()}')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.main', *overrides,
       f'--workdir={two}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'JAX process 1 of 2' in outputs[1]
  # Only process 0 wrote the summary.
  assert '# Summary' in outputs[0] and '# Summary' not in outputs[1]

  step_one, state_one = _final_state(one)
  step_two, state_two = _final_state(two)
  assert step_one == step_two == 20
  flat_one = np.concatenate([np.ravel(x) for x in
                             _leaves(state_one['params'])])
  flat_two = np.concatenate([np.ravel(x) for x in
                             _leaves(state_two['params'])])
  np.testing.assert_allclose(flat_two, flat_one, rtol=1e-6, atol=1e-7)
  snaps_one, snaps_two = _snapshots(one), _snapshots(two)
  assert [r['step'] for r in snaps_two] == [0, 20]
  for a, b in zip(snaps_one, snaps_two):
    for name in ('lambda_max', 'lambda_min', 'trace', 'loss',
                 'gradient_concentration'):
      np.testing.assert_allclose(b[name], a[name], rtol=1e-4, err_msg=name)


def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
  return [np.asarray(tree)]
