"""Tests of experiments/models.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.flatten_util import ravel_pytree

from experiments import models
from experiments import population

# ResNets small enough to compile in a second, each with a stage that changes
# the shape (so a projection or option-A shortcut).
TINY = {
    'cifar': functools.partial(models.ResNet, stage_sizes=(1, 1),
                               num_filters=4, stem='cifar', num_classes=3),
    'imagenet': functools.partial(models.ResNet, stage_sizes=(1, 1),
                                  num_filters=4, stem='imagenet',
                                  num_classes=3),
    'preact': functools.partial(models.PreActResNet, stage_sizes=(1, 1),
                                num_filters=4, num_classes=3),
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


# The authors' ResNet-32: first conv 432; stage 1: 5 x (32 + 2,304 + 32 +
# 2,304); stage 2: 13,920 + 4 x 18,560; stage 3: 55,488 + 4 x 73,984; final
# norm 128, dense 650. Normalisation: 2,272 parameters; SkipInit: 15 gains.
@pytest.mark.parametrize('name, norm, expected', [
    ('resnet32', 'batch', 464_154), ('resnet32', 'population', 464_154),
    ('resnet32', 'none', 461_882), ('resnet32', 'skipinit', 461_897),
    ('resnet8', 'batch', 75_290), ('resnet8', 'none', 74_810),
    ('resnet32_he', 'batch', 466_906), ('resnet32_he', 'population', 466_906),
    ('resnet32_he', 'none', 464_442), ('resnet32_he', 'skipinit', 464_457),
])
def test_resnet32_parameter_counts(name, norm, expected):
  model = models.create_model(name, 10, norm)
  assert num_params(model, (1, 32, 32, 3)) == expected


def test_authors_resnet32_is_the_authors_architecture():
  model = models.create_model('resnet32', 10, 'batch')
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables['params']
  units = sorted(k for k in params if k.startswith('PreActBlock'))
  assert len(units) == 15
  widths = [params[u]['conv_1']['kernel'].shape[-1] for u in sorted(
      units, key=lambda k: int(k.split('_')[1]))]
  assert widths == [16] * 5 + [32] * 5 + [64] * 5
  assert params['conv_init']['kernel'].shape == (3, 3, 3, 16)
  # Option A: no projection convolutions anywhere.
  assert not any('proj' in name for u in units for name in params[u])
  assert 'norm_final' in params and 'bias' not in params['conv_init']


def test_resnet18_matches_torchvision_parameter_count():
  model = models.create_model('resnet18', 1000, 'batch')
  assert num_params(model, (1, 224, 224, 3)) == 11_689_512


def test_create_model_rejects_unknown_names_and_a_normalised_mlp():
  with pytest.raises(ValueError, match='model must be one of'):
    models.create_model('vgg', 10, 'batch')
  with pytest.raises(ValueError, match='no normalisation'):
    models.create_model('mlp', 10, 'batch')
  with pytest.raises(ValueError, match='norm must be one of'):
    models.create_model('resnet32', 10, 'layer')


@pytest.mark.parametrize('kind', ['cifar', 'preact'])
def test_variable_collections_of_each_norm(kind):
  collections = {
      norm: sorted(models.init_variables(TINY[kind](norm=norm),
                                         jax.random.key(0), (1, 8, 8, 3)))
      for norm in models.NORMS}
  assert collections == {'batch': ['batch_stats', 'params'],
                         'population': ['params', 'population_stats'],
                         'none': ['params'], 'skipinit': ['params']}


# bn_mode matters only to 'batch'; the other norms run in 'train' mode.
@pytest.mark.parametrize('kind', ['imagenet', 'preact'])
@pytest.mark.parametrize('norm, bn_mode', [
    ('batch', 'train'), ('batch', 'eval'), ('population', 'train'),
    ('none', 'train'), ('skipinit', 'train')])
def test_every_variant_has_finite_loss_and_gradient(kind, norm, bn_mode):
  model = TINY[kind](norm=norm)
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
  model = TINY['preact'](norm=norm)
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = images((4, 8, 8, 3))
  if norm == 'population':
    stats = population.PopulationStats(model, 'exact', jax.local_devices()[:1])
    variables = {**variables, models.POPULATION_STATS: stats(
        variables, population.array_batches(np.asarray(x), 4))}
  params, state = models.split_variables(variables)
  model_fn = models.make_model_fn(model, state, bn_mode)
  logits = model_fn(params, {'image': x})
  perturbed = model_fn(params, {'image': x.at[1].multiply(3.0)})
  change = float(jnp.max(jnp.abs(perturbed[0] - logits[0])))
  assert (change > 1e-3) if depends else (change == 0.0)
  assert float(jnp.max(jnp.abs(perturbed[1] - logits[1]))) > 1e-3


def test_masked_examples_leave_the_batch_statistics_and_the_loss():
  model = TINY['preact'](norm='batch')
  params, state = models.split_variables(
      models.init_variables(model, jax.random.key(0), (1, 8, 8, 3)))
  x, labels = images((6, 8, 8, 3)), jnp.array([0, 1, 2, 0, 1, 2])
  loss_fn = models.make_loss_fn(model, state, 'train')
  real = loss_fn(params, {'image': x[:4], 'label': labels[:4]})
  padded = loss_fn(params, {'image': x.at[4:].set(100.0), 'label': labels,
                            'mask': jnp.array([1.0, 1, 1, 1, 0, 0])})
  np.testing.assert_allclose(padded, real, rtol=1e-5)


def whole_set_moments(variables, x):
  """Reference: the batch-norm network's training forward pass over the whole
  set in one batch normalises every layer by the whole-set mean and variance
  of its input, the layers below already so normalised: the definition. From
  running averages started at 0 with momentum 0.9, they are 10 x the update."""
  batch_norm = TINY['preact'](norm='batch')
  zeros = jax.tree.map(jnp.zeros_like, models.init_variables(
      batch_norm, jax.random.key(1), (1, 8, 8, 3))['batch_stats'])
  _, updates = batch_norm.apply(
      {'params': variables['params'], 'batch_stats': zeros}, x, train=True,
      mutable=['batch_stats'])
  return jax.tree.map(lambda m: np.asarray(m, np.float64) / 0.1,
                      updates['batch_stats'])


@pytest.mark.parametrize('num_devices', [1, 4])
def test_exact_population_stats_are_the_whole_set_moments(num_devices):
  # 10 examples in batches of 4 over 1 or 4 devices: the last batch is half
  # padding, which must count for nothing.
  model = TINY['preact'](norm='population')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = 1.5 + images((10, 8, 8, 3))
  stats_fn = population.PopulationStats(model, 'exact',
                                        jax.local_devices()[:num_devices])
  stats = stats_fn(variables, population.array_batches(np.asarray(x), 4))
  reference = whole_set_moments(variables, x)
  assert jax.tree.structure(stats) == jax.tree.structure(reference)
  for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # With them, the population network is the batch-norm network in training
  # on the whole set.
  batch_norm = TINY['preact'](norm='batch')
  expected, _ = batch_norm.apply(
      {'params': variables['params'], 'batch_stats': jax.tree.map(
          jnp.zeros_like, reference)}, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(
      model.apply({**variables, models.POPULATION_STATS: stats}, x,
                  train=True), expected, rtol=1e-4, atol=1e-5)


def test_precise_population_stats_approximate_the_exact_ones():
  model = TINY['preact'](norm='population')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = np.asarray(1.5 + images((16, 8, 8, 3)))
  devices = jax.local_devices()[:1]
  exact = population.PopulationStats(model, 'exact', devices)(
      variables, population.array_batches(x, 4))
  one_batch = population.PopulationStats(model, 'precise', devices)(
      variables, population.array_batches(x, 16))
  small = population.PopulationStats(model, 'precise', devices)(
      variables, population.array_batches(x, 4))
  for e, o in zip(jax.tree.leaves(exact), jax.tree.leaves(one_batch)):
    np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5)
  # Per-batch normalisation of batches of 4 changes the layers above the
  # first; the first layer's input does not depend on any normalisation.
  gaps = [float(np.max(np.abs(s - e) / (np.abs(e) + 1e-3)))
          for s, e in zip(jax.tree.leaves(small), jax.tree.leaves(exact))]
  assert max(gaps) > 1e-2


def test_population_stats_get_no_gradient():
  model = TINY['preact'](norm='population')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  batch = {'image': images((4, 8, 8, 3)), 'label': jnp.array([0, 1, 2, 0])}

  def loss_of_state(state):
    return models.make_loss_fn(model, state, 'eval')(variables['params'], batch)

  grads = jax.grad(loss_of_state)(
      {models.POPULATION_STATS: variables[models.POPULATION_STATS]})
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('kind', ['cifar', 'preact'])
def test_skipinit_residual_branches_start_at_zero(kind):
  # Zero gains make every block the identity at init (up to its shortcut),
  # so the logits do not depend on the kernels inside the residual branches.
  model = TINY[kind](norm='skipinit')
  params = models.init_variables(model, jax.random.key(0),
                                 (1, 8, 8, 3))['params']
  x = images((2, 8, 8, 3))
  blocks = [name for name in params if 'Block' in name]
  assert len(blocks) == 2
  scrambled = {**params, **{
      name: {**params[name], 'conv_1': {'kernel': 5 + params[name]['conv_1']
                                                              ['kernel']}}
      for name in blocks}}
  for name in blocks:
    assert float(params[name]['skip_gain']) == 0.0
  np.testing.assert_array_equal(model.apply({'params': scrambled}, x),
                                model.apply({'params': params}, x))


def test_plain_resnet_scales_the_last_convolution_of_each_branch():
  params = models.init_variables(models.create_model('resnet32', 10, 'none'),
                                 jax.random.key(0), (1, 32, 32, 3))['params']
  assert not any('norm' in name for unit in params.values() for name in unit)
  last = params['PreActBlock_14']['conv_1']['kernel']  # 3x3, 64 -> 64
  first = params['PreActBlock_14']['conv_0']['kernel']
  # He (fan-out) variance 2 / (9 * 64), divided by the 15 branches for the
  # last convolution.
  np.testing.assert_allclose(np.std(first), np.sqrt(2 / 576), rtol=0.02)
  np.testing.assert_allclose(np.std(last), np.sqrt(2 / 576 / 15), rtol=0.02)


def test_option_a_shortcut_average_pools_and_zero_pads_channels():
  x = images((2, 8, 8, 4))
  block = models.resnets.PreActBlock(
      8, strides=2, activate_before_residual=False,
      conv=functools.partial(nn.Conv, use_bias=False), norm=models.resnets.
      Identity, variant='none', num_branches=2)
  block_params = block.init(jax.random.key(0), x)['params']
  block_params['conv_1']['kernel'] = jnp.zeros_like(
      block_params['conv_1']['kernel'])
  out = block.apply({'params': block_params}, x)
  pooled = np.asarray(x).reshape(2, 4, 2, 4, 2, 4).mean((2, 4))
  expected = np.concatenate([np.zeros((2, 4, 4, 2)), pooled,
                             np.zeros((2, 4, 4, 2))], -1)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_authors_batch_norm_has_epsilon_1e3_and_momentum_0_9():
  model = TINY['preact'](norm='batch')
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  x = 2.0 + images((6, 8, 8, 3))
  _, state = model.apply(variables, x, train=True,
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=True)
  stem = nn.Conv(4, (3, 3), use_bias=False).apply(
      {'params': variables['params']['conv_init']}, x)
  stem = np.asarray(stem, np.float64)
  mean, var = stem.mean((0, 1, 2)), stem.var((0, 1, 2))
  updated = state['batch_stats']['PreActBlock_0']['norm_0']
  np.testing.assert_allclose(updated['mean'], 0.1 * mean, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(updated['var'], 0.9 + 0.1 * var, rtol=1e-5)
  normalised = state['intermediates']['PreActBlock_0']['norm_0'][
      '__call__'][0]
  np.testing.assert_allclose(normalised, (stem - mean) / np.sqrt(var + 1e-3),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kind', ['preact', 'mlp'])
def test_weight_decay_adds_wd_to_the_hessian_along_decayed_parameters(kind):
  # Dense Hessians by jax.hessian, in float64: with the penalty minus without
  # is wd on the diagonal entries of the conv and dense kernels, 0 elsewhere.
  wd = 2e-4
  with jax.enable_x64(True):
    if kind == 'mlp':
      model = models.MLP(features=(5,), num_classes=3, param_dtype=jnp.float64)
    else:  # 147 parameters, 15 of them not decayed
      model = models.PreActResNet(stage_sizes=(1,), num_filters=2,
                                  num_classes=3, param_dtype=jnp.float64)
    params, state = models.split_variables(
        models.init_variables(model, jax.random.key(0), (1, 4, 4, 3)))
    batch = {'image': images((4, 4, 4, 3)).astype(jnp.float64),
             'label': jnp.array([0, 1, 2, 0])}
    flat, unravel = ravel_pytree(params)
    mask, _ = ravel_pytree(jax.tree.map(
        lambda p, d: jnp.full(p.shape, float(d)), params,
        models.decayed(params)))

    def hessian(weight_decay):
      loss = models.make_loss_fn(model, state, 'train', weight_decay)
      return np.asarray(jax.hessian(lambda w: loss(unravel(w), batch))(flat))

    difference = hessian(wd) - hessian(0.0)
  assert 0 < mask.sum() < mask.size  # biases and norm parameters exist
  np.testing.assert_allclose(difference, wd * np.diag(np.asarray(mask)),
                             atol=1e-12)


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


def test_population_stats_in_float64_are_the_float64_moments():
  # A 'float64' run keeps its statistics in float64 (they were rounded to
  # float32, 1e-7 relative): the whole-set moments of a float64 forward pass.
  model = TINY['preact'](norm='population')
  with jax.enable_x64(True):
    variables = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64),
        models.init_variables(model, jax.random.key(0), (1, 8, 8, 3)))
    x = np.asarray(1.5 + images((8, 8, 8, 3)), np.float32)
    stats = population.PopulationStats(model, 'exact', jax.local_devices()[:1])(
        variables, population.array_batches(x, 4), dtype=jnp.float64)
    reference = whole_set_moments(variables, jnp.asarray(x, jnp.float64))
  for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(reference)):
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
