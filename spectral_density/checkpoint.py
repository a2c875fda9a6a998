"""Orbax checkpoints of a Lanczos run, so that a killed run resumes exactly.

A run of order 90 over ImageNet is hours of products; its state (step, alphas,
betas, basis and start keys) is saved every few steps. Orbax writes each save
to a temporary directory and renames it, so a kill mid-save leaves the previous
save intact. The settings and keys are saved too: a rerun with other settings
refuses to resume rather than mixing two runs.

Imported only when `checkpoint_dir` is given: orbax is an optional dependency.
"""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


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
      raise ValueError(
          f'checkpoint_dir: {self.manager.directory} holds a run with other '
          'settings or keys; use a new directory.')
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

  def save(self, step, states):
    state = {k: v if _is_split(v) else np.asarray(v)
             for k, v in states._asdict().items()}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta)))
    self.manager.wait_until_finished()
