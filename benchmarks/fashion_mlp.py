"""The paper's exact-check problem: the 784-20-10 tanh MLP on Fashion-MNIST.

Shared by the benchmark, the exact-spectrum check and its reduced test, so all
three measure the same model on the same data.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import input_pipeline
from experiments import models

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO.parent / 'shared' / 'data' / 'fashion-mnist'


def sgd_momentum_step(loss, learning_rate=0.1):
  """``(tx, step)``: SGD with momentum 0.9 and its jitted step
  ``step(params, opt_state, batch) -> (params, opt_state)``."""
  tx = optax.sgd(learning_rate, momentum=0.9)

  @jax.jit
  def step(params, opt_state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return tx, step


def data_dir():
  return pathlib.Path(os.environ.get('FASHION_MNIST_DIR', DEFAULT_DATA_DIR))


def load_images(num_examples, pool=1, directory=None):
  """The first `num_examples` training images, in [0, 1], average-pooled.

  Args:
    num_examples: how many, from the start of the training split.
    pool: average-pooling factor (2 gives 14x14 images: the reduced problem).
    directory: IDX directory; default $FASHION_MNIST_DIR or ../shared.

  Returns:
    ``{'image': float32 [N, 28/pool, 28/pool, 1], 'label': int32 [N]}``.
  """
  raw = input_pipeline.read_idx_dataset(directory or data_dir(), 'train')
  images = raw['image'][:num_examples].astype(np.float32) / 255.0
  if pool > 1:
    n, h, w, c = images.shape
    images = images.reshape(n, h // pool, pool, w // pool, pool, c).mean((2, 4))
  return {'image': images, 'label': raw['label'][:num_examples]}


def trained_problem(data, *, train_steps=300, batch_size=100, seed=0,
                    dtype=jnp.float32):
  """``(loss, params)`` of the MLP after `train_steps` SGD steps on `data`.

  Trained briefly so that the spectrum has the outliers of a trained network
  (at initialisation it is nearly all bulk).
  """
  model = models.create_model('mlp', 10, 'none')
  variables = models.init_variables(model, jax.random.key(seed),
                                    (1,) + data['image'].shape[1:])
  params, state = models.split_variables(variables)
  loss = models.make_loss_fn(model, state, 'eval')
  opt, step = sgd_momentum_step(loss)
  opt_state = opt.init(params)
  n = len(data['label'])
  order = np.random.default_rng(seed).permutation(n)
  for s in range(train_steps):
    idx = order[(s * batch_size) % n:][:batch_size]
    params, opt_state = step(params, opt_state,
                             jax.tree.map(lambda a: a[idx], data))
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  return loss, params
