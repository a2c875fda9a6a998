"""Tests of experiments/train.py: training, snapshots, resume (8 CPU devices).

The MLP runs on 8x8 crops of the embedded Fashion-MNIST (64-20-10, 1,510
parameters; 6x6 and 950 where the exact spectrum is computed), so that a run
takes seconds.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
import pytest

import spectral_density as sd
from configs import mlp_fashion_mnist
from experiments import input_pipeline
from experiments import layout
from experiments import models
from experiments import probe
from experiments import train
from experiments import workdir

VOLATILE = ('wall_time', 'seconds_slq', 'seconds_dense_hessian',
            'seconds_eigh')
# The bases are not saved, so a resumed run's first snapshot has no previous
# top-k space to compare with, and it checks its operator again.
TRACKING = ('subspace_overlap', 'subspace_min_cosine',
            'gradient_fraction_previous', 'operator_check')


def mlp_config(**overrides):
  """The main job's config, small: 8x8 crops, few steps, tiny Hessian set."""
  config = mlp_fashion_mnist.get_config()
  with config.unlocked():
    config.dataset.image_size = 8
    config.num_steps = 30
    config.optimizer.lr_drop_steps = ()
    config.log_every_steps = 5
    config.eval_every_steps = 15
    config.checkpoint_every_steps = 15
    config.hessian.snapshot_steps = (0, 30)
    config.hessian.num_examples = 300
    config.hessian.batch_size = 100
    config.hessian.order = 40
    config.hessian.num_draws = 2
    config.hessian.exact = False
    config.write_plots = False
    for key, value in overrides.items():
      section, _, name = key.rpartition('__')
      (config[section] if section else config)[name] = value
  return config


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def stable(records):
  return [{k: v for k, v in r.items() if k not in VOLATILE + TRACKING}
          for r in records]


def test_learning_rate_schedule_warms_up_and_drops_tenfold():
  config = mlp_config(optimizer__warmup_steps=4,
                      optimizer__lr_drop_steps=(10, 20))
  schedule = train.learning_rate_fn(config.optimizer)
  rates = [float(schedule(jnp.asarray(s))) for s in (0, 3, 9, 10, 19, 20)]
  np.testing.assert_allclose(rates, [0.025, 0.1, 0.1, 0.01, 0.01, 0.001],
                             rtol=1e-6)


def test_training_loss_falls_on_the_embedded_data(tmp_path):
  config = mlp_config(num_steps=60, hessian__snapshot_steps=(),
                      dataset__image_size=20)
  out = train.train_and_evaluate(config, str(tmp_path))
  losses = [r['loss'] for r in out['train']]
  assert [r['step'] for r in out['train']] == list(range(5, 61, 5))
  # Chance level is log(10) = 2.30; measured: 1.90 over the first 5 steps,
  # 0.63 over the last 5, test accuracy 0.71.
  assert losses[0] > 1.5
  assert losses[-1] < 0.45 * losses[0]
  assert out['eval']['step'] == 60 and out['eval']['accuracy'] > 0.65
  assert int(out['state'].step) == 60


