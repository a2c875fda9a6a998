"""Smoke runs of the ResNet configs through experiments/train.py: every norm
variant trains and yields a finite spectrum (8 CPU devices).

The default config runs its own ResNet-32, which compiles for over a minute on
two cores. The no-BN and population-BN configs run with `model.name`
'resnet8', the same family (`experiments.resnets`) with one unit per stage:
what they add is their normalisation's path through training and the probe,
which is the same code at either depth (a second and third ResNet-32 took
120 s and 80 s more of CI). The ResNet-32 parameter count of every norm is
checked in tests/test_models.py."""

import importlib
import math

import jax
import numpy as np
import pytest

import spectral_density as sd
from experiments import train
from experiments import workdir

METRICS = ('loss', 'lambda_max', 'lambda_min', 'lambda_ratio', 'trace',
           'negative_mass', 'gradient_concentration', 'gradient_norm')


def smoke_config(name, model=None):
  """The config file's smoke variant, smaller still: 16x16 crops, 3 steps,
  a Hessian set of 32 images in 2 batches of 16 (the training batch); the
  config's own model unless `model` names another."""
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  with config.unlocked():
    if model is not None:
      config.model.name = model
    config.dataset.image_size = 16
    config.dataset.num_train = 64
    config.dataset.num_test = 32
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_steps = 3
    config.optimizer.learning_rate = 0.02
    config.optimizer.lr_drop_steps = ()
    config.log_every_steps = 1
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.model.population_num_examples = 32
    config.model.population_refresh_steps = 2
    config.hessian.snapshot_steps = (0, 3)
    config.hessian.num_examples = 32
    config.hessian.batch_size = 16
    config.hessian.order = 10
    config.write_plots = False
  return config


@pytest.mark.parametrize('name, model, num_params, num_units', [
    ('resnet32_cifar10', None, 464_154, 15),
    ('resnet32_cifar10_nobn', 'resnet8', 74_810, 3),
    ('resnet32_cifar10_popbn', 'resnet8', 75_290, 3)])
def test_resnet_smoke_run_produces_finite_spectra(name, model, num_params,
                                                 num_units, tmp_path):
  out = train.train_and_evaluate(smoke_config(name, model), str(tmp_path))
  records = out['snapshots']
  assert [r['step'] for r in records] == [0, 3]
  for record in records:
    assert record['num_params'] == num_params
    assert record['num_examples'] == 32
    assert record['hessian_weight_decay'] == 2e-4
    assert record['k'] == 10
    for metric in METRICS:
      assert math.isfinite(record[metric]), (metric, record)
    assert record['lambda_max'] > 0 and record['lambda_min'] < record[
        'lambda_max']
    assert 0 <= record['gradient_concentration'] <= 1
    saved = sd.SpectrumResult.load(workdir.snapshot_path(str(tmp_path),
                                                       record['step']))
    assert saved.lambda_max == record['lambda_max']
  assert all(math.isfinite(r['loss']) for r in out['train'])
  assert out['eval']['step'] == 3
  if name.endswith('popbn'):
    # Refreshed from the set, not the initial (mean 0, variance 1).
    stats = jax.tree_util.tree_flatten_with_path(
        out['state'].model_state['population_stats'])[0]
    variances = [v for path, v in stats if path[-1].key == 'var']
    assert len(variances) == 2 * num_units + 1  # 2 per unit, the final one
    assert all(np.all(v > 0) for v in variances)
    assert not all(np.allclose(v, 1) for v in variances)
