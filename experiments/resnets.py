"""The ResNets of the paper, with every normalisation variant.

  `PreActResNet`  the authors' ResNet-32 (FACTS.md, "The authors' experimental
                  setup"; the TF models CIFAR ResNet they trained):
                  pre-activation units, leaky ReLU (slope 0.1), option-A
                  shortcuts (average-pool stride, zero-padded channels), batch
                  norm epsilon 1e-3 and momentum 0.9, He-normal (fan-out)
                  convolutions, final norm + activation, global average pool,
                  dense. `ResNet32`, 'resnet32' in configs.
  `ResNet`        He et al. (2016) v1 with basic blocks and projection
                  shortcuts (option B): `ResNet32He` ('resnet32_he', not the
                  authors'), and `ResNet18` for ImageNet.

The normalisation `norm`:

  'batch'       `nn.BatchNorm`: mini-batch statistics when `train=True`
                (of the whole batch: training runs under `jit` over a
                mesh, so the batch is one global array), running
                averages (collection 'batch_stats') when `train=False`.
  'population'  `population.PopulationBatchNorm`: statistics of the whole
                training set (collection 'population_stats').
  'none'        no normalisation at all: a plain ResNet. Its initialisation is
                He's except that the last convolution of every residual branch
                is scaled by 1/sqrt(number of branches), so the variance of
                the residual stream grows by (1 + 1/L)^L < e over the L
                branches instead of 2^L (a factor 3e4 for ResNet-32's 15):
                without it the initial logits are in the hundreds.
  'skipinit'    no normalisation, a learnable scalar (initially 0) at the end
                of every residual branch (SkipInit, De & Smith 2020): a
                different model, kept under its own name.

Parameter counts (10 classes; ResNet-18 with 1,000), asserted in
tests/test_models.py:
  ResNet32 (authors')  batch, population: 464,154; none: 461,882;
                       skipinit: 461,897.
  ResNet32He           batch, population: 466,906; none: 464,442;
                       skipinit: 464,457.
  ResNet18             batch: 11,689,512 (torchvision's count).
  ResNet8 (authors' family, one unit per stage; CPU smoke runs only)
                       batch: 75,290; none: 74,810.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from experiments import population

ModuleDef = Any
Dtype = Any

NORMS = ('batch', 'population', 'none', 'skipinit')

# He et al. (2015): variance 2 / fan keeps the activation scale through ReLUs.
_he_fan_in = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')
# The TF models ResNet: normal, stddev sqrt(2 / (k * k * out_channels)).
_he_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Identity(nn.Module):
  """No normalisation (norm='none' and 'skipinit')."""

  @nn.compact
  def __call__(self, x, mask=None):
    del mask
    return x


def norm_layer(norm: str, train: bool, *, epsilon: float,
               axis_name: str | None, population_pass: str,
               dtype: Dtype | None, param_dtype: Dtype) -> ModuleDef:
  """The normalisation module constructor of a variant.

  Args:
    norm: one of NORMS.
    train: whether 'batch' uses mini-batch statistics (else running averages).
    epsilon: added to the variance.
    axis_name: 'batch' only: a named axis (of `shard_map` or `vmap`) whose
      members share the batch statistics; None under `jit`, where the batch
      is one global array however it is laid out.
    population_pass: 'population' only, see `PopulationBatchNorm`.
    dtype, param_dtype: computation and parameter dtypes.

  Returns:
    A constructor taking keyword overrides; its modules are called as
    `layer(x, mask=mask)`.
  """
  if norm == 'batch':
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=epsilon,
                             axis_name=axis_name if train else None,
                             dtype=dtype, param_dtype=param_dtype)
  if norm == 'population':
    return functools.partial(population.PopulationBatchNorm, epsilon=epsilon,
                             normalise_recorded_with=population_pass,
                             dtype=dtype, param_dtype=param_dtype)
  if norm in ('none', 'skipinit'):
    return Identity
  raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')


def branch_output_init(norm: str, num_branches: int, mode: str,
                       distribution: str) -> Callable:
  """He initialiser of a branch's last convolution, scaled for norm='none'.

  Args:
    norm: one of NORMS.
    num_branches: residual branches of the network (L).
    mode, distribution: those of the network's other convolutions.
  """
  scale = 2.0 / num_branches if norm == 'none' else 2.0
  return nn.initializers.variance_scaling(scale, mode, distribution)


def branch_gain(module: nn.Module, norm: str, y):
  """SkipInit's scalar gain, initially 0, on a branch output y ('skipinit')."""
  if norm != 'skipinit':
    return y
  return y * module.param('skip_gain', nn.initializers.zeros, (),
                          module.param_dtype).astype(y.dtype)


