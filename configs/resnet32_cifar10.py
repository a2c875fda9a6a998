"""ResNet-32 with batch norm on CIFAR-10: the paper's main CIFAR experiment.

Numbers from the paper's CIFAR-10 experiments (the ResNet-32 runs of its
learning-rate-drop and batch-norm sections): batch 128, SGD with momentum 0.9,
learning rate 0.1 dropped 10x at step 40k, 100k steps. Not stated there, so
taken from the standard CIFAR ResNet recipe (He et al. 2016, Section 4.2):
weight decay 1e-4, random crops of the 4-pixel padded image and flips.
Spectra at steps 0, 515, 1k, 5k, 10k, 40k, 40.1k (just after the drop) and
100k, over the whole training set (50,000 examples), order 90, as the paper.

  python -m experiments.main --config=configs/resnet32_cifar10.py \
      --workdir=runs/resnet32_bn --config.dataset.data_dir=DATA
  ... --config=configs/resnet32_cifar10.py:smoke
      (CPU: a few minutes, mostly compilation)
"""

from configs import default

NUM_STEPS = 100_000
LR_DROP_STEP = 40_000


def base_config(norm):
  """The CIFAR-10 ResNet-32 experiment with a given normalisation."""
  config = default.get_config()
  config.model.name = 'resnet32'
  config.model.norm = norm
  # CIFAR-10 python batches in data_dir (or 'tfds:cifar10').
  config.dataset.name = 'cifar10_python'
  config.dataset.augmentation = 'cifar'

  config.batch_size = 128
  config.num_steps = NUM_STEPS
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.lr_drop_steps = (LR_DROP_STEP,)
  config.optimizer.lr_drop_factor = 0.1
  config.eval_every_steps = 2_000
  config.eval_batch_size = 1_000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000

  config.hessian.snapshot_steps = (0, 515, 1_000, 5_000, 10_000, LR_DROP_STEP,
                                   LR_DROP_STEP + 100, NUM_STEPS)
  config.hessian.num_examples = None
  # The training batch, so that bn_mode='train' normalises like training.
  config.hessian.batch_size = 128
  config.hessian.bn_mode = 'train'
  config.hessian.order = 90
  config.hessian.num_draws = 1
  return config


def smoke(config):
  """Fashion-MNIST from the repository, padded to 32x32x3; a few steps."""
  default.shrink_to_smoke(config)
  config.dataset.image_size = 32
  config.dataset.channels = 3
  config.dataset.augmentation = 'cifar'
  config.hessian.order = 12
  # On CPU a convolution inside a compiled loop runs tens of times slower
  # (jax-ml/jax#12868), and a resident Hessian set puts the products inside
  # the Lanczos loop: stream the batches instead (one call per batch).
  config.hessian.stream = True
  return config


def get_config(arg=None):
  config = base_config('batch')
  if default.check_arg(arg, 'resnet32_cifar10'):
    smoke(config)
  config.lock()
  return config
