"""ResNet-18 without normalisation on ImageNet (the paper's no-BN network).

Same schedule and snapshots as `resnet18_imagenet.py` (a recipe of ours, see
there); batch norm removed (a plain ResNet, norm 'none'), the last convolution
of each of the 8 residual branches starting at He's scale / sqrt(8) (see
`experiments.resnets`). Its learning rate is untested at ImageNet scale.
"""

from configs import default
from configs import resnet18_imagenet


def get_config(arg=None):
  return default.finish(resnet18_imagenet.base_config('none'), arg,
                        'resnet18_imagenet_nobn', resnet18_imagenet.smoke)
