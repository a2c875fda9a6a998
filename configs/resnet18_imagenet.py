"""ResNet-18 with batch norm on ImageNet: the paper's ImageNet experiment.

Numbers: the paper trains ResNet-18 on ImageNet with SGD and momentum and
looks at the spectrum around the learning-rate drops and with/without batch
norm. Where its text gives no number, the standard recipe (Goyal et al. 2017)
is used: batch 256, learning rate 0.1 x batch / 256, momentum 0.9, weight
decay 1e-4, 90 epochs with 10x drops after epochs 30, 60 and 80, random crops
of 224 and flips.
On a pod, raise the batch and scale the rate with it, with a 5-epoch warm-up:
  --config.batch_size=4096 --config.optimizer.learning_rate=1.6
  --config.optimizer.warmup_steps=1560 (and the step counts: 1 epoch =
  1,281,167 / batch steps).
The Hessian set is the first 100,000 training images, not augmented,
streamed from the host (60 GB as float32: it fits neither the devices nor a
host), with bn_mode 'train' on batches of 256, the training batch (batch
statistics are synchronised over the devices in training, so both normalise
over 256 examples on any number of devices), and the weight-decay term
included in the loss, as the authors did for CIFAR (FACTS.md, "The authors'
experimental setup"; their ImageNet code is not described there, so the whole
ImageNet recipe here is ours, after Goyal et al.). On a pod each host streams its
contiguous share of those batches and one psum adds the hosts. The Lanczos
basis (order 90 x 11.7M parameters, 4.2 GB per draw) is kept on the host, and
the Lanczos state is checkpointed every 10 steps, so a kill inside an
hour-long snapshot loses little. On a pod, --config.hessian.basis=sharded
keeps 1/D of the basis on each of the D devices instead (0.5 GB per draw on
8 devices) and updates it there.

  python -m experiments.main --config=configs/resnet18_imagenet.py \
      --workdir=runs/resnet18_bn --config.dataset.data_dir=TFDS_DIR
"""

from configs import default

NUM_TRAIN = 1_281_167
BATCH_SIZE = 256
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE  # 5,004


def base_config(norm):
  """The ImageNet ResNet-18 experiment with a given normalisation."""
  config = default.get_config()
  config.model.name = 'resnet18'
  config.model.norm = norm
  config.model.population_num_examples = 4_096
  config.model.population_batch_size = 256
  config.dataset.name = 'tfds:imagenet2012'
  config.dataset.image_size = 224
  config.dataset.augmentation = 'imagenet'

  config.batch_size = BATCH_SIZE
  config.num_steps = 90 * STEPS_PER_EPOCH
  config.optimizer.learning_rate = 0.1 * BATCH_SIZE / 256
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.lr_drop_steps = tuple(e * STEPS_PER_EPOCH
                                         for e in (30, 60, 80))
  config.optimizer.lr_drop_factor = 0.1
  config.optimizer.warmup_steps = 0
  config.eval_every_steps = 5 * STEPS_PER_EPOCH
  config.eval_batch_size = 1_000
  config.log_every_steps = 500
  config.checkpoint_every_steps = 5_000

  first_drop = 30 * STEPS_PER_EPOCH
  config.hessian.snapshot_steps = (0, 1_000, 5_000, 20_000, first_drop,
                                   first_drop + 100, 60 * STEPS_PER_EPOCH,
                                   config.num_steps)
  config.hessian.num_examples = 100_000
  config.hessian.batch_size = BATCH_SIZE
  config.hessian.stream = True
  config.hessian.basis = 'host'
  config.hessian.lanczos_checkpoint_every = 10
  return config  # the other Hessian settings: default.py's, the authors'


def smoke(config):
  """Fashion-MNIST from the repository, padded to 32x32x3; a few steps."""
  default.smoke(config, image_size=32, channels=3)
  config.dataset.augmentation = 'none'
  config.hessian.batch_size = 32
  config.hessian.order = 12
  config.hessian.stream = True
  config.hessian.basis = 'device'
  config.hessian.lanczos_checkpoint_every = None
  return config


def get_config(arg=None):
  return default.finish(base_config('batch'), arg, 'resnet18_imagenet', smoke)
