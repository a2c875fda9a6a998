"""Checks of an experiment config before any work starts: `validate`.

Unknown keys and impossible values raise a ValueError naming the field. The
enumerations come from their owners (the models, the Lanczos module).
"""

import jax
import ml_collections

from configs import default
from experiments import models
from experiments import population
from spectral_density import lanczos
from spectral_density import precision as precision_lib

# The gradient concentration needs the Ritz vectors, so a stored basis.
BASES = tuple(b for b in lanczos.BASES if b != 'none')
PRECISIONS = (None, *lanczos.PRECISIONS)
MATMUL_PRECISIONS = precision_lib.MATMUL_PRECISIONS


def _check_keys(config, reference, path=''):
  """Unknown keys (a config built by hand, or unlocked) fail by name."""
  for key in config.keys():
    if key not in reference:
      raise ValueError(
          f'config: unknown key {path + key!r}; known keys here: '
          f'{sorted(reference.keys())}.')
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict) and isinstance(
        reference[key], ml_collections.ConfigDict):
      _check_keys(value, reference[key], f'{path}{key}.')
  for key in reference.keys():
    if key not in config:
      raise ValueError(f'config: missing key {path + key!r}.')


def _positive_int(value, name, allow_none=False):
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'config.{name}: must be a positive integer, got '
                     f'{value!r}.')


def _steps(values, name, num_steps, lowest):
  steps = tuple(values)
  for s in steps:
    if isinstance(s, bool) or not isinstance(s, int):
      raise ValueError(f'config.{name}: steps must be integers, got {s!r}.')
    if not lowest <= s <= num_steps:
      raise ValueError(
          f'config.{name}: step {s} is outside [{lowest}, num_steps = '
          f'{num_steps}].')
  if list(steps) != sorted(set(steps)):
    raise ValueError(f'config.{name}: steps must be increasing and distinct, '
                     f'got {steps}.')
  return steps


def validate(config, num_devices=None):
  """Raises ValueError, naming the field, for unknown keys or impossible values.

  Args:
    config: the experiment's ConfigDict.
    num_devices: devices the global batches are split over; None: all devices
      of all processes (`jax.device_count()`).

  Returns:
    The config, unchanged.
  """
  _check_keys(config, default.get_config())
  model, hessian, opt = config.model, config.hessian, config.optimizer
  if model.name not in models.MODELS:
    raise ValueError(f'config.model.name: must be one of '
                     f'{tuple(models.MODELS)}, got {model.name!r}.')
  if model.norm not in models.NORMS:
    raise ValueError(f'config.model.norm: must be one of {models.NORMS}, got '
                     f'{model.norm!r}.')
  if model.name == 'mlp' and model.norm != 'none':
    raise ValueError(f"config.model.norm: the MLP has no normalisation, so "
                     f"norm must be 'none', got {model.norm!r}.")
  _positive_int(model.population_refresh_steps,
                'model.population_refresh_steps')
  _positive_int(model.population_num_examples, 'model.population_num_examples',
                allow_none=True)
  _positive_int(model.population_batch_size, 'model.population_batch_size')
  if model.population_mode not in population.MODES:
    raise ValueError(f'config.model.population_mode: must be one of '
                     f'{population.MODES}, got {model.population_mode!r}.')
  if not isinstance(config.dataset.name, str) or not config.dataset.name:
    raise ValueError('config.dataset.name: must be a dataset name.')
  for name in ('num_steps', 'batch_size', 'eval_every_steps', 'eval_batch_size',
               'log_every_steps', 'checkpoint_every_steps',
               'max_checkpoints_to_keep'):
    _positive_int(config[name], name)
  num_devices = num_devices or jax.device_count()
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % num_devices:
      raise ValueError(
          f'config.{name}: {config[name]} is not divisible by the '
          f'{num_devices} devices it is split over.')
  if model.norm == 'population' and model.population_batch_size % num_devices:
    raise ValueError(
        f'config.model.population_batch_size: {model.population_batch_size} '
        f'is not divisible by the {num_devices} devices it is split over.')
  _positive_int(config.stop_after_steps, 'stop_after_steps', allow_none=True)
  if (config.stop_after_steps is not None and
      config.stop_after_steps > config.num_steps):
    raise ValueError(f'config.stop_after_steps: {config.stop_after_steps} is '
                     f'beyond num_steps = {config.num_steps}.')
  if not opt.learning_rate > 0:
    raise ValueError(f'config.optimizer.learning_rate: must be > 0, got '
                     f'{opt.learning_rate!r}.')
  if not 0 <= opt.momentum < 1:
    raise ValueError(f'config.optimizer.momentum: must be in [0, 1), got '
                     f'{opt.momentum!r}.')
  if not opt.weight_decay >= 0:
    raise ValueError(f'config.optimizer.weight_decay: must be >= 0, got '
                     f'{opt.weight_decay!r}.')
  if not opt.lr_drop_factor > 0:
    raise ValueError(f'config.optimizer.lr_drop_factor: must be > 0, got '
                     f'{opt.lr_drop_factor!r}.')
  _steps(opt.lr_drop_steps, 'optimizer.lr_drop_steps', config.num_steps, 1)
  warmup = opt.warmup_steps
  if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f'config.optimizer.warmup_steps: must be an integer >= 0,'
                     f' got {opt.warmup_steps!r}.')
  snapshots = _steps(hessian.snapshot_steps, 'hessian.snapshot_steps',
                     config.num_steps, 0)
  exact_steps = _steps(hessian.exact_steps, 'hessian.exact_steps',
                       config.num_steps, 0)
  missing = sorted(set(exact_steps) - set(snapshots))
  if missing:
    raise ValueError(f'config.hessian.exact_steps: {missing} are not snapshot '
                     f'steps {snapshots}.')
  if hessian.exact and not snapshots:
    raise ValueError('config.hessian.exact: needs at least one snapshot step.')
  if hessian.bn_mode not in models.BN_MODES:
    raise ValueError(f'config.hessian.bn_mode: must be one of '
                     f'{models.BN_MODES}, got {hessian.bn_mode!r}.')
  if (model.norm == 'batch' and hessian.bn_mode == 'train' and
      hessian.batch_size != config.batch_size):
    raise ValueError(
        f'config.hessian.batch_size: {hessian.batch_size} differs from the '
        f'training batch {config.batch_size}; with norm=batch and '
        f"bn_mode='train' the Hessian must normalise over the training batch.")
  _positive_int(hessian.order, 'hessian.order')
  _positive_int(hessian.num_draws, 'hessian.num_draws')
  _positive_int(hessian.batch_size, 'hessian.batch_size')
  _positive_int(hessian.num_examples, 'hessian.num_examples', allow_none=True)
  if hessian.basis not in BASES:
    raise ValueError(f'config.hessian.basis: must be one of {BASES}, got '
                     f'{hessian.basis!r}.')
  _positive_int(hessian.lanczos_checkpoint_every,
                'hessian.lanczos_checkpoint_every', allow_none=True)
  if hessian.precision not in PRECISIONS:
    raise ValueError(f'config.hessian.precision: must be one of {PRECISIONS}, '
                     f'got {hessian.precision!r}.')
  matmul = hessian.get('matmul_precision', 'highest')
  if matmul not in MATMUL_PRECISIONS:
    raise ValueError('config.hessian.matmul_precision: must be one of '
                     f'{MATMUL_PRECISIONS}, got {matmul!r}.')
  return config