def test_snapshots_reload_and_match_a_recomputation(tmp_path):
  config = mlp_config(hessian__exact=True, hessian__exact_steps=(0, 30),
                      write_plots=True, dataset__image_size=6)
  out = train.train_and_evaluate(config, str(tmp_path))
  records = read_jsonl(tmp_path / 'spectra' / 'metrics.jsonl')
  assert [r['step'] for r in records] == [0, 30]
  assert records == out['snapshots']

  for record in records:
    step = record['step']
    saved = sd.SpectrumResult.load(workdir.snapshot_path(str(tmp_path), step))
    assert saved.vecs is None and saved.tridiag.shape == (2, 40, 40)
    assert record['lambda_max'] == saved.lambda_max
    assert record['lambda_min'] == saved.lambda_min
    # The recorded trace is deflated with the Krylov bases (not saved); the
    # saved result alone gives the plain estimate. The deflated one is
    # checked against the exact trace below.
    assert record['trace_stderr'] > 0  # 2 draws
    assert record['negative_mass'] == saved.negative_mass()
    below = saved.nodes < -probe.NEGATIVE_TOL * saved.lambda_max
    assert record['negative_mass_tol'] == np.mean(
        np.sum(saved.weights * below, axis=1))
    assert record['lambda_ratio'] == saved.eigenvalue_ratio(10)
    exact = np.load(workdir.exact_path(str(tmp_path), step))
    assert exact.shape == (950,) and record['num_params'] == 950
    assert record['exact_lambda_max'] == float(exact[-1])
    # Two order-40 draws on 950 parameters: the deflated trace is within 15%
    # (measured 13.6% at step 0, 2.5% at step 30); tests/test_estimators.py
    # checks its accuracy and standard error properly.
    np.testing.assert_allclose(record['trace'], exact.sum(), rtol=0.15)
    assert record['exact_negative_mass_tol'] == np.mean(
        exact < -probe.NEGATIVE_TOL * exact[-1])
    assert record['hessian_weight_decay'] == 0.0  # the MLP's weight decay
    # Order-40 SLQ finds the top eigenvalues of a 950-dimensional Hessian.
    np.testing.assert_allclose(saved.top_eigenvalues(3), exact[::-1][:3],
                               rtol=1e-4)

  # An independent reference at the final parameters: jax.hessian of the mean
  # loss over the same 300 examples, and a fresh SLQ with the same key.
  train_data, _, info = input_pipeline.load_dataset(config)
  data = input_pipeline.hessian_dataset(train_data, info, 300)
  model = models.create_model('mlp', 10, 'none')
  loss = models.make_loss_fn(model, {}, 'train')
  params = out['state'].params
  flat, unravel = ravel_pytree(params)
  dense = jax.hessian(lambda w: loss(unravel(w), data))(flat)
  reference = np.linalg.eigvalsh(np.asarray(dense, np.float64))
  exact = np.load(workdir.exact_path(str(tmp_path), 30))
  np.testing.assert_allclose(exact, reference, atol=2e-5 * reference[-1])
  final = records[-1]
  np.testing.assert_allclose(final['loss'], float(loss(params, data)),
                             rtol=1e-5)

  # In the run's precision (the configs' default 'mixed': float64 Lanczos
  # vectors, so x64 on).
  with jax.enable_x64(config.hessian.precision != 'float32'):
    hvp_fn, _, n = sd.get_hvp_fn(loss, params, data, batch_size=100)
    key = jax.random.fold_in(jax.random.wrap_key_data(out['state'].rng), 30)
    fresh = sd.slq(hvp_fn, n, order=40, num_draws=2, rng_key=key,
                   keep_vecs=True, precision=config.hessian.precision)
    metrics = probe.snapshot_metrics(fresh, hvp_fn.gradient(), 10)
  for name in ('lambda_max', 'lambda_min', 'trace', 'negative_mass_tol',
               'gradient_concentration', 'gradient_norm'):
    np.testing.assert_allclose(metrics[name], final[name], rtol=1e-5,
                               err_msg=name)
  assert 0 < final['gradient_concentration'] < 1

  # The top eigenspace over training: nothing to compare with at step 0; at
  # step 30 the overlap with step 0's top-10 Ritz space and the gradient's
  # share in it, recomputed from a fresh SLQ at step 0's parameters.
  assert records[0]['subspace_overlap'] is None
  assert records[0]['operator_check']['ok']
  assert 'operator_check' not in records[1]
  assert 0 <= final['subspace_overlap'] <= 1
  assert 0 <= final['gradient_fraction_previous'] <= 1

  plots = set(os.listdir(tmp_path / 'plots'))
  assert plots == {'density_step_0000000.png', 'density_step_0000030.png',
                   'densities.png', 'curvature.png', 'exact_vs_slq.png',
                   'training.png'}
  summary = (tmp_path / 'summary.md').read_text()
  assert '| step | loss | λ_max |' in summary and 'exact λ_max' in summary


def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path):
  overrides = dict(num_steps=12, checkpoint_every_steps=4, log_every_steps=2,
                   eval_every_steps=6, hessian__snapshot_steps=(0, 4, 5, 12),
                   hessian__num_examples=100, hessian__order=10,
                   hessian__num_draws=1)
  whole = train.train_and_evaluate(mlp_config(**overrides),
                                   str(tmp_path / 'whole'))

  # Killed after step 6: the last checkpoint is at step 4, and the snapshot
  # at step 5 and the logs up to step 6 were already written. This run also
  # checkpoints its Lanczos runs, which must change nothing.
  killed_dir = str(tmp_path / 'killed')
  killed = train.train_and_evaluate(
      mlp_config(stop_after_steps=6, hessian__lanczos_checkpoint_every=3,
                 **overrides), killed_dir)
  assert killed['stopped_early'] and int(killed['state'].step) == 6
  assert [r['step'] for r in killed['snapshots']] == [0, 4, 5]
  assert not os.listdir(os.path.join(killed_dir, 'lanczos'))
  resumed = train.train_and_evaluate(mlp_config(**overrides), killed_dir)

  assert int(resumed['state'].step) == 12
  for a, b in zip(jax.tree.leaves(whole['state']),
                  jax.tree.leaves(resumed['state'])):
    np.testing.assert_array_equal(a, b)
  whole_lines = read_jsonl(tmp_path / 'whole' / 'spectra' / 'metrics.jsonl')
  resumed_lines = read_jsonl(tmp_path / 'killed' / 'spectra' /
                             'metrics.jsonl')
  assert [r['step'] for r in resumed_lines] == [0, 4, 5, 12]
  assert stable(resumed_lines) == stable(whole_lines)
  for name in ('train_metrics.jsonl', 'eval_metrics.jsonl'):
    assert (read_jsonl(tmp_path / 'killed' / name) ==
            read_jsonl(tmp_path / 'whole' / name)), name


