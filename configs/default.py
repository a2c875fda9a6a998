"""Shared defaults of every experiment, and the ending every config file shares.

Every field an experiment may set exists here, so that `config.lock()` turns a
misspelt override (`--config.optimiser.lr=...`) into an error. The checks of
the values are in `experiments/config_checks.py`. Where a default follows the
authors' released code it says so ("authors": FACTS.md, "The authors'
experimental setup"); "ours" marks our own choices.
"""

import ml_collections
from ml_collections import config_dict

SMOKE = 'smoke'


def get_config():
  """The defaults: the MLP on the embedded Fashion-MNIST subset, briefly."""
  config = ml_collections.ConfigDict()
  # Initialisation, Lanczos start vectors and shuffling.
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  # One of experiments.models.MODELS: 'mlp', 'resnet32' (the authors'),
  # 'resnet32_he' (He et al. v1, ours), 'resnet18'.
  config.model.name = 'mlp'
  # One of experiments.models.NORMS: 'batch', 'population', 'none' (plain, no
  # normalisation), 'skipinit'; the MLP takes only 'none'.
  config.model.norm = 'none'
  # norm='population': statistics recomputed every this many steps, and before
  # every snapshot (K of the paper's description; the value is ours).
  config.model.population_refresh_steps = 1000
  # norm='population': 'exact' (the definition: one pass per normalisation
  # layer) or 'precise' (one pass, per-batch moments pooled; approximate).
  config.model.population_mode = 'exact'
  # norm='population': the first this many training examples, not augmented;
  # None: the whole training set (the paper's definition).
  config.model.population_num_examples = config_dict.placeholder(int)
  # norm='population': examples per forward pass of the statistics, over all
  # devices and hosts ('precise': each device normalises its share by itself).
  config.model.population_batch_size = 1000

  config.dataset = ml_collections.ConfigDict()
  # A name of experiments.input_pipeline (module docstring), e.g.
  # 'embedded_fashion_mnist', 'fashion_mnist', 'cifar10_python',
  # 'tfds:imagenet2012'.
  config.dataset.name = 'embedded_fashion_mnist'
  # Where the files are (None: the pipeline's default).
  config.dataset.data_dir = config_dict.placeholder(str)
  # Only the first this many training / test examples (None: all).
  config.dataset.num_train = config_dict.placeholder(int)
  config.dataset.num_test = config_dict.placeholder(int)
  # Images centre-cropped or zero-padded to this size (None: as stored).
  config.dataset.image_size = config_dict.placeholder(int)
  # Channels repeated to this number (None: as stored).
  config.dataset.channels = config_dict.placeholder(int)
  # Classes of the labels (None: the dataset's).
  config.dataset.num_classes = config_dict.placeholder(int)
  # 'cifar' (pad-4 crop and flip), 'imagenet' or 'none'; None: the dataset's.
  config.dataset.augmentation = config_dict.placeholder(str)
  # Input shape of synthetic data.
  config.dataset.image_shape = (28, 28, 1)
  # Seed of synthetic data.
  config.dataset.seed = 0
  # Per-channel normalisation (None: computed from the training images).
  config.dataset.mean = config_dict.placeholder(tuple)
  config.dataset.std = config_dict.placeholder(tuple)

  # Global training batch (all devices and hosts; authors: 128). Batch-norm
  # statistics are synchronised over the devices, so they are this batch's.
  config.batch_size = 128
  # Training steps.
  config.num_steps = 1000

  config.optimizer = ml_collections.ConfigDict()
  # SGD with (heavy-ball) momentum (authors: 0.9, initial rate 0.1).
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  # Coupled L2: the loss gets weight_decay * sum(||w||^2 / 2) over the
  # convolution and dense kernels, not biases or normalisation parameters
  # (authors: 2e-4 for ResNet-32).
  config.optimizer.weight_decay = 0.0
  # Piecewise constant: the rate is multiplied by lr_drop_factor from each of
  # these steps on (authors: 33k and 66k, factor 10).
  config.optimizer.lr_drop_steps = ()
  config.optimizer.lr_drop_factor = 0.1
  # Linear warm-up from 1 / warmup_steps of the rate (0: none; ours).
  config.optimizer.warmup_steps = 0

  # Test accuracy every this many steps (and after the last), in batches of.
  config.eval_every_steps = 1000
  config.eval_batch_size = 1000
  # Training loss and accuracy, averaged since the last log.
  config.log_every_steps = 100
  # Orbax checkpoints in WORKDIR/checkpoints (also after the last step); a
  # rerun resumes from the latest.
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 2
  # None, or stop (as if killed) after this many steps, without a final
  # checkpoint: for resume tests.
  config.stop_after_steps = config_dict.placeholder(int)

  config.hessian = ml_collections.ConfigDict()
  # Steps (0 = initialisation, num_steps = the end) of the spectrum snapshots.
  config.hessian.snapshot_steps = (0, 1000)
  # The Hessian set: the first this many training examples, not augmented;
  # None: all (authors: the whole set without the last partial batch).
  config.hessian.num_examples = config_dict.placeholder(int)
  # Examples per Hessian batch. With bn_mode='train' each batch is normalised
  # by its own statistics, as in training; for norm='batch' it must be the
  # training batch (config_checks), so that both normalise over the same
  # number of examples whatever the device count (authors: 128).
  config.hessian.batch_size = 1000
  # The Hessian of the training cost, weight-decay term included (authors);
  # False: of the cross-entropy alone. Recorded as 'hessian_weight_decay'.
  config.hessian.include_weight_decay = True
  # 'train': batch-norm models normalised by each batch's statistics (the
  # loss SGD descends; authors); 'eval': by the running averages.
  config.hessian.bn_mode = 'train'
  # Lanczos steps per draw (authors: 80 to 90).
  config.hessian.order = 90
  # Independent start vectors, densities averaged (authors: one per job).
  config.hessian.num_draws = 1
  # The recurrence's dtype (docs/guide/precision.md): 'mixed' (the default,
  # the authors' TF version: float32 products summed over batches in float64,
  # the Lanczos recurrence in float64), 'float64' (products too), 'float32'
  # or None (the model's dtype throughout).
  config.hessian.precision = config_dict.placeholder(str)
  config.hessian.precision = 'mixed'
  # How float32 matmuls and convolutions are computed: 'highest' (full
  # float32; JAX's default on TPU / NVIDIA GPUs is a reduced precision),
  # 'default' (JAX's), or a jax.lax.DotAlgorithmPreset name.
  config.hessian.matmul_precision = 'highest'
  # False: the Hessian set is copied to the devices once; True: streamed from
  # the host at every product (sets that do not fit; each host its share).
  config.hessian.stream = False
  # Where the Lanczos basis lives: 'device', 'sharded' (1/D on each device) or
  # 'host' (order x parameters x 4 bytes per draw).
  config.hessian.basis = 'device'
  # None, or save the Lanczos state every this many steps (resumable
  # snapshots; also reports the snapshot's progress).
  config.hessian.lanczos_checkpoint_every = config_dict.placeholder(int)
  # Also the exact spectrum (dense Hessian + eigh): small models only.
  config.hessian.exact = False
  # Snapshot steps with the exact spectrum; (): the last snapshot only.
  config.hessian.exact_steps = ()

  # PNG figures in WORKDIR/plots at the end.
  config.write_plots = True
  return config


