"""Shared defaults of every experiment, the smoke-run shrinking, and validation.

Every field an experiment may set exists here, so that `config.lock()` turns a
misspelt override (`--config.optimiser.lr=...`) into an error, and `validate`
rejects impossible values before any work starts.

Fields (units in the names; `None` where marked optional):

  seed                  int; initialisation, Lanczos start vectors, shuffling.
  model.name            'mlp' | 'resnet32' | 'resnet18'.
  model.norm            'batch' | 'population' | 'none' (the MLP: 'none').
  model.population_refresh_steps
                        'population' only: the population statistics are
                        recomputed every this many steps (and before every
                        spectrum snapshot).
  model.population_num_examples
                        size of the fixed training sample (the first examples,
                        not augmented) the population statistics come from.
  model.population_batch_size
                        examples per forward pass when computing them; None:
                        the whole sample at once (exact whole-sample moments).
  dataset.*             see `experiments.input_pipeline` (module docstring).
  batch_size            global training batch (all devices and hosts).
  num_steps             training steps.
  optimizer.learning_rate, momentum, nesterov
                        SGD with (heavy-ball) momentum.
  optimizer.weight_decay
                        coupled L2: `weight_decay * w` is added to the gradient
                        of every kernel (arrays of rank >= 2; not biases or
                        batch-norm scales) before momentum, i.e. the loss gets
                        `weight_decay / 2 * ||w||^2`, as in the TensorFlow
                        ResNet references of the paper's time.
  optimizer.lr_drop_steps, lr_drop_factor
                        piecewise constant: the rate is multiplied by
                        `lr_drop_factor` at each of these steps (the paper: one
                        10x drop).
  optimizer.warmup_steps
                        linear warm-up from 0 over this many steps (0: none).
  eval_every_steps, eval_batch_size
                        test-set accuracy (also after the last step).
  log_every_steps       training loss/accuracy, averaged since the last log.
  checkpoint_every_steps, max_checkpoints_to_keep
                        orbax checkpoints in WORKDIR/checkpoints (also after
                        the last step); a rerun resumes from the latest.
  stop_after_steps      None, or stop (as if killed) after this many steps,
                        without a final checkpoint: for resume tests.
  hessian.snapshot_steps
                        steps (0 = initialisation, num_steps = the end) at
                        which the spectrum is estimated.
  hessian.num_examples  size of the Hessian set: the first training examples,
                        not augmented; None: all.
  hessian.batch_size    examples per Hessian batch. With bn_mode='train' the
                        batch-norm statistics are those of each such batch, as
                        in training; the training batch norm sees the
                        per-device batch (batch_size / devices), so set this to
                        that number to match training exactly.
  hessian.stream        False: the Hessian set is copied to the devices once
                        (fast); True: it is streamed from the host in batches
                        at every product (sets that do not fit, e.g. ImageNet;
                        with several processes each streams its share).
  hessian.basis         where the Lanczos basis lives: 'device' (fastest),
                        'sharded' (split over all devices: 1/D of it on each)
                        or 'host' (host memory) for
                        bases that do not fit next to the model: order x
                        parameters x 4 bytes per draw (8 with float64).
  hessian.lanczos_checkpoint_every
                        None, or save the Lanczos state every this many steps
                        (WORKDIR/lanczos/step_XXXXXXX, removed once the
                        snapshot is written), so that a run killed in a long
                        snapshot resumes inside it; it also reports the
                        progress of the snapshot on the progress bar.
  hessian.bn_mode       'train' (default) or 'eval': which loss the Hessian is
                        of, for batch-norm models. The paper studies "the
                        Hessian of the training loss" (its first sentence),
                        the function SGD descends; for a batch-norm network
                        that is the loss with each batch normalised by its own
                        statistics, i.e. 'train'. Its population-statistics
                        experiment is a different network (norm='population'),
                        not the eval-mode loss of the batch-norm one; this is
                        our reading of the text. 'eval' uses the running
                        averages instead.
  hessian.order         Lanczos steps per draw (the paper: 90).
  hessian.num_draws     independent start vectors (averaged densities).
  hessian.precision     None / 'float32' (the model's dtype), 'mixed' (float32
                        products, float64 Lanczos) or 'float64'; the last two
                        run the snapshot with x64 enabled.
  hessian.exact         also the exact spectrum (dense Hessian + eigh): only
                        for small models (the MLP).
  hessian.exact_steps   snapshot steps with the exact spectrum; (): the last
                        snapshot only.
  write_plots           PNG figures in WORKDIR/plots at the end.
"""

import ml_collections
from ml_collections import config_dict

BN_MODES = ('train', 'eval')
MODELS = ('mlp', 'resnet32', 'resnet18')
NORMS = ('batch', 'population', 'none')
PRECISIONS = (None, 'float32', 'float64', 'mixed')
# The Ritz vectors of the gradient concentration need a stored basis.
BASES = ('device', 'sharded', 'host')
SMOKE = 'smoke'


