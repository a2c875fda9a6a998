"""ResNet-32 without normalisation on CIFAR-10 (the paper's no-BN network).

The authors' ResNet-32 with its batch-norm layers removed (a plain ResNet,
461,882 parameters), trained and probed as `resnet32_cifar10.py` (FACTS.md,
"The authors' experimental setup") except for what the missing normalisation
forces (ours, see `experiments.resnets`, norm 'none'): the last convolution of
each of the 15 residual branches starts at He's scale / sqrt(15), so the
residual stream's variance grows by at most e over the network instead of
2^15, and the learning rate is NOBN_LEARNING_RATE (measured below).
SkipInit is a different model: norm 'skipinit' (not a config of the paper).
"""

from configs import default
from configs import resnet32_cifar10

# Measured on the reduced problem (README, "Experiments"): see the report.
NOBN_LEARNING_RATE = 0.1


def get_config(arg=None):
  config = resnet32_cifar10.base_config('none')
  config.optimizer.learning_rate = NOBN_LEARNING_RATE
  return default.finish(config, arg, 'resnet32_cifar10_nobn',
                        resnet32_cifar10.smoke)
