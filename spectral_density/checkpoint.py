"""Orbax checkpoints of a Lanczos run, so that a killed run resumes exactly.

A run of order 90 over ImageNet is hours of products; its state (step, alphas,
betas, basis and start keys) is saved every few steps. Orbax writes each save
to a temporary directory and renames it, so a kill mid-save leaves the previous
save intact. The settings and keys are saved too, and the identity of the
operator (`identity`: its curvature and its product of a fixed probe vector,
which tells apart other parameters, data or matrices at the cost of one
product): a rerun with other settings or another operator refuses to resume
rather than mixing two runs. A rerun that differs only in
the number of devices the basis is split over (basis='sharded' on another
topology, or 'device' / 'host' against 'sharded') resumes: the saved slices
are reassembled and split the new way.

Imported only when `checkpoint_dir` is given: orbax is an optional dependency.
It imports the Lanczos-side modules (`recurrence`, `state_layout`); none of
them imports it back.
"""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from spectral_density import recurrence
from spectral_density import state_layout

_PROBE_KEY = 20190709  # fixed: the probe vectors are the same in every run


def identity(matvec, dim, dtype, masks=None):
  """What a run computes, as JSON: the operator's curvature, the masks'
  digest, and ``[|A p|, p . A p, q . A p]`` for fixed unit vectors ``p, q``
  (one product). Float64 on the host.

  Args:
    matvec: the run's operator or function.
    dim: its size.
    dtype: the dtype the matvec is handed.
    masks: ``[num_draws, dim]`` projection masks or None.
  """
  p, q = (jax.random.normal(k, (dim,), dtype)
          for k in jax.random.split(jax.random.key(_PROBE_KEY)))
  p, q = p / jnp.linalg.norm(p), q / jnp.linalg.norm(q)
  product = matvec if getattr(matvec, 'accepts_batches', False) else (
      jax.jit(matvec))
  w = np.asarray(product(p), np.float64)
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  probe = [float(np.linalg.norm(w)), float(p @ w), float(q @ w)]
  return {
      'curvature': getattr(matvec, 'curvature', None),
      'masks': None if masks is None else hashlib.sha256(
          np.ascontiguousarray(np.asarray(masks)).tobytes()).hexdigest(),
      # JSON has no NaN: a non-finite probe is kept as text, matching nothing
      'probe': [x if np.isfinite(x) else str(x) for x in probe],
      'rtol': max(1e-6, 1e3 * float(jnp.finfo(dtype).eps)),
  }


def _identity_mismatch(saved, wanted):
  """Why `saved` is another computation than `wanted` (None if it is not)."""
  if saved is None:
    return 'it was saved without the identity of its operator'
  if saved['curvature'] != wanted['curvature']:
    return (f"its curvature is {saved['curvature']!r}, this run's "
            f"{wanted['curvature']!r}")
  if saved['masks'] != wanted['masks']:
    return 'its projection_masks differ'
  old, new = saved['probe'], wanted['probe']
  numbers = all(isinstance(x, float) for x in old + new)
  scale = abs(old[0]) if numbers else 0.0
  if not numbers or any(abs(a - b) > wanted['rtol'] * scale
                        for a, b in zip(old, new)):
    return ('its operator gives another product of the probe vector (|A p|, '
            f'p.Ap, q.Ap = {old} saved, {new} now): other parameters, data '
            'or matrix')
  return None


def _other_layout_only(saved, wanted):
  """Whether two runs' metadata differ only in how many devices split the
  basis (the same run, on another topology)."""
  strip = lambda meta: {**meta, 'config': {
      k: v for k, v in meta['config'].items() if k != 'num_shards'}}
  return strip(saved) == strip(wanted)


def _stored(fields):
  """The fields orbax stores: it cannot store empty arrays (the mask of a run
  without projection masks)."""
  return {k: v for k, v in fields.items() if np.prod(v.shape) > 0}


def _with_empty(fields, shapes):
  """`recurrence.State` of restored `fields`, the empty ones put back."""
  return recurrence.State(**{
      k: fields[k] if k in fields else np.zeros(s.shape, s.dtype)
      for k, s in shapes._asdict().items()})


def _is_split(x):
  """Whether `x` is split over several devices (each process saves its own
  slices of it) rather than a value every device holds."""
  return (isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and
          not x.is_fully_replicated)


class LanczosCheckpoints:
  """The saves of one batch of draws.

  Args:
    directory: the run's checkpoint directory.
    name: subdirectory of this batch of draws.
    config: the run's static settings (a JSON-able dict).
    keys: the batch's PRNG keys ``[num_draws]``.
    identity: `identity` of the run's operator.
  """

  def __init__(self, directory, name, config, keys, identity):
    self.meta = {'config': config,
                 'keys': np.asarray(jax.random.key_data(keys)).tolist()}
    self.identity = identity
    path = pathlib.Path(directory).absolute() / name
    self.manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False),
        item_names=('state', 'meta'))

  def restore(self, execution):
    """``(step, states)`` of the latest save, or ``(0, None)``."""
    step = self.manager.latest_step()
    if step is None:
      return 0, None
    meta = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    why = _identity_mismatch(meta.pop('identity', None), self.identity)
    if why is None and meta != self.meta and not _other_layout_only(
        meta, self.meta):
      why = 'it has other settings or keys'
    if why is not None:
      raise ValueError(
          f'checkpoint_dir: {self.manager.directory} holds a run of another '
          f'computation: {why}. To start afresh, delete that directory or '
          'pass another checkpoint_dir.')
    if meta != self.meta:
      return step, self._restore_relayout(step, meta, execution)
    # Sharded states (basis='sharded') come back split over the devices as
    # they were saved, each process reading its own slices.
    num_draws = len(self.meta['keys'])
    target = execution.abstract_states(num_draws)
    saved = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
            None if target is None else _stored(target._asdict()))))
    convert = np.asarray if target is None else (lambda x: x)
    states = {k: convert(v) for k, v in saved['state'].items()}
    shapes = state_layout.saved_shapes(
        recurrence.Config(**self.meta['config']), num_draws)
    return step, execution.place(_with_empty(states, shapes))

  def _restore_relayout(self, step, meta, execution):
    """A run saved on another number of devices (split basis) or unsplit:
    read whole, reassemble the vectors, and split them the new way."""
    old = recurrence.Config(**meta['config'])
    shapes = state_layout.saved_shapes(old, len(meta['keys']))
    target = {k: np.zeros(s.shape, s.dtype)
              for k, s in shapes._asdict().items()}
    saved = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored(target))))['state']
    states = _with_empty(saved, shapes)
    return execution.from_whole(
        state_layout.whole_states(states, old.num_shards, old.dim))

  def save(self, step, states):
    state = _stored({k: v if _is_split(v) else np.asarray(v)
                     for k, v in states._asdict().items()})
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**self.meta, 'identity': self.identity})))
    self.manager.wait_until_finished()
