"""Training with Hessian spectrum snapshots: `train_and_evaluate`.

SGD with momentum, data parallel over all devices with `jax.pmap` (gradients
and batch-norm statistics averaged over devices), orbax checkpoints with exact
resume, test accuracy, and at `config.hessian.snapshot_steps` the spectrum of
the full-batch Hessian of the training loss by stochastic Lanczos quadrature.

Order of work at step s (s updates done):
  1. population statistics refreshed (norm='population': every
     `population_refresh_steps`, and at every snapshot step);
  2. the spectrum snapshot, if s is a snapshot step;
  3. the update s -> s + 1 (unless s = num_steps);
  4. at s + 1: training log, evaluation, checkpoint, as configured.
A checkpoint at s holds the state after step 4 at s; a resumed run starts at
step 1 of s, so it repeats exactly what the uninterrupted run did next.

Written to WORKDIR (by process 0 only):
  config.json                 the config of the latest run.
  checkpoints/                orbax, the latest `max_checkpoints_to_keep`.
  lanczos/step_XXXXXXX/       Lanczos state during a snapshot, if configured.
  train_metrics.jsonl         {'step', 'loss', 'accuracy', 'learning_rate'}.
  eval_metrics.jsonl          {'step', 'accuracy', 'loss'} on the test split.
  spectra/step_XXXXXXX.npz    `SpectrumResult.save` (without the Lanczos basis).
  spectra/step_XXXXXXX_exact.npy  exact eigenvalues [n] (hessian.exact).
  spectra/metrics.jsonl       one line per snapshot (see `snapshot_metrics`).
  plots/*.png, summary.md     at the end (see `experiments.plots`).
Each .jsonl file is rewritten whole through a temporary file and `os.replace`,
so it is never half written; a resumed run first drops the lines that belong
after its checkpoint, so no line is repeated.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import flax
from flax import jax_utils
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from configs import default as default_config
from experiments import input_pipeline
from experiments import models
from experiments import plots
import spectral_density as sd

AXIS = 'batch'
SPECTRA_DIR = 'spectra'
CHECKPOINT_DIR = 'checkpoints'
LANCZOS_DIR = 'lanczos'
TRAIN_LOG = 'train_metrics.jsonl'
EVAL_LOG = 'eval_metrics.jsonl'
SNAPSHOT_LOG = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
# A network's Hessian has a large cluster of eigenvalues at 0 (to rounding);
# the quadrature puts its weight on one node whose sign is then noise, so the
# plain negative mass can read anywhere from 0 to 1. Counting only eigenvalues
# below -1e-3 lambda_max leaves that cluster out (on the main job: 0.017 by
# SLQ, 0.014 exact; the plain measure gives 0.12 and 0.44).
NEGATIVE_TOL = 1e-3


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


def snapshot_path(workdir, step, suffix='.npz'):
  """WORKDIR/spectra/step_XXXXXXX{suffix}."""
  return os.path.join(workdir, SPECTRA_DIR, f'step_{step:07d}{suffix}')


def learning_rate_fn(opt_config):
  """``lr(step)``: linear warm-up, then piecewise constant with drops.

  Args:
    opt_config: `config.optimizer`.

  Returns:
    A jittable function of the step (int array) giving the rate.
  """
  base = float(opt_config.learning_rate)
  drops = jnp.asarray(tuple(opt_config.lr_drop_steps) or (np.inf,))
  factor = float(opt_config.lr_drop_factor)
  warmup = int(opt_config.warmup_steps)

  def schedule(step):
    num_drops = jnp.sum(step >= drops)
    rate = base * factor ** num_drops
    if warmup:
      rate = rate * jnp.minimum(1.0, (step + 1) / warmup)
    return rate

  return schedule


def make_optimizer(opt_config, lr_fn):
  """SGD with momentum and coupled L2 weight decay on the kernels.

  `weight_decay * w` is added to the gradient of every array of rank >= 2
  before the momentum (biases and normalisation scales are not decayed).
  """
  def kernels(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)

  return optax.chain(
      optax.add_decayed_weights(float(opt_config.weight_decay), mask=kernels),
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
  """One SGD step on this device's share of the batch (inside `pmap`).

  Args:
    state: `TrainState` (this device's replica).
    batch: {'image': [B_dev, H, W, C], 'label': [B_dev]}.
    model, tx, lr_fn: the model, optimizer and its schedule.
    norm: the model's normalisation (batch statistics are averaged over
      devices after the step).

  Returns:
    (new state, {'loss', 'accuracy', 'learning_rate'} averaged over devices).
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
  grads = jax.lax.pmean(grads, AXIS)
  model_state = jax.lax.pmean(model_state, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  metrics = jax.lax.pmean({'loss': loss, 'accuracy': accuracy}, AXIS)
  metrics['learning_rate'] = lr_fn(state.step)
  new_state = state.replace(step=state.step + 1, params=params,
                            model_state=model_state, opt_state=opt_state)
  return new_state, metrics


def eval_step(state, batch, *, model):
  """Sums of correct predictions, losses and real examples (inside `pmap`)."""
  variables = {'params': state.params, **state.model_state}
  logits = model.apply(variables, batch['image'], train=False)
  mask = batch['mask']
  correct = (jnp.argmax(logits, -1) == batch['label']) * mask
  losses = models.cross_entropy(logits, batch['label']) * mask
  return jax.lax.psum({'correct': correct.sum(), 'loss': losses.sum(),
                       'count': mask.sum()}, AXIS)


def shard(batch):
  """Host batch [B_local, ...] -> [local_devices, B_local / devices, ...]."""
  devices = jax.local_device_count()
  return jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)


