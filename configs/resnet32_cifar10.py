"""ResNet-32 with batch norm on CIFAR-10: the paper's main CIFAR experiment.

As the authors (FACTS.md, "The authors' experimental setup", read from their
released code): their ResNet-32 (`experiments.resnets.PreActResNet`: 464,154
parameters), batch 128, SGD with momentum 0.9, learning rate 0.1, 0.01 from
step 33k and 0.001 from step 66k, weight decay 2e-4 on the convolution and
dense kernels, pad-4 random crops and flips; the Hessian of the training cost
(weight-decay term included) over 390 batches of 128 (49,920 images, the last
partial batch left out), each batch normalised by its own statistics, order
90. Batch statistics are synchronised over the devices in training, so that
training and the Hessian both normalise over 128 examples on any number of
devices.

Ours: 100k steps (their code sets no total here), the snapshot steps, one
Lanczos draw per run (theirs: one per job, many jobs), per-channel
standardisation with the training set's moments (theirs: per image), and
the smoke variant.

  python -m experiments.main --config=configs/resnet32_cifar10.py \
      --workdir=runs/resnet32_bn --config.dataset.data_dir=DATA
  ... --config=configs/resnet32_cifar10.py:smoke
      (CPU: a few minutes, mostly compilation)
"""

from configs import default

NUM_STEPS = 100_000
LR_DROP_STEPS = (33_000, 66_000)


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
  config.optimizer.weight_decay = 2e-4
  config.optimizer.lr_drop_steps = LR_DROP_STEPS
  config.optimizer.lr_drop_factor = 0.1
  config.eval_every_steps = 2_000
  config.eval_batch_size = 1_000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000

  first_drop = LR_DROP_STEPS[0]
  config.hessian.snapshot_steps = (0, 515, 1_000, 5_000, 10_000, first_drop,
                                   first_drop + 100, NUM_STEPS)
  config.hessian.num_examples = 390 * 128
  config.hessian.batch_size = 128
  # Weight decay in the Hessian, batch statistics, order 90, one draw per
  # job: default.py's values, the authors'.
  return config


def smoke(config):
  """Fashion-MNIST from the repository, padded to 32x32x3; a few steps."""
  default.smoke(config, image_size=32, channels=3)
  config.dataset.augmentation = 'cifar'
  config.hessian.order = 12
  # On CPU a convolution inside a compiled loop runs tens of times slower
  # (jax-ml/jax#12868), and a resident Hessian set puts the products inside
  # the Lanczos loop: stream the batches instead (one call per batch).
  config.hessian.stream = True
  return config


def get_config(arg=None):
  return default.finish(base_config('batch'), arg, 'resnet32_cifar10', smoke)
