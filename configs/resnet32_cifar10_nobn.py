"""ResNet-32 without normalisation on CIFAR-10 (the paper's no-BN network).

Same training and snapshots as `resnet32_cifar10.py`; the batch-norm layers are
replaced by their learnable affine part and every residual branch starts at
zero (SkipInit; see `experiments.models.norm_layer`), which is what lets the
unnormalised ResNet-32 train at the same learning rate.
"""

from configs import default
from configs import resnet32_cifar10


def get_config(arg=None):
  config = resnet32_cifar10.base_config('none')
  if default.check_arg(arg, 'resnet32_cifar10_nobn'):
    resnet32_cifar10.smoke(config)
  config.lock()
  return config
