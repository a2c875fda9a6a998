"""Tests of experiments/main.py and experiments/compare.py: the commands."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import main

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(*args):
  """Runs `python -m ARGS` in the repository (8 CPU devices, as conftest)."""
  result = subprocess.run([sys.executable, '-m', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_main_job_on_a_tiny_override_writes_every_file(tmp_path):
  workdir = tmp_path / 'mlp'
  result = run('experiments.main', '--config=configs/mlp_fashion_mnist.py',
               f'--workdir={workdir}', '--config.num_steps=40',
               '--config.optimizer.lr_drop_steps=(30,)',
               '--config.eval_every_steps=20', '--config.log_every_steps=10',
               '--config.checkpoint_every_steps=20',
               '--config.hessian.snapshot_steps=(0,10,40)',
               '--config.hessian.num_examples=200',
               '--config.hessian.batch_size=100',
               '--config.hessian.order=30', '--config.hessian.num_draws=1',
               '--config.dataset.image_size=10')
  assert '| step | loss | λ_max |' in result.stdout
  files = {str(p.relative_to(workdir)) for p in workdir.rglob('*')
           if p.is_file() and 'checkpoints' not in p.parts}
  assert files == {
      'config.json', 'summary.md', 'train_metrics.jsonl', 'eval_metrics.jsonl',
      'spectra/metrics.jsonl', 'spectra/step_0000000.npz',
      'spectra/step_0000010.npz', 'spectra/step_0000040.npz',
      'spectra/step_0000040_exact.npy',
      'plots/density_step_0000000.png', 'plots/density_step_0000010.png',
      'plots/density_step_0000040.png', 'plots/densities.png',
      'plots/curvature.png', 'plots/exact_vs_slq.png', 'plots/training.png'}
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '40']
  lines = (workdir / 'spectra' / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r['step'] for r in records] == [0, 10, 40]
  # 10x10 inputs: 100 * 20 + 20 + 20 * 10 + 10 parameters.
  assert {r['num_params'] for r in records} == {2230}
  last = records[-1]
  assert abs(last['lambda_max'] - last['exact_lambda_max']) < (
      1e-4 * last['exact_lambda_max'])
  assert 0 <= last['gradient_concentration'] <= 1
  assert (workdir / 'plots' / 'exact_vs_slq.png').stat().st_size > 10_000


def test_unknown_override_stops_the_command_with_the_key_named(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.main',
       '--config=configs/mlp_fashion_mnist.py', f'--workdir={tmp_path}',
       '--config.hessian.ordr=30'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'ordr' in result.stderr and 'order' in result.stderr
  assert not (tmp_path / 'spectra').exists()


def test_compare_puts_runs_on_common_figures(tmp_path):
  workdirs = []
  for lr in ('0.1', '0.02'):
    workdirs.append(str(tmp_path / f'lr{lr}'))
    run('experiments.main', '--config=configs/mlp_fashion_mnist.py:smoke',
        f'--workdir={workdirs[-1]}', '--config.dataset.image_size=10',
        f'--config.optimizer.learning_rate={lr}', '--config.write_plots=False')
  out = tmp_path / 'compare'
  result = run('experiments.compare', f'--workdirs={",".join(workdirs)}',
               '--labels=fast,slow', f'--out={out}')
  assert sorted(os.listdir(out)) == ['comparison.md', 'spectra.png',
                                     'training_loss.png']
  rows = [line for line in result.stdout.splitlines()
          if line.startswith('| fast') or line.startswith('| slow')]
  assert len(rows) == 2 and all('| 20 |' in row for row in rows)


@pytest.mark.parametrize('environ, expected', [
    ({}, False),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'host0'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'host0,host1'}, True),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '4'}, True),
])
def test_several_processes_reads_the_launcher_environment(environ, expected):
  assert main.several_processes(environ) is expected