def smoke(config, image_size=None, channels=None):
  """Shrinks an experiment to a CPU run of seconds, in place; returns it.

  The model stays the experiment's; data becomes the embedded Fashion-MNIST
  subset (zero-padded and repeated to the model's input shape,
  `image_size` x `image_size` x `channels` where given), steps, snapshots and
  the Lanczos order become tiny.
  """
  if image_size is not None:
    config.dataset.image_size = image_size
  if channels is not None:
    config.dataset.channels = channels
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
  config.model.population_batch_size = 32
  config.hessian.snapshot_steps = (0, 8)
  config.hessian.num_examples = 64
  config.hessian.batch_size = 32
  config.hessian.order = 8
  config.hessian.num_draws = 1
  config.hessian.exact = False
  config.hessian.exact_steps = ()
  return config


def finish(config, arg, name, shrink=smoke):
  """The ending of every config file: the smoke variant on request, locked.

  Args:
    config: the experiment's config.
    arg: the config-file argument: None, '' or 'smoke'.
    name: the file's name, for the error message.
    shrink: the experiment's smoke shrinking.

  Returns:
    The locked config.
  """
  if arg not in (None, '', SMOKE):
    raise ValueError(f'{name}: unknown config argument {arg!r}; use '
                     f'{name}.py or {name}.py:{SMOKE}.')
  if arg == SMOKE:
    shrink(config)
  config.lock()
  return config
