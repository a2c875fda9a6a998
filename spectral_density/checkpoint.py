"""Orbax checkpoints of a Lanczos run, so that a killed run resumes exactly.

A run of order 90 over ImageNet is hours of products; its state (step, alphas,
betas, basis and start keys) is saved every few steps. Orbax writes each save
to a temporary directory and renames it, so a kill mid-save leaves the previous
save intact. The settings and keys are saved too: a rerun with other settings
refuses to resume rather than mixing two runs. A rerun that differs only in
the number of devices the basis is split over (basis='sharded' on another
topology, or 'device' / 'host' against 'sharded') resumes: the saved slices
are reassembled and split the new way.

Imported only when `checkpoint_dir` is given: orbax is an optional dependency.
"""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


def _other_layout_only(saved, wanted):
  """Whether two runs' metadata differ only in how many devices split the
  basis (the same run, on another topology)."""
  strip = lambda meta: {**meta, 'config': {
      k: v for k, v in meta['config'].items() if k != 'num_shards'}}
  return strip(saved) == strip(wanted)


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
  """

  def __init__(self, directory, name, config, keys):
    self.meta = {'config': config,
                 'keys': np.asarray(jax.random.key_data(keys)).tolist()}
    path = pathlib.Path(directory).absolute() / name
    self.manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False),
        item_names=('state', 'meta'))

  def restore(self, segments):
    """``(step, states)`` of the latest save, or ``(0, None)``."""
    step = self.manager.latest_step()
    if step is None:
      return 0, None
    meta = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if meta != self.meta:
      if not _other_layout_only(meta, self.meta):
        raise ValueError(
            f'checkpoint_dir: {self.manager.directory} holds a run with other '
            'settings or keys; use a new directory.')
      return step, self._restore_relayout(step, meta, segments)
    # Sharded states (basis='sharded') come back split over the devices as
    # they were saved, each process reading its own slices.
    target = segments.abstract_states(len(self.meta['keys']))
    saved = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
            None if target is None else target._asdict())))
    convert = np.asarray if target is None else (lambda x: x)
    states = segments.state_type(
        **{k: convert(v) for k, v in saved['state'].items()})
    return step, segments.place(states)

  def _restore_relayout(self, step, meta, segments):
    """A run saved on another number of devices (split basis) or unsplit:
    read whole, reassemble the vectors, and split them the new way."""
    from spectral_density import lanczos  # pylint: disable=g-import-not-at-top
    old = lanczos._Config(**meta['config'])  # pylint: disable=protected-access
    shapes = lanczos.saved_shapes(old, len(meta['keys']))
    target = {k: np.zeros(s.shape, s.dtype)
              for k, s in shapes._asdict().items()}
    saved = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
    states = segments.state_type(**saved)
    return segments.from_whole(
        lanczos.whole_states(states, old.num_shards, old.dim))

  def save(self, step, states):
    state = {k: v if _is_split(v) else np.asarray(v)
             for k, v in states._asdict().items()}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta)))
    self.manager.wait_until_finished()
