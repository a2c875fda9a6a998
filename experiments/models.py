"""Models of the paper and the loss functions whose Hessian is studied.

Every model is called as `model.apply(variables, images, train=...)` with images
`[B, H, W, C]` and returns logits `[B, num_classes]`.

One `ResNet` serves every normalisation variant, chosen by the string `norm`:

  'batch'       `nn.BatchNorm`: mini-batch statistics when `train=True`, running
                averages (collection 'batch_stats') when `train=False`.
  'population'  `PopulationBatchNorm`: always normalises with statistics of a
                fixed sample of the training set (collection
                'population_stats'), held as constants, so an example's output
                does not depend on the rest of its batch.
                `compute_population_stats` fills the collection.
  'none'        `Affine`: the learnable per-channel scale and bias that batch
                norm would have added, and no normalisation (see `norm_layer`).

All three variants have the same parameter tree, so parameters move between
them.
"""

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ModuleDef = Any
Dtype = Any

NORMS = ('batch', 'population', 'none')
BN_MODES = ('train', 'eval')
POPULATION_STATS = 'population_stats'
RECORDED_MOMENTS = 'recorded_moments'

# He et al. (2015) initialisation keeps the activation variance constant through
# ReLU layers; the unnormalised variant relies on it to train.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


class PopulationBatchNorm(nn.Module):
  """Batch norm with population statistics, constant for the gradient.

  Normalises with `mean` and `var` of the collection 'population_stats', the
  same in training and evaluation. When the collection 'recorded_moments' is
  mutable (and only then), it normalises with the statistics of the batch
  instead and writes them to that collection; `compute_population_stats` uses
  this mode.

  Attributes:
    epsilon: added to the variance before the square root.
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of `scale` and `bias`.
    scale_init: initialiser of `scale` [C].
    bias_init: initialiser of `bias` [C].
  """
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    """Args: x [..., C]. Returns: normalised, scaled and shifted x, [..., C]."""
    features = x.shape[-1]
    reduction_axes = tuple(range(x.ndim - 1))
    population_mean = self.variable(POPULATION_STATS, 'mean', jnp.zeros,
                                    (features,), jnp.float32)
    population_var = self.variable(POPULATION_STATS, 'var', jnp.ones,
                                   (features,), jnp.float32)
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    if (self.is_mutable_collection(RECORDED_MOMENTS) and
        not self.is_initializing()):
      # Reduce in float32 at least, as nn.BatchNorm does, so that bfloat16
      # activations still give usable moments.
      x_wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = x_wide.mean(reduction_axes)
      var = x_wide.var(reduction_axes)
      self.put_variable(RECORDED_MOMENTS, 'mean', mean)
      self.put_variable(RECORDED_MOMENTS, 'var', var)
    else:
      mean = jax.lax.stop_gradient(population_mean.value)
      var = jax.lax.stop_gradient(population_var.value)
    x, mean, var, scale, bias = nn.dtypes.promote_dtype(
        x, mean, var, scale, bias, dtype=self.dtype)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class Affine(nn.Module):
  """Per-channel `x * scale + bias`: batch norm's affine part, unnormalised.

  It stands where batch norm stands in the unnormalised ResNet, so that the
  network keeps the biases (and the parameter count) of its normalised versions.

  Attributes:
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of `scale` and `bias`.
    scale_init: initialiser of `scale` [C].
    bias_init: initialiser of `bias` [C].
  """
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    """Args: x [..., C]. Returns: x * scale + bias, [..., C]."""
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    x, scale, bias = nn.dtypes.promote_dtype(x, scale, bias, dtype=self.dtype)
    return x * scale + bias


def norm_layer(norm: str, train: bool, dtype: Dtype | None,
               param_dtype: Dtype) -> tuple[ModuleDef, Callable]:
  """The normalisation module of a variant and its residual-branch scale init.

  With norm='none' the last scale of every residual branch starts at zero, so
  each block starts as the identity (SkipInit, De & Smith 2020; the
  zero-initialised branch of Fixup, Zhang et al. 2019) and the signal keeps its
  He-initialised scale at any depth: this is what lets a ResNet without
  normalisation train, and it needs no depth-dependent rescaling of weights.
  The batch-norm variants keep the usual scale of one.

  Args:
    norm: one of NORMS.
    train: whether 'batch' uses mini-batch statistics (else running averages).
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of the parameters.

  Returns:
    (norm, residual_scale_init): a module constructor taking keyword overrides,
    and the initialiser of the last scale of each residual branch.
  """
  if norm == 'batch':
    module = functools.partial(nn.BatchNorm, use_running_average=not train,
                               momentum=0.9, epsilon=1e-5)
    residual_scale_init = nn.initializers.ones
  elif norm == 'population':
    module = PopulationBatchNorm
    residual_scale_init = nn.initializers.ones
  elif norm == 'none':
    module = Affine
    residual_scale_init = nn.initializers.zeros
  else:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
  return (functools.partial(module, dtype=dtype, param_dtype=param_dtype),
          residual_scale_init)