def evaluate(p_eval_step, rstate, test, info, batch_size):
  """Test accuracy and mean loss over every test example."""
  totals = None
  for batch in input_pipeline.eval_batches(test, info, batch_size):
    out = jax.tree.map(lambda x: np.asarray(x[0], np.float64),
                       p_eval_step(rstate, shard(batch)))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  return {'accuracy': float(totals['correct'] / totals['count']),
          'loss': float(totals['loss'] / totals['count'])}


def refresh_population_stats(model, rstate, images, batch_size):
  """Replicated state with 'population_stats' recomputed on `images`."""
  state = jax_utils.unreplicate(rstate)
  variables = {'params': state.params, **state.model_state}
  stats = models.compute_population_stats(model, variables, images,
                                          batch_size or len(images))
  model_state = {**state.model_state, models.POPULATION_STATS: stats}
  return rstate.replace(model_state=jax_utils.replicate(model_state))


def snapshot_metrics(result, gradient, num_classes):
  """The paper's per-snapshot numbers from one SLQ run.

  Args:
    result: `SpectrumResult` with its Lanczos basis (keep_vecs=True).
    gradient: [n] full-batch gradient of the same loss.
    num_classes: k, the number of outliers the paper expects.

  Returns:
    {'lambda_max', 'lambda_min', 'lambda_ratio' (lambda_1 / lambda_k), 'k',
    'negative_mass' (unsmoothed quadrature weight below 0),
    'negative_mass_tol' (the same below -NEGATIVE_TOL * lambda_max), 'trace',
    'gradient_concentration' (||P_k g||^2 / ||g||^2, P_k the projector on the
    top-k Ritz vectors), 'gradient_norm'}.
  """
  k = min(int(num_classes), int(result.num_steps.min()))
  below = result.nodes < -NEGATIVE_TOL * result.lambda_max
  return {
      'lambda_max': result.lambda_max,
      'lambda_min': result.lambda_min,
      'lambda_ratio': result.eigenvalue_ratio(k),
      'k': k,
      'negative_mass': result.negative_mass(),
      'negative_mass_tol': float(np.mean(np.sum(result.weights * below, 1))),
      'trace': result.trace,
      'gradient_concentration': result.subspace_fraction(gradient, k),
      'gradient_norm': float(np.linalg.norm(np.asarray(gradient, np.float64))),
  }


