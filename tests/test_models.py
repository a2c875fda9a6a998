"""Tests of experiments/models.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models

# A ResNet small enough to compile in a second, with a stride-2 stage (and so a
# projection shortcut) in each stem.
TINY = {
    'cifar': functools.partial(models.ResNet, stage_sizes=(1, 1),
                               num_filters=4, stem='cifar', num_classes=3),
    'imagenet': functools.partial(models.ResNet, stage_sizes=(1, 1),
                                  num_filters=4, stem='imagenet',
                                  num_classes=3),
}


def num_params(model, input_shape):
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), jnp.zeros(input_shape))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(
      variables['params']))


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def test_mlp_has_the_papers_15910_parameters():
  model = models.create_model('mlp', 10, 'none')
  assert num_params(model, (1, 28, 28, 1)) == 784 * 20 + 20 + 20 * 10 + 10
  assert num_params(model, (1, 28, 28, 1)) == 15_910


@pytest.mark.parametrize('norm', models.NORMS)
def test_resnet32_has_466906_parameters_for_every_norm(norm):
  # Stem 464, stages 23,360 + 88,768 + 353,664 (with 1x1 projections), head 650.
  model = models.create_model('resnet32', 10, norm)
  assert num_params(model, (1, 32, 32, 3)) == 466_906


def test_resnet18_matches_torchvision_parameter_count():
  model = models.create_model('resnet18', 1000, 'batch')
  assert num_params(model, (1, 224, 224, 3)) == 11_689_512


def test_create_model_rejects_unknown_names_and_a_normalised_mlp():
  with pytest.raises(ValueError, match='model must be one of'):
    models.create_model('vgg', 10, 'batch')
  with pytest.raises(ValueError, match='no normalisation'):
    models.create_model('mlp', 10, 'batch')
  with pytest.raises(ValueError, match='norm must be one of'):
    models.create_model('resnet32', 10, 'layer').init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_variable_collections_of_each_norm():
  collections = {
      norm: sorted(models.init_variables(TINY['cifar'](norm=norm),
                                         jax.random.key(0), (1, 8, 8, 3)))
      for norm in models.NORMS}
  assert collections == {'batch': ['batch_stats', 'params'],
                         'population': ['params', 'population_stats'],
                         'none': ['params']}


@pytest.mark.parametrize('stem', ['cifar', 'imagenet'])
@pytest.mark.parametrize('norm', models.NORMS)
@pytest.mark.parametrize('bn_mode', models.BN_MODES)
def test_every_variant_has_finite_loss_and_gradient(stem, norm, bn_mode):
  model = TINY[stem](norm=norm)
  params, state = models.split_variables(
      models.init_variables(model, jax.random.key(0), (1, 16, 16, 3)))
  batch = {'image': images((4, 16, 16, 3)), 'label': jnp.array([0, 1, 2, 0])}
  loss_fn = models.make_loss_fn(model, state, bn_mode)
  loss, grads = jax.value_and_grad(loss_fn)(params, batch)
  grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
  assert np.isfinite(loss) and loss > 0
  assert np.isfinite(grad_norm) and grad_norm > 0


@pytest.mark.parametrize('norm, bn_mode, depends', [
    ('batch', 'train', True),
    ('batch', 'eval', False),
    ('population', 'train', False),
    ('population', 'eval', False),
])
def test_output_depends_on_other_examples_only_with_batch_statistics(
    norm, bn_mode, depends):
  model = TINY['cifar'](norm=norm)
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = images((4, 8, 8, 3))
  if norm == 'population':
    variables = {**variables, models.POPULATION_STATS:
                 models.compute_population_stats(model, variables, x, 4)}
  params, state = models.split_variables(variables)
  model_fn = models.make_model_fn(model, state, bn_mode)
  logits = model_fn(params, {'image': x})
  perturbed = model_fn(params, {'image': x.at[1].multiply(3.0)})
  change = float(jnp.max(jnp.abs(perturbed[0] - logits[0])))
  assert (change > 1e-3) if depends else (change == 0.0)
  assert float(jnp.max(jnp.abs(perturbed[1] - logits[1]))) > 1e-3


def test_population_stats_of_first_layer_are_pooled_over_uneven_batches():
  model = TINY['cifar'](norm='population')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = images((10, 8, 8, 3))
  stats = models.compute_population_stats(model, variables, x, batch_size=4)
  # The stem's input does not depend on any normalisation: its statistics are
  # those of the convolution's output over all 10 examples.
  kernel = variables['params']['conv_init']['kernel']
  stem = nn.Conv(4, (3, 3), use_bias=False).apply(
      {'params': {'kernel': kernel}}, x)
  stem = np.asarray(stem, np.float64).reshape(-1, 4)
  np.testing.assert_allclose(stats['norm_init']['mean'], stem.mean(0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['norm_init']['var'], stem.var(0),
                             rtol=1e-5)
  assert jax.tree.structure(stats) == jax.tree.structure(
      variables[models.POPULATION_STATS])


def test_population_stats_of_one_whole_batch_reproduce_batch_norm_training():
  # With the whole sample in one batch, every layer is normalised by the
  # statistics of its own input: batch norm's training forward pass.
  x = images((6, 8, 8, 3))
  population = TINY['cifar'](norm='population')
  variables = models.init_variables(population, jax.random.key(0), (1, 8, 8, 3))
  stats = models.compute_population_stats(population, variables, x, 6)
  with_stats = {**variables, models.POPULATION_STATS: stats}
  batch_norm = TINY['cifar'](norm='batch')
  bn_state = models.init_variables(batch_norm, jax.random.key(1), (1, 8, 8, 3))
  expected, _ = batch_norm.apply(
      {'params': variables['params'], 'batch_stats': bn_state['batch_stats']},
      x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(population.apply(with_stats, x, train=False),
                             expected, rtol=1e-4, atol=1e-5)


def test_population_stats_get_no_gradient():
  model = TINY['cifar'](norm='population')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  batch = {'image': images((4, 8, 8, 3)), 'label': jnp.array([0, 1, 2, 0])}

  def loss_of_state(state):
    return models.make_loss_fn(model, state, 'eval')(variables['params'], batch)

  grads = jax.grad(loss_of_state)(
      {models.POPULATION_STATS: variables[models.POPULATION_STATS]})
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_unnormalised_residual_branches_start_at_zero():
  # Zero-initialised last scales make every block the identity at init, so the
  # logits do not depend on the kernels inside the residual branches.
  model = TINY['cifar'](norm='none')
  params = models.init_variables(model, jax.random.key(0),
                                 (1, 8, 8, 3))['params']
  x = images((2, 8, 8, 3))
  blocks = [name for name in params if name.startswith('ResNetBlock')]
  assert len(blocks) == 2
  scrambled = {**params, **{
      name: {**params[name], 'conv_0': {'kernel': 5 + params[name]['conv_0']
                                                              ['kernel']}}
      for name in blocks}}
  for name in blocks:
    np.testing.assert_array_equal(params[name]['norm_1']['scale'], 0.0)
  np.testing.assert_array_equal(model.apply({'params': scrambled}, x),
                                model.apply({'params': params}, x))


def test_batch_norm_train_mode_differs_from_eval_and_leaves_state_unchanged():
  model = TINY['cifar'](norm='batch')
  params, state = models.split_variables(
      models.init_variables(model, jax.random.key(0), (1, 8, 8, 3)))
  batch = {'image': 2.0 + images((4, 8, 8, 3)),
           'label': jnp.array([0, 1, 2, 0])}
  before = jax.tree.map(np.array, state)
  train_loss = models.make_loss_fn(model, state, 'train')(params, batch)
  eval_loss = models.make_loss_fn(model, state, 'eval')(params, batch)
  assert abs(float(train_loss) - float(eval_loss)) > 1e-3
  jax.tree.map(np.testing.assert_array_equal, state, before)


def test_mlp_loss_matches_numpy_cross_entropy():
  model = models.create_model('mlp', 10, 'none')
  params = models.init_variables(model, jax.random.key(0),
                                 (1, 28, 28, 1))['params']
  rng = np.random.default_rng(0)
  x = rng.random((5, 28, 28, 1), np.float32)
  labels = np.array([3, 1, 4, 1, 5])
  batch = {'image': x, 'label': labels}

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  hidden = np.tanh(x.reshape(5, -1) @ p['Dense_0']['kernel'] +
                   p['Dense_0']['bias'])
  logits = hidden @ p['Dense_1']['kernel'] + p['Dense_1']['bias']
  log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + \
      logits.max(1)
  expected = log_z - logits[np.arange(5), labels]

  per_example_loss = models.make_per_example_loss_fn(model, {}, 'eval')
  per_example = per_example_loss(params, batch)
  loss = models.make_loss_fn(model, {}, 'eval')(params, batch)
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
  logits_fn = models.make_model_fn(model, {}, 'eval')
  np.testing.assert_allclose(logits_fn(params, batch), logits, rtol=1e-5,
                             atol=1e-6)


def test_output_loss_averages_over_unmasked_examples_only():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
  labels = jnp.array([0, 0, 1])
  expected = np.array([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))]).mean()
  loss = models.output_loss(logits, {'label': labels,
                                     'mask': jnp.array([1.0, 1.0, 0.0])})
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  empty = models.output_loss(logits, {'label': labels, 'mask': jnp.zeros(3)})
  assert float(empty) == 0.0


def test_float64_model_has_float64_parameters_and_logits():
  with jax.enable_x64(True):
    model = models.create_model('mlp', 10, 'none', dtype=jnp.float64)
    params = models.init_variables(model, jax.random.key(0),
                                   (1, 28, 28, 1))['params']
    logits = model.apply({'params': params}, jnp.ones((2, 28, 28, 1)))
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype('float64')}
    assert logits.dtype == jnp.float64


def test_bfloat16_model_keeps_float32_parameters():
  model = models.create_model('resnet32', 10, 'batch', dtype=jnp.bfloat16)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {
      jnp.dtype('float32')}