def get_config():
  """The defaults: the MLP on the embedded Fashion-MNIST subset, briefly."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.norm = 'none'
  config.model.population_refresh_steps = 100
  config.model.population_num_examples = 1024
  config.model.population_batch_size = config_dict.placeholder(int)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'embedded_fashion_mnist'
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.num_train = config_dict.placeholder(int)
  config.dataset.num_test = config_dict.placeholder(int)
  config.dataset.image_size = config_dict.placeholder(int)
  config.dataset.channels = config_dict.placeholder(int)
  config.dataset.num_classes = config_dict.placeholder(int)
  config.dataset.augmentation = config_dict.placeholder(str)
  config.dataset.image_shape = (28, 28, 1)
  config.dataset.seed = 0
  config.dataset.mean = config_dict.placeholder(tuple)
  config.dataset.std = config_dict.placeholder(tuple)

  config.batch_size = 128
  config.num_steps = 1000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.lr_drop_steps = ()
  config.optimizer.lr_drop_factor = 0.1
  config.optimizer.warmup_steps = 0

  config.eval_every_steps = 1000
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 2
  config.stop_after_steps = config_dict.placeholder(int)

  config.hessian = ml_collections.ConfigDict()
  config.hessian.snapshot_steps = (0, 1000)
  config.hessian.num_examples = config_dict.placeholder(int)
  config.hessian.batch_size = 1000
  config.hessian.bn_mode = 'train'
  config.hessian.order = 90
  config.hessian.num_draws = 1
  config.hessian.precision = config_dict.placeholder(str)
  config.hessian.stream = False
  config.hessian.basis = 'device'
  config.hessian.lanczos_checkpoint_every = config_dict.placeholder(int)
  config.hessian.exact = False
  config.hessian.exact_steps = ()

  config.write_plots = True
  return config


def check_arg(arg, name):
  """Rejects a config-file argument other than None and 'smoke'."""
  if arg not in (None, '', SMOKE):
    raise ValueError(f'{name}: unknown config argument {arg!r}; use '
                     f'{name}.py or {name}.py:{SMOKE}.')
  return arg == SMOKE


def shrink_to_smoke(config):
  """Shrinks an experiment to a CPU run of seconds, in place; returns it.

  The model stays the experiment's; data becomes the embedded Fashion-MNIST
  subset (zero-padded and repeated to the model's input shape by the caller's
  `dataset` fields), steps, snapshots and the Lanczos order become tiny.
  """
  config.dataset.name = 'embedded_fashion_mnist'
  config.dataset.data_dir = None
  config.dataset.num_classes = None
  config.dataset.num_train = 256
  config.dataset.num_test = 64
  config.batch_size = 32
  config.num_steps = 8
  config.optimizer.lr_drop_steps = (6,)
  config.optimizer.warmup_steps = 0
  config.eval_every_steps = 8
  config.eval_batch_size = 32
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.model.population_refresh_steps = 4
  config.model.population_num_examples = 64
  config.model.population_batch_size = None
  config.hessian.snapshot_steps = (0, 8)
  config.hessian.num_examples = 64
  config.hessian.batch_size = 32
  config.hessian.order = 8
  config.hessian.num_draws = 1
  config.hessian.exact = False
  config.hessian.exact_steps = ()
  return config


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


def validate(config, num_devices=None, num_processes=None):
  """Raises ValueError, naming the field, for unknown keys or impossible values.

  Args:
    config: the experiment's ConfigDict.
    num_devices: devices the global batches are split over; None: all devices
      of all processes (`jax.device_count()`).
    num_processes: processes of the job; None: `jax.process_count()`.

  Returns:
    The config, unchanged.
  """
  _check_keys(config, get_config())
  model, hessian, opt = config.model, config.hessian, config.optimizer
  if model.name not in MODELS:
    raise ValueError(f'config.model.name: must be one of {MODELS}, got '
                     f'{model.name!r}.')
  if model.norm not in NORMS:
    raise ValueError(f'config.model.norm: must be one of {NORMS}, got '
                     f'{model.norm!r}.')
  if model.name == 'mlp' and model.norm != 'none':
    raise ValueError(f"config.model.norm: the MLP has no normalisation, so "
                     f"norm must be 'none', got {model.norm!r}.")
  _positive_int(model.population_refresh_steps,
                'model.population_refresh_steps')
  _positive_int(model.population_num_examples, 'model.population_num_examples')
  _positive_int(model.population_batch_size, 'model.population_batch_size',
                allow_none=True)
  if not isinstance(config.dataset.name, str) or not config.dataset.name:
    raise ValueError('config.dataset.name: must be a dataset name.')
  for name in ('num_steps', 'batch_size', 'eval_every_steps', 'eval_batch_size',
               'log_every_steps', 'checkpoint_every_steps',
               'max_checkpoints_to_keep'):
    _positive_int(config[name], name)
  if num_devices is None or num_processes is None:
    import jax  # pylint: disable=g-import-not-at-top
    num_devices = num_devices or jax.device_count()
    num_processes = num_processes or jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % num_devices:
      raise ValueError(
          f'config.{name}: {config[name]} is not divisible by the '
          f'{num_devices} devices it is split over.')
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
  if hessian.bn_mode not in BN_MODES:
    raise ValueError(f'config.hessian.bn_mode: must be one of {BN_MODES}, got '
                     f'{hessian.bn_mode!r}.')
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
  return config
