"""ResNet-32 without normalisation on CIFAR-10 (the paper's no-BN network).

The authors' ResNet-32 with its batch-norm layers removed (a plain ResNet,
461,882 parameters), trained and probed as `resnet32_cifar10.py` (FACTS.md,
"The authors' experimental setup") except for what the missing normalisation
forces (ours, see `experiments.resnets`, norm 'none'): the last convolution of
each of the 15 residual branches starts at He's scale / sqrt(15), so the
residual stream's variance grows by at most e over the network instead of
2^15 (with plain He initialisation the initial logits are in the hundreds),
and the learning rate is 0.03: without normalisation the authors' 0.1 does
not train. Measured on a reduced problem (this network on 3,000 embedded
Fashion-MNIST images at 16x16x3, batch 64, seed 0; training loss averaged
over steps 1-25, 26-50, ...):
  rate 0.1:  2.29, 2.33, 2.25, 2.16, then a non-finite loss by step 125;
  rate 0.03: 2.22, 2.13, 1.94, 2.17, 1.76, 1.55, 1.43, 1.33 (test accuracy
             0.49 at step 200).
SkipInit is a different model: norm 'skipinit' (not a config of the paper).
"""

from configs import default
from configs import resnet32_cifar10

# Measured on the reduced problem (see above): 0.1 diverges, 0.03 trains.
NOBN_LEARNING_RATE = 0.03


def get_config(arg=None):
  config = resnet32_cifar10.base_config('none')
  config.optimizer.learning_rate = NOBN_LEARNING_RATE
  return default.finish(config, arg, 'resnet32_cifar10_nobn',
                        resnet32_cifar10.smoke)