class SpectrumProbe:
  """The full-batch Hessian of the training loss over a fixed set, by SLQ.

  The Hessian set and the operator are made once; later snapshots reuse the
  operator through `with_params` (no recompilation), unless the loss itself
  depends on the non-parameter state (population statistics, or running
  averages with bn_mode='eval'): the operator is then rebuilt, and recompiled,
  at each snapshot.
  """

  def __init__(self, hessian_config, model, norm, train, info):
    self.config = hessian_config
    self.model = model
    self.num_classes = info.num_classes
    self._train, self._info = train, info
    self._data = None
    self._operator = None
    self._state_dependent = (norm == 'population' or
                             (norm == 'batch' and hessian_config.bn_mode ==
                              'eval'))
    self._float64 = hessian_config.precision == 'float64'
    self._x64 = hessian_config.precision in ('float64', 'mixed')

  def _dataset(self):
    """The Hessian set: resident arrays, or a stream for sets too large."""
    if self._data is None:
      num = self.config.num_examples
      size = input_pipeline.data_size(self._train)
      num = size if num is None else min(num, size)
      if self.config.stream:
        # With several processes each streams its share, decoded once; the
        # operator adds the shares.
        self._data = input_pipeline.prepare_hessian_set(
            self._train, self._info, num, self.config.batch_size)
      else:
        self._data = input_pipeline.hessian_dataset(self._train, self._info,
                                                    num)
    return self._data

  def _cast(self, params):
    if not self._float64:
      return params
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

  def operator(self, params, model_state):
    """The `get_hvp_fn` operator at (params, model_state)."""
    if self._operator is None or self._state_dependent:
      loss = models.make_loss_fn(self.model, model_state, self.config.bn_mode)
      self._operator, _, _ = sd.get_hvp_fn(
          loss, self._cast(params), self._dataset(),
          batch_size=None if self.config.stream else self.config.batch_size)
    else:
      self._operator = self._operator.with_params(self._cast(params))
    return self._operator

  def __call__(self, params, model_state, rng_key, exact=False,
               checkpoint_dir=None, progress=False):
    """One snapshot.

    Args:
      params, model_state: the network (host or device arrays, one replica).
      rng_key: start vectors of the Lanczos draws.
      exact: also the exact eigenvalues (dense Hessian, eigh).
      checkpoint_dir: Lanczos checkpoints (with
        `hessian.lanczos_checkpoint_every`), or None.
      progress: passed to `lanczos_draws` (a callable gets a status dict).

    Returns:
      (`SpectrumResult` with its basis, metrics dict, exact eigenvalues [n]
      or None).
    """
    context = jax.enable_x64(True) if self._x64 else contextlib.nullcontext()
    timings = {}
    with context:
      start = time.perf_counter()
      op = self.operator(params, model_state)
      every = self.config.lanczos_checkpoint_every
      result = sd.slq(op, op.num_params, order=self.config.order,
                      num_draws=self.config.num_draws, rng_key=rng_key,
                      precision=self.config.precision, keep_vecs=True,
                      basis=self.config.basis,
                      checkpoint_dir=checkpoint_dir if every else None,
                      checkpoint_every=every,
                      progress=progress if every else False)
      gradient = np.asarray(op.gradient())
      loss = float(op.loss())
      timings['seconds_slq'] = time.perf_counter() - start
      eigenvalues = None
      if exact:
        start = time.perf_counter()
        matrix = sd.dense_matrix(op, op.num_params, dtype=op.dtype)
        timings['seconds_dense_hessian'] = time.perf_counter() - start
        start = time.perf_counter()
        eigenvalues = sd.exact_eigenvalues(matrix)
        del matrix
        timings['seconds_eigh'] = time.perf_counter() - start
    metrics = {'loss': loss, 'num_params': int(op.num_params),
               'num_examples': int(op.num_examples or 0),
               **snapshot_metrics(result, gradient, self.num_classes)}
    if eigenvalues is not None:
      metrics.update(exact_metrics(eigenvalues, self.num_classes))
    metrics.update(timings)
    return result, metrics, eigenvalues


def exact_metrics(eigenvalues, num_classes):
  """The exact counterparts of `snapshot_metrics` (prefixed 'exact_')."""
  ev = np.sort(np.asarray(eigenvalues, np.float64))
  k = min(int(num_classes), ev.size)
  return {'exact_lambda_max': float(ev[-1]), 'exact_lambda_min': float(ev[0]),
          'exact_lambda_ratio': float(ev[-1] / ev[-k]),
          'exact_negative_mass': float(np.mean(ev < 0)),
          'exact_negative_mass_tol': float(
              np.mean(ev < -NEGATIVE_TOL * ev[-1])),
          'exact_trace': float(ev.sum())}


class JsonLines:
  """Records with a 'step', kept in memory and in a JSON-lines file.

  Every change rewrites the whole file through a temporary file and
  `os.replace`, so a reader (or a kill) never sees a half-written file.
  Non-writing processes keep the records in memory only.
  """

  def __init__(self, path, write):
    self.path = path
    self.write = write
    self.records = []
    if os.path.exists(path):
      with open(path) as f:
        self.records = [json.loads(line) for line in f if line.strip()]

  def keep(self, predicate):
    """Drops the records for which predicate(record) is false."""
    kept = [r for r in self.records if predicate(r)]
    if len(kept) != len(self.records):
      self.records = kept
      self._flush()

  def append(self, record):
    self.records.append(record)
    self._flush()

  def _flush(self):
    if not self.write:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = f'{self.path}.tmp'
    with open(tmp, 'w') as f:
      for record in self.records:
        f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)


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


def save_checkpoint(manager, rstate):
  """Saves the replicated state (one replica, on the host) at its step."""
  state = jax.device_get(jax_utils.unreplicate(rstate))
  manager.save(int(state.step), args=ocp.args.StandardSave(
      serialization.to_state_dict(state)))