def _mask(mask, x):
  """[B] example mask -> [B, 1, ..., 1] for the normalisation layers."""
  if mask is None:
    return None
  return jnp.reshape(mask, (x.shape[0],) + (1,) * (x.ndim - 1))


def _leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.1)


class PreActBlock(nn.Module):
  """The authors' residual unit: norm, activation, 3x3 conv, norm, activation,
  3x3 conv; option-A shortcut (average-pool stride, zero-padded channels).

  Attributes:
    filters: output channels.
    strides: stride of the first convolution and of the shortcut's pooling.
    activate_before_residual: the shortcut takes the activated input (the
      first unit of the network) instead of the raw one.
    conv, norm: module constructors.
    variant: the network's norm (for the branch's init and gain).
    num_branches: residual branches of the network.
    param_dtype: dtype of SkipInit's gain.
  """
  filters: int
  strides: int
  activate_before_residual: bool
  conv: ModuleDef
  norm: ModuleDef
  variant: str
  num_branches: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """Args: x [B, H, W, C]; mask [B] or None. Returns [B, H/s, W/s, filters]."""
    m = _mask(mask, x)
    if self.activate_before_residual:
      x = _leaky_relu(self.norm(name='norm_0')(x, mask=m))
      shortcut = x
    else:
      shortcut = x
      x = _leaky_relu(self.norm(name='norm_0')(x, mask=m))
    y = self.conv(self.filters, (3, 3), self.strides, name='conv_0')(x)
    y = _leaky_relu(self.norm(name='norm_1')(y, mask=m))
    y = self.conv(self.filters, (3, 3), kernel_init=branch_output_init(
        self.variant, self.num_branches, 'fan_out', 'normal'),
                  name='conv_1')(y)
    y = branch_gain(self, self.variant, y)
    if shortcut.shape[-1] != self.filters:
      s = (self.strides, self.strides)
      shortcut = nn.avg_pool(shortcut, s, s, 'VALID')
      pad = (self.filters - shortcut.shape[-1]) // 2
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (pad, pad)))
    return shortcut + y


