"""Models of the paper and the loss functions whose Hessian is studied.

Every model is called as `model.apply(variables, images, train=..., mask=...)`
with images `[B, H, W, C]` and returns logits `[B, num_classes]`: the paper's
MLP (here) and the ResNets (`experiments.resnets`, which describes the
normalisation variants `norm` and the parameter counts).
"""

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments import population
from experiments import resnets

Dtype = Any

NORMS = resnets.NORMS
BN_MODES = ('train', 'eval')
POPULATION_STATS = population.POPULATION_STATS


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
  def __call__(self, x, train: bool = True, mask=None):
    """Args: x [B, ...]; train, mask: unused (the signature of all models).

    Returns: logits [B, num_classes].
    """
    del train, mask
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = x.reshape((x.shape[0], -1))
    for width in self.features:
      x = self.activation(dense(width)(x))
    return dense(self.num_classes)(x)


# The ResNets live in `experiments.resnets`; named here too, for the callers.
PreActResNet, ResNet = resnets.PreActResNet, resnets.ResNet
ResNet32, ResNet32He, ResNet18, ResNet8 = (
    resnets.ResNet32, resnets.ResNet32He, resnets.ResNet18, resnets.ResNet8)
MODELS = {'mlp': MLP, 'resnet32': ResNet32, 'resnet32_he': ResNet32He,
          'resnet18': ResNet18, 'resnet8': ResNet8}


def create_model(name: str, num_classes: int, norm: str,
                 dtype: Dtype | None = None) -> nn.Module:
  """The model of a config name.

  Args:
    name: one of MODELS.
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
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
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


def decayed(params: Any) -> Any:
  """Which parameters weight decay applies to: the convolution and dense
  kernels (the authors' 'DW' variables), not biases or normalisation scales.

  Returns: a tree of bools with the structure of params.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def weight_decay_penalty(params: Any, weight_decay: float) -> jax.Array:
  """`weight_decay * sum(||w||^2 / 2)` over the decayed kernels (TF's l2_loss).

  Its gradient is `weight_decay * w` on the kernels, what the optimizer adds
  (`optax.add_decayed_weights` with the mask `decayed`).
  """
  mask = jax.tree.leaves(decayed(params))
  squares = [jnp.sum(jnp.square(p.astype(jnp.promote_types(p.dtype,
                                                           jnp.float32))))
             for p, m in zip(jax.tree.leaves(params), mask) if m]
  return 0.5 * weight_decay * sum(squares)


def make_model_fn(model: nn.Module, model_state: Mapping[str, Any],
                  bn_mode: str) -> Callable:
  """The network as a function of its parameters.

  Args:
    model: a module of this file.
    model_state: the non-parameter collections ('batch_stats' or
      'population_stats'; empty for models without them), closed over.
    bn_mode: 'train' normalises 'batch' models with the statistics of each batch
      (its real examples, where it has a 'mask'; the running-average updates
      are discarded); 'eval' with the running averages. The other norms
      behave the same in both.

  Returns:
    model_fn(params, batch) -> logits [B, num_classes], batch a dict with
    'image' [B, H, W, C] and optionally 'mask' [B].
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f'bn_mode must be one of {BN_MODES}, got {bn_mode!r}')

  def model_fn(params, batch):
    variables = {'params': params, **model_state}
    mask = batch.get('mask')
    if bn_mode == 'train':
      logits, _ = model.apply(variables, batch['image'], train=True,
                              mask=mask, mutable=['batch_stats'])
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
                 bn_mode: str, weight_decay: float = 0.0) -> Callable:
  """The training loss as a function of the parameters, for the Hessian.

  Args: as `make_model_fn`, and
    weight_decay: the coefficient of `weight_decay_penalty`, added to every
      batch's loss; the operator's example-weighted mean over batches then
      holds it once, as the authors' training cost (FACTS.md).

  Returns:
    loss(params, batch) -> scalar mean cross-entropy (+ the penalty), batch a
    dict with 'image' [B, H, W, C], 'label' [B] int and optionally 'mask' [B].
  """
  model_fn = make_model_fn(model, model_state, bn_mode)

  def loss(params, batch):
    value = output_loss(model_fn(params, batch), batch)
    if weight_decay:
      value = value + weight_decay_penalty(params, weight_decay)
    return value

  return loss


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
