"""ResNet-32 with population batch norm on CIFAR-10 (the paper's Section 4
test of its batch-norm hypothesis: normalising with statistics of a fixed
sample of the training set, not of the mini-batch, brings the outliers back).

Same training and snapshots as `resnet32_cifar10.py`. The population
statistics come from the first 2,048 training images (not augmented), in one
pass, recomputed every 100 steps and before every snapshot; they are constants
for the gradient and the Hessian. (The sample size and refresh interval are
ours: the paper does not tie the result to them.)
"""

from configs import default
from configs import resnet32_cifar10


def get_config(arg=None):
  config = resnet32_cifar10.base_config('population')
  config.model.population_num_examples = 2_048
  config.model.population_refresh_steps = 100
  config.model.population_batch_size = None
  if default.check_arg(arg, 'resnet32_cifar10_popbn'):
    resnet32_cifar10.smoke(config)
  config.lock()
  return config