class MLP(nn.Module):
  """Fully connected network on flattened inputs.

  The paper's Fashion-MNIST MLP is the default: 784-20-10 with tanh, 15,910
  parameters.

  Attributes:
    features: widths of the hidden layers.
    num_classes: number of logits.
    activation: nonlinearity after each hidden layer.
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of the parameters.
  """
  features: Sequence[int] = (20,)
  num_classes: int = 10
  activation: Callable = nn.tanh
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Args: x [B, ...]; train: unused, for the signature shared by all models.

    Returns: logits [B, num_classes].
    """
    del train
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = x.reshape((x.shape[0], -1))
    for width in self.features:
      x = self.activation(dense(width)(x))
    return dense(self.num_classes)(x)


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convolutions, projection shortcut on a change
  of shape (He et al. 2016, option B).

  Attributes:
    filters: output channels.
    conv: convolution constructor.
    norm: normalisation constructor.
    residual_scale_init: initialiser of the last scale of the branch.
    strides: stride of the first convolution and of the projection.
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  residual_scale_init: Callable
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    """Args: x [B, H, W, C]. Returns: [B, H/strides, W/strides, filters]."""
    y = self.conv(self.filters, (3, 3), self.strides, name='conv_0')(x)
    y = nn.relu(self.norm(name='norm_0')(y))
    y = self.conv(self.filters, (3, 3), name='conv_1')(y)
    y = self.norm(scale_init=self.residual_scale_init, name='norm_1')(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), self.strides, name='conv_proj')(x)
      x = self.norm(name='norm_proj')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet v1 with basic blocks, for CIFAR or ImageNet inputs.

  Attributes:
    stage_sizes: blocks per stage; each stage after the first halves the
      resolution and doubles the channels.
    num_filters: channels of the stem and of the first stage.
    stem: 'cifar' (3x3 convolution) or 'imagenet' (7x7 stride-2 convolution and
      3x3 stride-2 max-pool).
    num_classes: number of logits.
    norm: one of NORMS, see the module docstring.
    dtype: computation dtype; None follows the inputs and parameters.
    param_dtype: dtype of the parameters.
  """
  stage_sizes: Sequence[int]
  num_filters: int
  stem: str
  num_classes: int
  norm: str = 'batch'
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    """Args: x [B, H, W, C]; train: mini-batch statistics for norm='batch'.

    Returns: logits [B, num_classes].
    """
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm, residual_scale_init = norm_layer(self.norm, train, self.dtype,
                                           self.param_dtype)
    if self.stem == 'imagenet':
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name='conv_init')(x)
    elif self.stem == 'cifar':
      x = conv(self.num_filters, (3, 3), name='conv_init')(x)
    else:
      raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
    x = nn.relu(norm(name='norm_init')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = ResNetBlock(self.num_filters * 2**stage, conv, norm,
                        residual_scale_init,
                        strides=2 if stage > 0 and block == 0 else 1)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)


ResNet32 = functools.partial(ResNet, stage_sizes=(5, 5, 5), num_filters=16,
                             stem='cifar')
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), num_filters=64,
                             stem='imagenet')
MODELS = {'mlp': MLP, 'resnet32': ResNet32, 'resnet18': ResNet18}


def create_model(name: str, num_classes: int, norm: str,
                 dtype: Dtype | None = None) -> nn.Module:
  """The model of a config name.

  Args:
    name: one of MODELS ('mlp', 'resnet32', 'resnet18').
    num_classes: number of logits.
    norm: one of NORMS; the MLP has no normalisation and takes only 'none'.
    dtype: computation dtype; None follows the inputs and parameters.
      Parameters are float32, or float64 when dtype is float64.

  Returns:
    The flax module.
  """
  if name not in MODELS:
    raise ValueError(f'model must be one of {sorted(MODELS)}, got {name!r}')
  param_dtype = (jnp.float32 if dtype is None else
                 jnp.promote_types(dtype, jnp.float32))
  if name == 'mlp':
    if norm != 'none':
      raise ValueError(f"the MLP has no normalisation: norm must be 'none', "
                       f'got {norm!r}')
    return MLP(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype)
  return MODELS[name](num_classes=num_classes, norm=norm, dtype=dtype,
                      param_dtype=param_dtype)


def init_variables(model: nn.Module, rng: jax.Array,
                   input_shape: Sequence[int]) -> dict[str, Any]:
  """Initial variables of a model.

  Args:
    model: a module of this file.
    rng: PRNG key.
    input_shape: [B, H, W, C] of an input batch (B=1 is enough).

  Returns:
    {'params': ..., and 'batch_stats' or 'population_stats' where the model
    has them}.
  """
  return model.init(rng, jnp.zeros(input_shape, model.param_dtype), train=False)


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
  """Splits variables into (params, model_state: the other collections)."""
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  return variables['params'], model_state


