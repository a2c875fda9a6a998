"""Orbax checkpoints of a sharded Lanczos run (`sharded.sharded_lanczos`).

The state's vectors and basis are global arrays laid out like the parameters;
orbax saves each process's own slices of them and restores them into the
layouts the rerun asks for, so no process ever gathers a whole vector. As in
`checkpoint`, a save is written to a temporary directory and renamed (a kill
mid-save leaves the previous one), and it carries what it computes: the
settings, the start keys and the operator's identity (its curvature and
``[|A p|, p . A p]`` for a fixed probe vector `p`, one product); a rerun of
another computation refuses to resume.

Imported only when `checkpoint_dir` is given: orbax is an optional dependency.
"""

import functools
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from spectral_density import tree_recurrence

_TREE_FIELDS = ('basis', 'v_prev', 'v')
PROBE_KEY = 20190709  # fixed: the probe vector is the same in every run


@functools.lru_cache(maxsize=8)
def _probe_values(mesh):
  """``(|w|, p . w)`` on every device of `mesh` (every process reads them)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda p, w: (tree_recurrence.norm(w),
                               tree_recurrence.dot(p, w)),
                 out_shardings=replicated)


def identity(op, probe):
  """What an operator computes, as JSON (one product of the probe vector)."""
  w = op(probe)
  values = [float(x) for x in _probe_values(op.mesh)(probe, w)]
  return {'curvature': op.curvature,
          'probe': [x if np.isfinite(x) else str(x) for x in values],
          'rtol': max(1e-6, 1e3 * float(np.finfo(op.dtype).eps))}


def _mismatch(saved, wanted):
  if saved is None or saved['curvature'] != wanted['curvature']:
    return 'another curvature'
  for a, b in zip(saved['probe'], wanted['probe']):
    if isinstance(a, str) or isinstance(b, str) or not np.isclose(
        a, b, rtol=wanted['rtol'], atol=0):
      return ('its probe product differs (other parameters, data or loss): '
              f'{saved["probe"]} vs {wanted["probe"]}')
  return None


def _stored(states):
  """The state as a dict orbax takes: tree fields as lists of leaves; an
  empty basis (no reorthogonalisation) left out."""
  out = {}
  for field, value in states._asdict().items():
    if field in _TREE_FIELDS:
      leaves = jax.tree.leaves(value)
      if field == 'basis' and leaves[0].shape[1] == 0:
        continue
      out[field] = list(leaves)
    else:
      out[field] = value
  return out


def _unstored(saved, template):
  fields = {}
  for field, value in template._asdict().items():
    if field in _TREE_FIELDS:
      treedef = jax.tree.structure(value)
      if field not in saved:  # the empty basis
        fields[field] = jax.tree.map(
            lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding)
            if jax.process_count() == 1 else jax.make_array_from_callback(
                s.shape, s.sharding,
                lambda i, s=s: np.zeros(s.shape, s.dtype)[i]), value)
      else:
        fields[field] = treedef.unflatten(saved[field])
    else:
      fields[field] = saved[field]
  return type(template)(**fields)


class TreeCheckpoints:
  """The saves of one sharded run.

  Args:
    directory: the checkpoint directory.
    config: the run's settings (a JSON-able dict).
    keys: the draws' raw key data ``[num_draws, ...]`` (numpy).
    identity: `identity` of the operator.
  """

  def __init__(self, directory, config, keys, identity_):
    self.meta = {'config': dict(config),
                 'keys': np.asarray(keys).tolist()}
    self.identity = identity_
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False),
        item_names=('state', 'meta'))

  def restore(self, abstract_states):
    """``(step, states)`` of the latest save laid out as `abstract_states`
    (shape-dtype structs with shardings), or ``(0, None)``."""
    step = self.manager.latest_step()
    if step is None:
      return 0, None
    meta = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    why = _mismatch(meta.pop('identity', None), self.identity)
    if why is None and meta != self.meta:
      why = 'it has other settings or keys'
    if why is not None:
      raise ValueError(
          f'checkpoint_dir: {self.manager.directory} holds a run of another '
          f'computation: {why}. To start afresh, delete that directory or '
          'pass another checkpoint_dir.')
    saved = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored(abstract_states))))['state']
    return step, _unstored(saved, abstract_states)

  def save(self, step, states):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_stored(states)),
        meta=ocp.args.JsonSave({**self.meta, 'identity': self.identity})))
    self.manager.wait_until_finished()
