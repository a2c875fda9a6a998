"""Several processes (jax.distributed on 127.0.0.1) give one process's result.

Each case starts local processes running `multihost_worker.py`; their pmapped
products `psum` over the devices of all processes (gloo collectives on CPU).
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp

WORKER = pathlib.Path(__file__).with_name('multihost_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_processes(num_processes, devices_each, out_dir, feed, basis):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), str(port), str(num_processes), str(i),
       str(out_dir), str(devices_each), feed, basis],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


@pytest.fixture(scope='module')
def one_process():
  with jax.enable_x64(True):
    loss, params, data = tp.conv_bn_problem(53)
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=10)
    result = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0), num_draws=2,
                              precision='float64')
    return result.tridiag, np.asarray(hvp_fn.gradient())


# Each feed and basis once, and four processes once: a case costs 35 to 90 s
# of CI (processes compiling at once on two cores), so the cases cover the
# combinations rather than multiply them. (4, 1, 'arrays', 'device') and
# (2, 2, 'stream', 'host') were dropped as covered by the cases beside them.
@pytest.mark.parametrize('num_processes,devices_each,feed,basis', [
    (2, 2, 'arrays', 'device'), (2, 2, 'arrays', 'sharded'),
    (4, 1, 'stream', 'host'),
    # Process 1 has no batches: it adds zeros and still joins every psum.
    (2, 2, 'stream-first', 'host'),
    # All 8 devices, as this process has: it resumes from the slices.
    (2, 4, 'stream', 'sharded')])
def test_processes_give_the_one_process_tridiagonal(
    one_process, tmp_path, num_processes, devices_each, feed, basis):
  _run_processes(num_processes, devices_each, tmp_path, feed, basis)
  tridiag, grad = one_process
  np.testing.assert_allclose(np.load(tmp_path / 'tridiag.npy'), tridiag,
                             rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(np.load(tmp_path / 'grad.npy'), grad, rtol=1e-9,
                             atol=1e-13)
  # The checkpoint the processes wrote is the one a single process resumes
  # from: it holds the finished run, so no Lanczos step runs again (no
  # progress report) and the tridiagonal is the saved one. A sharded basis
  # was saved in slices by each process; one process with as many devices
  # reads them all back. The same directory refuses another computation
  # (here a loss that always returns NaN): its probe product differs.
  with jax.enable_x64(True):
    loss, params, data = tp.conv_bn_problem(53)
    def operator(loss):  # (num_params, hvp_fn)
      if feed.startswith('stream'):
        hvp_fn, _, n = sd.get_hvp_fn(loss, params, tp.batches_of(data, 10))
      else:
        hvp_fn, _, n = sd.get_hvp_fn(
            loss, params, data, batch_size=10,
            devices=jax.devices()[:num_processes * devices_each])
      return n, hvp_fn
    kwargs = dict(num_draws=2, precision='float64', basis=basis,
                  checkpoint_dir=tmp_path / 'ckpt', checkpoint_every=5)
    (n, hvp_fn), reports = operator(loss), []
    resumed = sd.lanczos_draws(hvp_fn, n, 12, jax.random.key(0),
                               progress=reports.append, **kwargs)
    assert not reports
    np.testing.assert_allclose(resumed.tridiag, tridiag, rtol=1e-5,
                               atol=1e-9)
    n, nan_fn = operator(lambda p, b: loss(p, b) * np.nan)
    with pytest.raises(ValueError, match='another computation: its operator '
                       'gives another product of the probe vector'):
      sd.lanczos_draws(nan_fn, n, 12, jax.random.key(0), **kwargs)