def compute_population_stats(model: nn.Module, variables: Mapping[str, Any],
                             images: np.ndarray, batch_size: int) -> dict:
  """Pooled per-layer mean and variance of each PopulationBatchNorm on a sample.

  Runs the model over `images` in batches, each layer normalising with the
  statistics of its batch, as in batch-norm training, and pools the per-batch
  moments exactly (weighted by batch size, in float64; not a moving average).
  With batch_size >= len(images) this is the fixed point at which every layer is
  normalised by the whole-sample mean and variance of its own input; smaller
  batches approximate it as "precise batch norm" does.

  Args:
    model: a model with norm='population'.
    variables: its variables, with 'params' and 'population_stats'.
    images: the sample, [N, H, W, C] float.
    batch_size: examples per forward pass.

  Returns:
    The new 'population_stats' collection, same tree and dtypes as the old one.
  """

  @jax.jit
  def batch_moments(variables, images_batch):
    _, state = model.apply(variables, images_batch, train=False,
                           mutable=[RECORDED_MOMENTS])
    return state[RECORDED_MOMENTS]

  def is_layer(node):
    return isinstance(node, Mapping) and set(node) == {'mean', 'var'}

  num_examples = len(images)
  weighted_sums = None
  for start in range(0, num_examples, batch_size):
    batch = images[start:start + batch_size]
    weight = len(batch) / num_examples
    # Pool the first and the raw second moment, E[x^2] = var + mean^2 per batch.
    batch_sums = jax.tree.map(
        lambda m: {'mean': weight * np.asarray(m['mean'], np.float64),
                   'var': weight * (np.asarray(m['var'], np.float64) +
                                    np.asarray(m['mean'], np.float64)**2)},
        batch_moments(variables, batch), is_leaf=is_layer)
    weighted_sums = (batch_sums if weighted_sums is None else
                     jax.tree.map(np.add, weighted_sums, batch_sums))
  pooled = jax.tree.map(
      lambda s: {'mean': s['mean'], 'var': s['var'] - s['mean']**2},
      weighted_sums, is_leaf=is_layer)
  return jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype),
                      pooled, variables[POPULATION_STATS])


def make_model_fn(model: nn.Module, model_state: Mapping[str, Any],
                  bn_mode: str) -> Callable:
  """The network as a function of its parameters.

  Args:
    model: a module of this file.
    model_state: the non-parameter collections ('batch_stats' or
      'population_stats'; empty for models without them), closed over.
    bn_mode: 'train' normalises 'batch' models with the statistics of each batch
      (the running-average updates are discarded); 'eval' with the running
      averages. 'population' and 'none' models behave the same in both.

  Returns:
    model_fn(params, batch) -> logits [B, num_classes], batch a dict with
    'image' [B, H, W, C].
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f'bn_mode must be one of {BN_MODES}, got {bn_mode!r}')

  def model_fn(params, batch):
    variables = {'params': params, **model_state}
    if bn_mode == 'train':
      logits, _ = model.apply(variables, batch['image'], train=True,
                              mutable=['batch_stats'])
      return logits
    return model.apply(variables, batch['image'], train=False)

  return model_fn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy, computed in float32 at least.

  Args:
    logits: [B, num_classes].
    labels: [B] int.

  Returns:
    [B] losses.
  """
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def output_loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Mean cross-entropy of logits: the outer loss of the Gauss-Newton matrix.

  Args:
    logits: [B, num_classes].
    batch: dict with 'label' [B] int and, optionally, 'mask' [B] (1 for real
      examples, 0 for padding); padding then counts for nothing.

  Returns:
    Scalar mean over the (unmasked) examples; 0 for a batch of padding only.
  """
  losses = cross_entropy(logits, batch['label'])
  if 'mask' not in batch:
    return losses.mean()
  mask = batch['mask'].astype(losses.dtype)
  return jnp.sum(mask * losses) / jnp.maximum(jnp.sum(mask), 1)


def make_loss_fn(model: nn.Module, model_state: Mapping[str, Any],
                 bn_mode: str) -> Callable:
  """The training loss as a function of the parameters, for the Hessian.

  Args: as `make_model_fn`. With bn_mode='train' padded examples of a masked
    batch still enter the batch statistics.

  Returns:
    loss(params, batch) -> scalar mean cross-entropy, batch a dict with 'image'
    [B, H, W, C], 'label' [B] int and optionally 'mask' [B].
  """
  model_fn = make_model_fn(model, model_state, bn_mode)
  return lambda params, batch: output_loss(model_fn(params, batch), batch)


def make_per_example_loss_fn(model: nn.Module, model_state: Mapping[str, Any],
                             bn_mode: str) -> Callable:
  """Per-example losses as a function of the parameters.

  Args: as `make_model_fn`.

  Returns:
    per_example_loss(params, batch) -> [B] cross-entropies.
  """
  model_fn = make_model_fn(model, model_state, bn_mode)
  return lambda params, batch: cross_entropy(model_fn(params, batch),
                                             batch['label'])
