"""The spectrum probe: SLQ snapshots of the training loss's Hessian.

`SpectrumProbe` builds the full-batch Hessian operator of the training loss
over a fixed set (the Hessian set) and runs stochastic Lanczos quadrature on
it; `snapshot_metrics` and `exact_metrics` turn a run into the paper's
per-snapshot numbers (one line of WORKDIR/spectra/metrics.jsonl).
"""

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import augmentation
from experiments import input_pipeline
from experiments import models
import spectral_density as sd

# A network's Hessian has a large cluster of eigenvalues at 0 (to rounding);
# the quadrature puts its weight on one node whose sign is then noise, so the
# plain negative mass can read anywhere from 0 to 1. Counting only eigenvalues
# below -1e-3 lambda_max leaves that cluster out (on the main job: 0.017 by
# SLQ, 0.014 exact; the plain measure gives 0.12 and 0.44).
NEGATIVE_TOL = 1e-3


def snapshot_metrics(result, gradient, num_classes):
  """The paper's per-snapshot numbers from one SLQ run.

  Args:
    result: `SpectrumResult` with its Lanczos basis (keep_vecs=True).
    gradient: [n] full-batch gradient of the same loss.
    num_classes: k, the number of outliers the paper expects.

  Returns:
    {'lambda_max', 'lambda_min', 'lambda_ratio' (lambda_1 / lambda_k), 'k',
    'negative_mass' (unsmoothed quadrature weight below 0),
    'negative_mass_interval' (its 90% interval, the CDF band at 0: near a
    bulk at 0 the point estimate alone misleads),
    'negative_mass_tol' (the same below -NEGATIVE_TOL * lambda_max), 'trace',
    'gradient_concentration' (||P_k g||^2 / ||g||^2, P_k the projector on the
    top-k Ritz vectors), 'gradient_norm'}.
  """
  k = min(int(num_classes), int(result.num_steps.min()))
  below = result.nodes < -NEGATIVE_TOL * result.lambda_max
  negative = result.negative_mass()
  return {
      'lambda_max': result.lambda_max,
      'lambda_min': result.lambda_min,
      'lambda_ratio': result.eigenvalue_ratio(k),
      'k': k,
      'negative_mass': float(negative),
      'negative_mass_interval': [negative.lower, negative.upper],
      'negative_mass_tol': float(np.mean(np.sum(result.weights * below, 1))),
      'trace': result.trace,
      'trace_stderr': result.trace_stderr if result.num_draws > 1 else None,
      'gradient_concentration': result.subspace_fraction(gradient, k),
      'gradient_norm': float(np.linalg.norm(np.asarray(gradient, np.float64))),
  }


class SpectrumProbe:
  """The full-batch Hessian of the training loss over a fixed set, by SLQ.

  The loss is the training cost: the mean cross-entropy plus, when
  `weight_decay` is nonzero, the weight-decay term (the authors', FACTS.md).
  The Hessian set and the operator are made once; later snapshots reuse the
  operator through `with_params` (no recompilation), unless the loss itself
  depends on the non-parameter state (population statistics, or running
  averages with bn_mode='eval'): the operator is then rebuilt, and recompiled,
  at each snapshot.
  """

  def __init__(self, hessian_config, model, norm, train, info,
               weight_decay=0.0):
    self.config = hessian_config
    self.model = model
    self.weight_decay = float(weight_decay)
    self.num_classes = info.num_classes
    self._train, self._info = train, info
    self._data = None
    self._operator = None
    self._state_dependent = (norm == 'population' or
                             (norm == 'batch' and hessian_config.bn_mode ==
                              'eval'))
    self._float64 = hessian_config.precision == 'float64'
    # The previous snapshot's spectrum (kept basis): the top eigenspace is
    # tracked from one snapshot to the next (None after a restart).
    self._previous = None
    self._operator_report = None
    self._x64 = hessian_config.precision in ('float64', 'mixed')
    # (configs older than the option: full float32, the library's default)
    self._matmul_precision = hessian_config.get('matmul_precision', 'highest')

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
            self._train, self._info, num, self.config.batch_size,
            normalized=False)
      else:
        self._data = input_pipeline.hessian_dataset(self._train, self._info,
                                                    num, normalized=False)
    return self._data

  def _cast(self, params):
    if not self._float64:
      return params
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

  def operator(self, params, model_state):
    """The `get_hvp_fn` operator at (params, model_state)."""
    if self._operator is None or self._state_dependent:
      # The set is uint8 (a quarter of the memory and transfers of float32),
      # normalised inside each product's program.
      loss = augmentation.normalized_on_device(
          models.make_loss_fn(self.model, model_state, self.config.bn_mode,
                              self.weight_decay),
          self._info.mean, self._info.std)
      self._operator, _, _ = sd.get_hvp_fn(
          loss, self._cast(params), self._dataset(),
          batch_size=None if self.config.stream else self.config.batch_size,
          matmul_precision=self._matmul_precision)
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
                      matmul_precision=self._matmul_precision,
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
               'hessian_weight_decay': self.weight_decay,
               'num_examples': int(op.num_examples or 0),
               **snapshot_metrics(result, gradient, self.num_classes)}
    k = metrics['k']
    tracking = sd.subspace_tracking(self._previous, result, gradient, k)
    metrics.update({'subspace_overlap': tracking['overlap'],
                    'subspace_min_cosine': tracking['min_cosine'],
                    'gradient_fraction_previous':
                        tracking['gradient_fraction_previous']})
    self._previous = result
    if self._operator_report is None:
      # Once per run: an operator that is not symmetric or not repeatable
      # (dropout, augmentation inside the loss) breaks SLQ silently.
      with context:
        self._operator_report = sd.check_operator(op, num_probes=1).as_dict()
      metrics['operator_check'] = self._operator_report
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