class PreActResNet(nn.Module):
  """The authors' CIFAR ResNet (see the module docstring).

  Attributes:
    stage_sizes: units per stage; each stage after the first halves the
      resolution and doubles the channels.
    num_filters: channels of the first convolution and of the first stage.
    num_classes: number of logits.
    norm: one of NORMS.
    bn_axis_name: norm='batch' in training, inside `shard_map` or `vmap`:
      the named axis over which batch statistics are synchronised (unused by
      `experiments.train`, whose `jit` sees the global batch).
    population_pass: norm='population', see `PopulationBatchNorm`.
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of the parameters.
  """
  stage_sizes: Sequence[int] = (5, 5, 5)
  num_filters: int = 16
  num_classes: int = 10
  norm: str = 'batch'
  bn_axis_name: str | None = None
  population_pass: str = 'population'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, mask=None):
    """Args: x [B, H, W, C]; train: mini-batch statistics for norm='batch';
    mask [B] or None: examples that count in statistics (1) or not (0).

    Returns: logits [B, num_classes].
    """
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_he_fan_out,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = norm_layer(self.norm, train, epsilon=1e-3,
                      axis_name=self.bn_axis_name,
                      population_pass=self.population_pass, dtype=self.dtype,
                      param_dtype=self.param_dtype)
    x = conv(self.num_filters, (3, 3), name='conv_init')(x)
    for stage, num_units in enumerate(self.stage_sizes):
      for unit in range(num_units):
        x = PreActBlock(self.num_filters * 2**stage,
                        strides=2 if stage > 0 and unit == 0 else 1,
                        activate_before_residual=stage == 0 and unit == 0,
                        conv=conv, norm=norm, variant=self.norm,
                        num_branches=sum(self.stage_sizes),
                        param_dtype=self.param_dtype)(x, mask)
    x = _leaky_relu(norm(name='norm_final')(x, mask=_mask(mask, x)))
    x = jnp.mean(x, axis=(1, 2))
    # TF's uniform_unit_scaling_initializer(1.0): variance 1 / fan_in.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.
                    variance_scaling(1.0, 'fan_in', 'uniform'),
                    dtype=self.dtype, param_dtype=self.param_dtype)(x)


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convolutions, projection shortcut on a change
  of shape (He et al. 2016, option B).

  Attributes:
    filters: output channels.
    conv, norm: module constructors.
    variant: the network's norm (for the branch's init and gain).
    num_branches: residual branches of the network.
    strides: stride of the first convolution and of the projection.
    param_dtype: dtype of SkipInit's gain.
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  variant: str
  num_branches: int
  strides: int = 1
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """Args: x [B, H, W, C]; mask [B] or None.

    Returns: [B, H/strides, W/strides, filters].
    """
    m = _mask(mask, x)
    y = self.conv(self.filters, (3, 3), self.strides, name='conv_0')(x)
    y = nn.relu(self.norm(name='norm_0')(y, mask=m))
    y = self.conv(self.filters, (3, 3), kernel_init=branch_output_init(
        self.variant, self.num_branches, 'fan_in', 'truncated_normal'),
                  name='conv_1')(y)
    y = branch_gain(self, self.variant, self.norm(name='norm_1')(y, mask=m))
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(x)
      x = self.norm(name='norm_proj')(x, mask=m)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet v1 with basic blocks (He et al. 2016), for CIFAR or ImageNet.

  Attributes:
    stage_sizes: blocks per stage; each stage after the first halves the
      resolution and doubles the channels.
    num_filters: channels of the stem and of the first stage.
    stem: 'cifar' (3x3 convolution) or 'imagenet' (7x7 stride-2 convolution and
      3x3 stride-2 max-pool).
    num_classes: number of logits.
    norm: one of NORMS.
    bn_axis_name, population_pass: as `PreActResNet`.
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of the parameters.
  """
  stage_sizes: Sequence[int]
  num_filters: int
  stem: str
  num_classes: int
  norm: str = 'batch'
  bn_axis_name: str | None = None
  population_pass: str = 'population'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, mask=None):
    """Args: as `PreActResNet`. Returns: logits [B, num_classes]."""
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_he_fan_in,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = norm_layer(self.norm, train, epsilon=1e-5,
                      axis_name=self.bn_axis_name,
                      population_pass=self.population_pass, dtype=self.dtype,
                      param_dtype=self.param_dtype)
    if self.stem == 'imagenet':
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name='conv_init')(x)
    elif self.stem == 'cifar':
      x = conv(self.num_filters, (3, 3), name='conv_init')(x)
    else:
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
    x = nn.relu(norm(name='norm_init')(x, mask=_mask(mask, x)))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = ResNetBlock(self.num_filters * 2**stage, conv, norm, self.norm,
                        sum(self.stage_sizes),
                        strides=2 if stage > 0 and block == 0 else 1,
                        param_dtype=self.param_dtype)(x, mask)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)


# Parameters (10 classes; 1,000 for ResNet-18), by norm: see tests/test_models.
ResNet32 = functools.partial(PreActResNet, stage_sizes=(5, 5, 5),
                             num_filters=16)
# The same family with one unit per stage (ResNet-8): for CPU smoke runs of
# the notebooks and tests, where compiling ResNet-32 three times dominates.
ResNet8 = functools.partial(PreActResNet, stage_sizes=(1, 1, 1),
                            num_filters=16)
ResNet32He = functools.partial(ResNet, stage_sizes=(5, 5, 5), num_filters=16,
                               stem='cifar')
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), num_filters=64,
                             stem='imagenet')