def test_jsonl_rewrites_are_whole_and_drop_records_past_a_step(tmp_path):
  path = str(tmp_path / 'log.jsonl')
  log = workdir.JsonLines(path, write=True)
  for step in range(5):
    log.append({'step': step, 'x': step * 0.5})
  again = workdir.JsonLines(path, write=True)
  assert again.records == log.records
  again.keep(lambda r: r['step'] < 3)
  assert [r['step'] for r in read_jsonl(path)] == [0, 1, 2]
  assert not os.path.exists(path + '.tmp')
  workdir.JsonLines(str(tmp_path / 'other.jsonl'), write=False).append(
      {'step': 0})
  assert not os.path.exists(tmp_path / 'other.jsonl')


def test_learning_rate_schedule_is_the_authors_piecewise_constant():
  config = mlp_config(optimizer__lr_drop_steps=(33_000, 66_000))
  schedule = train.learning_rate_fn(config.optimizer)
  rates = [float(schedule(jnp.asarray(s)))
           for s in (0, 32_999, 33_000, 65_999, 66_000, 99_999)]
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                             rtol=1e-6)


@pytest.mark.parametrize('num_devices', [1, 4])
def test_training_normalises_over_the_batch_the_hessian_uses(num_devices):
  # One SGD step (rate 1, no momentum) on a batch of 8 split over 1 or 4
  # devices moves the parameters by minus the gradient of the Hessian's loss
  # over the same 8 examples in one batch (weight-decay term included), and
  # leaves the running averages of that batch's statistics.
  model = models.PreActResNet(stage_sizes=(1, 1), num_filters=4,
                              num_classes=3, norm='batch')
  params, model_state = models.split_variables(
      models.init_variables(model, jax.random.key(0), (1, 8, 8, 3)))
  config = mlp_config(optimizer__learning_rate=1.0, optimizer__momentum=0.0,
                      optimizer__weight_decay=2e-4)
  lr_fn = train.learning_rate_fn(config.optimizer)
  tx = train.make_optimizer(config.optimizer, lr_fn)
  state = train.TrainState(step=np.array(0, np.int32), params=params,
                           model_state=model_state,
                           opt_state=tx.init(params),
                           rng=jax.random.key_data(jax.random.key(0)))
  batch = {'image': 1.0 + jax.random.normal(jax.random.key(1), (8, 8, 8, 3)),
           'label': jnp.array([0, 1, 2, 0, 1, 2, 0, 1])}
  mesh = layout.data_mesh(jax.local_devices()[:num_devices])
  train_fn, _ = train.compile_steps(model, tx, lr_fn, 'batch', mesh)
  placed = layout.global_batch(batch, mesh)
  assert len(placed['image'].addressable_shards) == num_devices
  # (From host copies: the step donates the state it is given.)
  new, metrics = train_fn(layout.replicate(jax.device_get(state), mesh),
                          placed)
  assert new.params['Dense_0']['kernel'].sharding == layout.replicated(mesh)
  new = layout.to_host(new)
  hessian_loss = models.make_loss_fn(model, model_state, 'train', 2e-4)
  grads = jax.grad(hessian_loss)(params, batch)
  moved = jax.tree.map(lambda a, b: a - b, params, new.params)
  for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(
      metrics['loss'],
      models.make_loss_fn(model, model_state, 'train')(params, batch),
      rtol=1e-5)
  _, updates = model.apply({'params': params, **model_state}, batch['image'],
                           train=True, mutable=['batch_stats'])
  for got, want in zip(jax.tree.leaves(new.model_state['batch_stats']),
                       jax.tree.leaves(updates['batch_stats'])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_probe_tracks_the_top_eigenspace_between_snapshots():
  # Two snapshots of the same parameters with the same key: the same top-10
  # Ritz space, so the overlap is 1 and the gradient's share in the previous
  # space is its share in the current one.
  config = mlp_config(dataset__image_size=6, hessian__num_examples=200,
                      hessian__order=30, hessian__num_draws=1)
  train_data, _, info = input_pipeline.load_dataset(config)
  model = models.create_model('mlp', 10, 'none')
  params = models.init_variables(model, jax.random.key(0),
                                 (1, 6, 6, 1))['params']
  spectrum_probe = probe.SpectrumProbe(config.hessian, model, 'none',
                                       train_data, info, 0.0)
  key = jax.random.key(3)
  _, first, _ = spectrum_probe(params, {}, key)
  _, second, _ = spectrum_probe(params, {}, key)
  assert first['subspace_overlap'] is None
  assert first['operator_check']['symmetric']
  np.testing.assert_allclose(second['subspace_overlap'], 1.0, atol=1e-6)
  np.testing.assert_allclose(second['gradient_fraction_previous'],
                             second['gradient_concentration'], rtol=1e-6)
