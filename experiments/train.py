"""Training: `train_and_evaluate`, with spectrum snapshots along the way.

SGD with momentum, data parallel over all devices of all processes: one `jit`
over the mesh of `experiments.layout`, the batch split along its 'data' axis
and the state replicated (so gradients, metrics and the batch-norm statistics
are those of the global batch, as the Hessian's), orbax
checkpoints with exact resume, test accuracy, population statistics refreshed
(`experiments.population`), and at `config.hessian.snapshot_steps` the
spectrum of the training loss's Hessian (`experiments.probe`).

Order of work at step s (s updates done):
  1. population statistics refreshed (norm='population': every
     `population_refresh_steps` before the last step, and at every snapshot
     step);
  2. the spectrum snapshot, if s is a snapshot step;
  3. the update s -> s + 1 (unless s = num_steps);
  4. at s + 1: training log, evaluation, checkpoint, as configured.
A checkpoint at s holds the state after step 4 at s; a resumed run starts at
step 1 of s, so it repeats exactly what the uninterrupted run did next.
The files it writes are listed in `experiments.workdir`; a resumed run first
drops the log lines that belong after its checkpoint, so no line is repeated.
"""

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import flax
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from experiments import config_checks
from experiments import input_pipeline
from experiments import layout
from experiments import models
from experiments import plots
from experiments import population
from experiments import probe as probe_lib
from experiments import workdir as wd


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs (the data order follows from the step).

  Attributes:
    step: [] int32, updates done.
    params: the model's parameters.
    model_state: the other collections ('batch_stats' or 'population_stats').
    opt_state: the optimizer's state.
    rng: [2] uint32 key data; snapshot s draws its start vectors from
      `fold_in(rng, s)`.
  """
  step: Any
  params: Any
  model_state: Any
  opt_state: Any
  rng: Any


def learning_rate_fn(opt_config):
  """``lr(step)``: piecewise constant with drops, after an optional warm-up.

  The authors' schedule (FACTS.md) is TF's `piecewise_constant`; here
  `optax.piecewise_constant_schedule`, the rate multiplied by `lr_drop_factor`
  from each step of `lr_drop_steps` on, times `optax.linear_schedule` from
  1 / warmup_steps to 1 over the first warmup_steps steps (ours, for large
  batches; 0: none).

  Args:
    opt_config: `config.optimizer`.

  Returns:
    A jittable function of the step (int array) giving the rate.
  """
  # optax scales from the boundary on (step >= b).
  drops = optax.piecewise_constant_schedule(
      float(opt_config.learning_rate),
      {int(s): float(opt_config.lr_drop_factor)
       for s in opt_config.lr_drop_steps})
  warmup = int(opt_config.warmup_steps)
  if not warmup:
    return drops
  ramp = optax.linear_schedule(1.0 / warmup, 1.0, max(warmup - 1, 1))
  return lambda step: drops(step) * ramp(step)


def make_optimizer(opt_config, lr_fn):
  """SGD with momentum and coupled L2 weight decay on the kernels.

  `weight_decay * w` is added to the gradient of the convolution and dense
  kernels (`models.decayed`) before the momentum: the gradient of the
  authors' `weight_decay * l2_loss` term (`models.weight_decay_penalty`).
  """
  return optax.chain(
      optax.add_decayed_weights(float(opt_config.weight_decay),
                                mask=models.decayed),
      optax.sgd(lr_fn, momentum=float(opt_config.momentum) or None,
                nesterov=bool(opt_config.nesterov)))


def create_train_state(config, model, image_shape, tx):
  """The initial state, on the host (numpy arrays)."""
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  variables = models.init_variables(model, init_key, (1, *image_shape))
  params, model_state = models.split_variables(variables)
  state = TrainState(step=np.array(0, np.int32), params=params,
                     model_state=model_state, opt_state=tx.init(params),
                     rng=jax.random.key_data(state_key))
  return jax.device_get(state)


def train_step(state, batch, *, model, tx, lr_fn, norm):
  """One SGD step on the global batch (under `jit` over the data mesh).

  Args:
    state: `TrainState`.
    batch: {'image': [B, H, W, C], 'label': [B]}, the global batch (split
      over the devices; the batch-norm statistics are still those of all B).
    model, tx, lr_fn: the model, optimizer and its schedule.
    norm: the model's normalisation.

  Returns:
    (new state, {'loss', 'accuracy', 'learning_rate'} over the batch).
  """
  def loss_fn(params):
    variables = {'params': params, **state.model_state}
    if norm == 'batch':
      logits, updates = model.apply(variables, batch['image'], train=True,
                                    mutable=['batch_stats'])
      new_model_state = {**state.model_state, **updates}
    else:
      logits = model.apply(variables, batch['image'], train=True)
      new_model_state = state.model_state
    loss = models.cross_entropy(logits, batch['label']).mean()
    return loss, (new_model_state, logits)

  (loss, (model_state, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  metrics = {'loss': loss, 'accuracy': accuracy,
             'learning_rate': lr_fn(state.step)}
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state=model_state, opt_state=opt_state)
  return new_state, metrics


def eval_step(state, batch, *, model):
  """Sums of correct predictions, losses and real examples of the batch."""
  variables = {'params': state.params, **state.model_state}
  logits = model.apply(variables, batch['image'], train=False)
  mask = batch['mask']
  correct = (jnp.argmax(logits, -1) == batch['label']) * mask
  losses = models.cross_entropy(logits, batch['label']) * mask
  return {'correct': correct.sum(), 'loss': losses.sum(), 'count': mask.sum()}


def compile_steps(model, tx, lr_fn, norm, mesh):
  """(train step, eval step) as `jit`s over `mesh`: the state replicated, the
  batch split over the 'data' axis; the train step reuses the state's
  buffers (donated)."""
  state, batch = layout.replicated(mesh), layout.batch_sharding(mesh)
  train = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                    lr_fn=lr_fn, norm=norm),
                  in_shardings=(state, batch), out_shardings=(state, state),
                  donate_argnums=0)
  evaluate_fn = jax.jit(functools.partial(eval_step, model=model),
                        in_shardings=(state, batch), out_shardings=state)
  return train, evaluate_fn


def evaluate(eval_fn, state, test, info, batch_size, mesh):
  """Test accuracy and mean loss over every test example."""
  totals = None
  for batch in input_pipeline.eval_batches(test, info, batch_size):
    out = jax.tree.map(lambda x: np.asarray(x, np.float64),
                       eval_fn(state, layout.global_batch(batch, mesh)))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  return {'accuracy': float(totals['correct'] / totals['count']),
          'loss': float(totals['loss'] / totals['count'])}


def population_batches(train, info, model_config):
  """This process's share of the population set, as `PopulationStats` batches.

  The set is the first `population_num_examples` training examples (None: all),
  preprocessed without augmentation; each process takes a contiguous share.
  """
  images = input_pipeline.hessian_dataset(
      train, info, model_config.population_num_examples)['image']
  share = np.array_split(np.arange(len(images)), jax.process_count())[
      jax.process_index()]
  batch = model_config.population_batch_size // jax.process_count()
  return population.array_batches(images[share[0]:share[-1] + 1], batch)


def refresh_population_stats(stats_fn, state, batches, mesh):
  """The (replicated) state with 'population_stats' recomputed by
  `stats_fn`."""
  variables = {'params': state.params, **state.model_state}
  stats = stats_fn(variables, batches)
  model_state = {**state.model_state, models.POPULATION_STATS: stats}
  return state.replace(model_state=layout.replicate(model_state, mesh))


def restore_latest(manager, state):
  """The state of the latest checkpoint of `manager`, else `state` itself.

  Args:
    manager: an orbax `CheckpointManager`.
    state: a `TrainState` of host arrays, the structure to restore into.
  """
  latest = manager.latest_step()
  if latest is None:
    return state
  restored = manager.restore(latest, args=ocp.args.StandardRestore(
      serialization.to_state_dict(state)))
  logging.info('Resumed from the checkpoint of step %d.', latest)
  return serialization.from_state_dict(state, restored)


def save_checkpoint(manager, state):
  """Saves the replicated state (this process's copy, on the host) at its
  step."""
  state = layout.to_host(state)
  manager.save(int(state.step), args=ocp.args.StandardSave(
      serialization.to_state_dict(state)))


def _mean_metrics(history):
  """Mean over steps of per-step (replicated) metric dicts."""
  stacked = layout.to_host(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config, workdir):
  """Trains, evaluates and takes spectrum snapshots; resumes from workdir.

  Args:
    config: ConfigDict as `configs.default` (checked first by
      `experiments.config_checks.validate`).
    workdir: where checkpoints, logs, spectra and plots go.

  Returns:
    {'state': the final `TrainState` (host arrays), 'eval': last evaluation,
    'snapshots': snapshot records, 'train': training log records,
    'stopped_early': whether `stop_after_steps` ended the run}.
  """
  config_checks.validate(config)
  workdir = os.path.abspath(workdir)
  writer = jax.process_index() == 0
  run_start = time.time()
  if writer:
    os.makedirs(os.path.join(workdir, wd.SPECTRA_DIR), exist_ok=True)
    with open(os.path.join(workdir, wd.CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=1) + '\n')
  train, test, info = input_pipeline.load_dataset(config)
  norm = config.model.norm
  model = models.create_model(config.model.name, info.num_classes, norm)
  if config.hessian.snapshot_steps and config.hessian.order < info.num_classes:
    logging.warning('hessian.order %d < %d classes: the outlier metrics use '
                    'k = %d.', config.hessian.order, info.num_classes,
                    config.hessian.order)
  lr_fn = learning_rate_fn(config.optimizer)
  tx = make_optimizer(config.optimizer, lr_fn)
  state = create_train_state(config, model, info.image_shape, tx)

  manager = ocp.CheckpointManager(
      os.path.join(workdir, wd.CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.max_checkpoints_to_keep, create=True))
  state = restore_latest(manager, state)
  start_step = int(state.step)
  num_steps = config.num_steps

  train_log = wd.JsonLines(os.path.join(workdir, wd.TRAIN_LOG), writer)
  eval_log = wd.JsonLines(os.path.join(workdir, wd.EVAL_LOG), writer)
  snapshot_log = wd.JsonLines(os.path.join(workdir, wd.SNAPSHOT_LOG), writer)
  # What a killed run wrote after its last checkpoint is redone below.
  train_log.keep(lambda r: r['step'] <= start_step)
  eval_log.keep(lambda r: r['step'] <= start_step)
  snapshot_log.keep(lambda r: r['step'] < start_step)

  weight_decay = (config.optimizer.weight_decay
                  if config.hessian.include_weight_decay else 0.0)
  probe = probe_lib.SpectrumProbe(config.hessian, model, norm, train, info,
                                  weight_decay)
  snapshot_steps = set(config.hessian.snapshot_steps)
  exact_steps = set(config.hessian.exact_steps or
                    config.hessian.snapshot_steps[-1:])
  if norm == 'population':
    population_stats = population.PopulationStats(
        model, config.model.population_mode)
    population_set = population_batches(train, info, config.model)

  mesh = layout.data_mesh()
  train_fn, eval_fn = compile_steps(model, tx, lr_fn, norm, mesh)
  rstate = layout.replicate(state, mesh)
  batches = input_pipeline.prefetch_to_device(input_pipeline.train_batches(
      train, info, config.batch_size, seed=config.seed, start_step=start_step,
      num_workers=config.dataset.get('num_workers') or 0), mesh)
  stop = config.stop_after_steps
  history, last_eval = [], (eval_log.records[-1] if eval_log.records else None)
  bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=not writer,
                  desc='train', unit='step', dynamic_ncols=True,
                  mininterval=1.0)

  def take_snapshot(step):
    host = layout.to_host(rstate)
    key = jax.random.fold_in(jax.random.wrap_key_data(host.rng), step)
    exact = config.hessian.exact and step in exact_steps
    bar.set_description(f'snapshot {step}')
    lanczos_dir = wd.lanczos_dir(workdir, step)

    def progress(info):
      bar.set_description(f"snapshot {step}: Lanczos step {info['step']}/"
                          f"{info['order']}, ETA {info['eta_seconds']:.0f} s")

    model_state = host.model_state
    if norm == 'population' and config.hessian.precision == 'float64':
      # The run's precision: a float64 Hessian gets float64 statistics (the
      # training state keeps its float32 ones).
      with jax.enable_x64(True):
        model_state = {**model_state, models.POPULATION_STATS: population_stats(
            {'params': host.params, **model_state}, population_set,
            dtype=jnp.float64)}
    result, metrics, eigenvalues = probe(host.params, model_state, key,
                                         exact=exact,
                                         checkpoint_dir=lanczos_dir,
                                         progress=progress)
    bar.set_description('train')
    record = {'step': step, **metrics,
              'wall_time': time.time() - run_start}
    if writer:
      dataclasses.replace(result, vecs=None).save(
          wd.snapshot_path(workdir, step))
      if eigenvalues is not None:
        np.save(wd.exact_path(workdir, step), eigenvalues)
    snapshot_log.append(record)
    if writer:
      shutil.rmtree(lanczos_dir, ignore_errors=True)
    logging.info('Snapshot at step %d: %s', step, json.dumps(record))

  stopped_early = False
  for step in range(start_step, num_steps + 1):
    # (Not after the last update unless a snapshot needs it: nothing uses it.)
    if norm == 'population' and (
        (step % config.model.population_refresh_steps == 0 and
         step < num_steps) or step in snapshot_steps):
      rstate = refresh_population_stats(population_stats, rstate,
                                        population_set, mesh)
    if step in snapshot_steps:
      take_snapshot(step)
    if step == num_steps:
      break
    rstate, metrics = train_fn(rstate, next(batches))
    history.append(metrics)
    done = step + 1
    bar.update(1)
    if done % config.log_every_steps == 0 or done == num_steps:
      record = {'step': done, **_mean_metrics(history)}
      history = []
      if not np.isfinite(record['loss']):
        raise FloatingPointError(f'training loss is {record["loss"]} at step '
                                 f'{done}: lower the learning rate.')
      train_log.append(record)
      bar.set_postfix(loss=f'{record["loss"]:.4f}')
      logging.info('step %d: %s', done, record)
    if done % config.eval_every_steps == 0 or done == num_steps:
      last_eval = {'step': done, **evaluate(eval_fn, rstate, test, info,
                                            config.eval_batch_size, mesh)}
      eval_log.append(last_eval)
      logging.info('eval at step %d: %s', done, last_eval)
    if done % config.checkpoint_every_steps == 0 or done == num_steps:
      save_checkpoint(manager, rstate)
    if stop is not None and done >= stop and done < num_steps:
      logging.info('Stopping after step %d (config.stop_after_steps).', done)
      stopped_early = True
      break
  bar.close()
  manager.wait_until_finished()
  manager.close()

  if writer and not stopped_early:
    summary = plots.write_summary(workdir)
    print(summary)
    if config.write_plots:
      plots.write_all(workdir)
  return {'state': layout.to_host(rstate),
          'eval': last_eval, 'snapshots': snapshot_log.records,
          'train': train_log.records, 'stopped_early': stopped_early}
