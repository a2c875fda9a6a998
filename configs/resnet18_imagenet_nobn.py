"""ResNet-18 without normalisation on ImageNet (the paper's no-BN network).

Same schedule and snapshots as `resnet18_imagenet.py`; batch norm replaced by
its affine part, residual branches starting at zero (SkipInit, see
`experiments.models.norm_layer`).
"""

from configs import default
from configs import resnet18_imagenet


def get_config(arg=None):
  config = resnet18_imagenet.base_config('none')
  if default.check_arg(arg, 'resnet18_imagenet_nobn'):
    resnet18_imagenet.smoke(config)
  config.lock()
  return config
