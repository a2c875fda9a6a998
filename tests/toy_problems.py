"""Small losses with independent references, shared by the core tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def classification_data(num_examples, num_features, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, num_features))
  y = rng.integers(0, num_classes, num_examples)
  return {'x': x, 'y': y.astype(np.int32)}


def batches_of(data, batch_size):
  """Consecutive batches of a dict of arrays (the last one may be short)."""
  n = len(next(iter(data.values())))
  return [jax.tree.map(lambda x, i=i: x[i:i + batch_size], data)
          for i in range(0, n, batch_size)]


def cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]


def mlp_params(num_features, hidden, num_classes, seed=0, dtype=jnp.float64):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
      'w1': (jax.random.normal(k1, (num_features, hidden)) /
             np.sqrt(num_features)).astype(dtype),
      'b1': jnp.full((hidden,), 0.1, dtype),
      'w2': (jax.random.normal(k2, (hidden, num_classes)) /
             np.sqrt(hidden)).astype(dtype),
      'b2': jnp.zeros((num_classes,), dtype),
  }


def mlp_logits(params, batch):
  h = jnp.tanh(batch['x'] @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def mlp_per_example_loss(params, batch):
  return cross_entropy(mlp_logits(params, batch), batch['y'])


def mlp_loss(params, batch):
  return jnp.mean(mlp_per_example_loss(params, batch))


def output_loss(logits, batch):
  return jnp.mean(cross_entropy(logits, batch['y']))


def logistic_hessian(w, x, y):
  """Closed form: ``X^T diag(p (1 - p)) X / N`` for the mean logistic loss."""
  del y
  p = 1 / (1 + np.exp(-(x @ w)))
  return (x * (p * (1 - p))[:, None]).T @ x / x.shape[0]


def logistic_loss(w, batch):
  z = batch['x'] @ w
  return jnp.mean(jnp.logaddexp(0, z) - batch['y'] * z)


class ConvBN(nn.Module):
  """A tiny conv net with batch norm, for losses that couple a batch."""

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(4, (3, 3), strides=(2, 2), dtype=x.dtype,
                param_dtype=x.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, dtype=x.dtype,
                     param_dtype=x.dtype)(x)
    x = jnp.tanh(x)
    x = x.mean(axis=(1, 2))
    return nn.Dense(3, dtype=x.dtype, param_dtype=x.dtype)(x)


def conv_bn_problem(num_examples, seed=0, dtype=jnp.float64):
  """``(loss, params, data)``; the loss uses each batch's own statistics."""
  rng = np.random.default_rng(seed)
  data = {'x': rng.normal(size=(num_examples, 6, 6, 2)).astype(dtype),
          'y': rng.integers(0, 3, num_examples).astype(np.int32)}
  model = ConvBN()
  variables = model.init(jax.random.key(seed), jnp.asarray(data['x'][:2]))
  stats = variables['batch_stats']

  def loss(params, batch):
    logits, _ = model.apply({'params': params, 'batch_stats': stats},
                            batch['x'], mutable=['batch_stats'])
    return jnp.mean(cross_entropy(logits, batch['y']))

  return loss, variables['params'], data


def dense_hessian(loss, params, batch):
  """Reference Hessian by `jax.hessian` (forward-over-reverse on the flat
  vector, a different path from the library's column-by-column products)."""
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat))


def batched_reference(loss, params, data, batch_size):
  """``sum_b (n_b / N) H_b`` over consecutive batches, with the last short."""
  n = len(data['y'])
  total = 0
  for start in range(0, n, batch_size):
    batch = jax.tree.map(lambda a: a[start:start + batch_size], data)
    total = total + len(batch['y']) / n * dense_hessian(loss, params, batch)
  return total