def _mean_metrics(history):
  """Mean over steps of per-step (replicated) metric dicts."""
  stacked = jax.device_get([jax.tree.map(lambda x: x[0], m) for m in history])
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config, workdir):
  """Trains, evaluates and takes spectrum snapshots; resumes from workdir.

  Args:
    config: ConfigDict as `configs.default` (validated first).
    workdir: where checkpoints, logs, spectra and plots go.

  Returns:
    {'state': the final `TrainState` (host arrays), 'eval': last evaluation,
    'snapshots': snapshot records, 'train': training log records,
    'stopped_early': whether `stop_after_steps` ended the run}.
  """
  default_config.validate(config)
  workdir = os.path.abspath(workdir)
  writer = jax.process_index() == 0
  run_start = time.time()
  if writer:
    os.makedirs(os.path.join(workdir, SPECTRA_DIR), exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
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
      os.path.join(workdir, CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.max_checkpoints_to_keep, create=True))
  state = restore_latest(manager, state)
  start_step = int(state.step)
  num_steps = config.num_steps

  train_log = JsonLines(os.path.join(workdir, TRAIN_LOG), writer)
  eval_log = JsonLines(os.path.join(workdir, EVAL_LOG), writer)
  snapshot_log = JsonLines(os.path.join(workdir, SPECTRA_DIR, SNAPSHOT_LOG),
                           writer)
  # What a killed run wrote after its last checkpoint is redone below.
  train_log.keep(lambda r: r['step'] <= start_step)
  eval_log.keep(lambda r: r['step'] <= start_step)
  snapshot_log.keep(lambda r: r['step'] < start_step)

  probe = SpectrumProbe(config.hessian, model, norm, train, info)
  snapshot_steps = set(config.hessian.snapshot_steps)
  exact_steps = set(config.hessian.exact_steps or
                    config.hessian.snapshot_steps[-1:])
  population_images = None
  if norm == 'population':
    population_images = input_pipeline.hessian_dataset(
        train, info, config.model.population_num_examples)['image']

  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, tx=tx, lr_fn=lr_fn,
                        norm=norm), axis_name=AXIS)
  p_eval_step = jax.pmap(functools.partial(eval_step, model=model),
                         axis_name=AXIS)
  rstate = jax_utils.replicate(state)
  batches = input_pipeline.prefetch_to_device(input_pipeline.train_batches(
      train, info, config.batch_size, seed=config.seed, start_step=start_step,
      num_workers=config.dataset.get('num_workers') or 0))
  stop = config.stop_after_steps
  history, last_eval = [], (eval_log.records[-1] if eval_log.records else None)
  bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=not writer,
                  desc='train', unit='step', dynamic_ncols=True,
                  mininterval=1.0)

  def take_snapshot(step):
    host = jax.device_get(jax_utils.unreplicate(rstate))
    key = jax.random.fold_in(jax.random.wrap_key_data(host.rng), step)
    exact = config.hessian.exact and step in exact_steps
    bar.set_description(f'snapshot {step}')
    lanczos_dir = os.path.join(workdir, LANCZOS_DIR, f'step_{step:07d}')

    def progress(info):
      bar.set_description(f"snapshot {step}: Lanczos step {info['step']}/"
                          f"{info['order']}, ETA {info['eta_seconds']:.0f} s")

    result, metrics, eigenvalues = probe(host.params, host.model_state, key,
                                         exact=exact,
                                         checkpoint_dir=lanczos_dir,
                                         progress=progress)
    bar.set_description('train')
    record = {'step': step, **metrics,
              'wall_time': time.time() - run_start}
    if writer:
      dataclasses.replace(result, vecs=None).save(snapshot_path(workdir, step))
      if eigenvalues is not None:
        np.save(snapshot_path(workdir, step, '_exact.npy'), eigenvalues)
    snapshot_log.append(record)
    if writer:
      shutil.rmtree(lanczos_dir, ignore_errors=True)
    logging.info('Snapshot at step %d: %s', step, json.dumps(record))

  stopped_early = False
  for step in range(start_step, num_steps + 1):
    if norm == 'population' and (
        step % config.model.population_refresh_steps == 0 or
        step in snapshot_steps):
      rstate = refresh_population_stats(
          model, rstate, population_images, config.model.population_batch_size)
    if step in snapshot_steps:
      take_snapshot(step)
    if step == num_steps:
      break
    rstate, metrics = p_train_step(rstate, next(batches))
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
      last_eval = {'step': done, **evaluate(p_eval_step, rstate, test, info,
                                            config.eval_batch_size)}
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
  return {'state': jax.device_get(jax_utils.unreplicate(rstate)),
          'eval': last_eval, 'snapshots': snapshot_log.records,
          'train': train_log.records, 'stopped_early': stopped_early}
