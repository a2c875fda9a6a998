"""How a Lanczos program runs: four small objects with one interface.

* `OnDevices`: one compiled program with the products inside (a function
  under `jit`, or inside a resident operator's data-parallel program).
* `HostLoop`: the products come from outside the compiled code (a streamed
  operator, or ``basis='host'``): a Python loop calls the product and one
  compiled update per step.
* `SplitOverDevices`: ``basis='sharded'``; every vector split over the devices,
  one compiled program.
* `SplitHostLoop`: a split basis updated from a host loop (a streamed operator).

Their interface: ``init(keys, masks) -> states``, ``run(states, start, stop)
-> states``, ``finish(states) -> out``, ``full(keys, masks) -> out`` (all
steps as one program; only where `one_program`), `replica`, `stopped`,
`to_host`, `to_traced`, and for checkpoints `abstract_states`, `from_whole`,
`place`. ``out`` is ``(tridiag, vecs, num_steps, bad_step)`` per draw and
the pass's Gram matrix (`recurrence.pooled_gram`) or None.
`run_segments` drives the steps in segments with checkpoints and progress.
"""

import functools
import logging
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from spectral_density import operators
from spectral_density import parallel
from spectral_density import precision
from spectral_density import recurrence
from spectral_density import state_layout


@functools.partial(jax.jit, static_argnums=(0,))
def run_jit(program, matvec, *args):
  """`program` under `jit` with the products of a plain `matvec`."""
  return program(lambda vs: jax.vmap(matvec)(vs), *args)


def _as_pytree(matvec):
  """jit arguments must be pytrees: a plain function becomes a static leaf-less
  `Partial`, so the compiled program is cached per function object."""
  if isinstance(matvec, jax.tree_util.Partial):
    return matvec
  return jax.tree_util.Partial(matvec)


def _no_matvec(v):
  raise AssertionError('this program makes no products')


@functools.lru_cache(maxsize=64)
def _host_step_fns(config):
  """Compiled pieces of one step, for runs whose products happen outside."""
  return (jax.jit(recurrence.record_all),
          jax.jit(precision.traced_under(
              functools.partial(recurrence.update_all, config),
              config.matmul_precision, config.dtype)))


@functools.lru_cache(maxsize=64)
def _split_host_step_fns(config, devices):
  """``(record, gather, update)`` for a host loop over split states: the
  products come from outside (a streamed operator) as whole vectors."""
  split, whole = PartitionSpec(parallel.AXIS), PartitionSpec()

  def gather(v):  # [1, k, dim_local] -> [k, dim] on every device
    return parallel.gather(v[0], config.dim)

  @functools.partial(precision.traced_under,
                     matmul_precision=config.matmul_precision,
                     dtype=config.dtype)
  def update(states, i, w):  # w: [k, dim] on every device
    w = parallel.local_slice(w, config.num_shards)
    return recurrence.update_all(config, states, i, w, sharded=True)

  def compiled(fn, in_specs, out_specs):
    return jax.jit(jax.shard_map(fn, mesh=parallel.mesh(devices),
                                 in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False))
  return (compiled(parallel.on_blocks(recurrence.record_all, 1),
                   (split, whole), split),
          compiled(gather, split, whole),
          compiled(parallel.on_blocks(update, 1), (split, whole, whole),
                   split))


def _host_steps(execution, states, start, stop, record, product, update):
  """Steps ``start .. stop - 1`` with the products made on the host; stops at
  once after a non-finite product or when every draw broke down."""
  for i in range(start, stop):
    states = record(states, i)
    states = update(states, i, product(states))
    if execution.stopped(states):  # no further pass over the data
      break
  return states


class OnDevices:
  """One compiled program with the products inside: a resident operator runs
  it in its own data-parallel program, a function under `jit`."""

  one_program = True

  def __init__(self, config, matvec):
    self.config = config
    self.programs = recurrence.programs(config)
    if isinstance(matvec, operators.ProgramRunner):
      self._execute = matvec.run
    else:
      tree = _as_pytree(matvec)
      self._execute = lambda program, *args: run_jit(program, tree, *args)

  def init(self, keys, masks):
    return self._execute(self.programs.init, keys, masks)

  def run(self, states, start, stop):
    return self._execute(self.programs.segment, states, start, stop)

  def finish(self, states):
    return self._execute(self.programs.finish, states)

  def full(self, keys, masks):
    """init, every step and finish as one compiled program."""
    return self._execute(self.programs.full, keys, masks)

  def replica(self, x):
    """One device's copy of a field every device holds (host numpy)."""
    return np.asarray(x)

  def stopped(self, states):
    """Whether a product was not finite or every draw broke down (host)."""
    return bool(np.any(self.replica(states.bad_step) >= 0) or
                np.all(self.replica(states.done)))

  def to_host(self, out):
    """`finish`'s output as host numpy: ``(tridiag [k, order, order], vecs
    [k, order, dim] or None, num_steps [k], bad_step [k], gram [k order, k
    order] or None)``."""
    return jax.tree.map(np.asarray, out)

  def to_traced(self, out):
    """`to_host` inside a transformation (`jit`, `vmap`): traced arrays."""
    return out

  def abstract_states(self, num_draws):
    """Shapes, dtypes and shardings of the saved states (None: numpy)."""
    del num_draws

  def from_whole(self, states):
    """Host states with whole vectors, in this run's layout and place."""
    return self.place(jax.tree.map(np.asarray, states))

  def place(self, states):
    """States restored from a checkpoint, where this run keeps them."""
    return jax.tree.map(jnp.asarray, states)


class HostLoop(OnDevices):
  """Products from a host loop (a streamed operator, or ``basis='host'``):
  the state lives on `state_device` (the host CPU for ``basis='host'``); one
  compiled update per step."""

  one_program = False

  def __init__(self, config, matvec, state_device):
    super().__init__(config, _no_matvec)
    # Dataset operators take [k, dim] themselves (sharing the forward pass).
    self.matvec = (matvec if isinstance(matvec, operators.Operator)
                   else jax.jit(precision.traced_under(
                       jax.vmap(matvec), config.matmul_precision,
                       config.matvec_dtype)))
    self.state_device = state_device

  def init(self, keys, masks):
    return self.place(super().init(keys, masks))

  def run(self, states, start, stop):
    record, update = _host_step_fns(self.config)
    mv_dtype = jnp.dtype(self.config.matvec_dtype)
    product = lambda s: jax.device_put(self.matvec(s.v.astype(mv_dtype)),
                                       self.state_device)
    return _host_steps(self, states, start, stop, record, product, update)

  full = None

  def place(self, states):
    return jax.device_put(states, self.state_device)


class SplitOverDevices(OnDevices):
  """``basis='sharded'``: the states are global arrays whose leading axis is
  split over the devices: device ``i`` holds ``[1, num_draws, ...]``, its
  slice of every vector and a copy of the rest."""

  def __init__(self, config, matvec):  # pylint: disable=super-init-not-called
    self.config = config
    self.programs = recurrence.programs(config)
    if isinstance(matvec, operators.ProgramRunner):
      self.devices, execute = tuple(matvec.devices), matvec.run_sharded
    else:  # a function: over all devices
      self.devices = tuple(jax.devices())
      runner, tree = parallel.function_runner(self.devices), _as_pytree(matvec)
      execute = lambda program, sharded, replicated: runner(
          program, config.dim, tree, sharded, replicated)
    self._execute = lambda program, *args: execute(program, (), args)
    self._execute_on = lambda program, states, *args: execute(
        program, (states,), args)

  def run(self, states, start, stop):
    return self._execute_on(self.programs.segment, states, start, stop)

  def finish(self, states):
    return self._execute_on(self.programs.finish, states)

  def replica(self, x):
    return np.asarray(x.addressable_shards[0].data)[0]

  def to_host(self, out):
    tridiag, vecs, num_steps, bad, gram = out
    if gram is not None:  # summed over the devices: every copy is whole
      gram = self.replica(gram)
    if vecs is not None:
      if not vecs.is_fully_addressable:  # other processes hold some slices
        vecs = multihost_utils.process_allgather(vecs, tiled=True)
      vecs = state_layout.join_slices(np.asarray(vecs), self.config.dim)
    return (self.replica(tridiag), vecs, self.replica(num_steps),
            self.replica(bad), gram)

  def to_traced(self, out):
    tridiag, vecs, num_steps, bad, gram = out
    if vecs is not None:
      vecs = state_layout.join_slices(vecs, self.config.dim, jnp)
    return (tridiag[0], vecs, num_steps[0], bad[0],
            None if gram is None else gram[0])

  def abstract_states(self, num_draws):
    sharding = parallel.sharding(self.devices)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        state_layout.saved_shapes(self.config, num_draws))

  def from_whole(self, states):
    sharding = parallel.sharding(self.devices)
    split = state_layout.split_states(states, self.config.num_shards)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        x.shape, sharding, lambda index: x[index]), split)

  def place(self, states):
    return states


class SplitHostLoop(SplitOverDevices):
  """A split basis updated from a host loop: a streamed operator's products
  come whole from the host; init and finish run compiled over all devices."""

  one_program = False

  def __init__(self, config, matvec):
    super().__init__(config, _no_matvec)
    self.matvec = matvec

  def run(self, states, start, stop):
    record, gather, update = _split_host_step_fns(self.config, self.devices)
    mv_dtype = jnp.dtype(self.config.matvec_dtype)
    def product(states):
      v = gather(states.v).addressable_data(0)  # [k, dim], one device
      return parallel.replicate(self.matvec(v.astype(mv_dtype)), self.devices)
    return _host_steps(self, states, start, stop, record, product, update)

  full = None


def executor(config, matvec, basis):
  """The execution object of a run (see module docstring)."""
  host_loop = basis == 'host' or (isinstance(matvec, operators.Operator) and
                                  not matvec.traceable)
  if config.num_shards > 1:
    return (SplitHostLoop(config, matvec) if host_loop
            else SplitOverDevices(config, matvec))
  if host_loop:
    return HostLoop(config, matvec, (
        jax.local_devices(backend='cpu')[0] if basis == 'host'
        else jax.local_devices()[0]))
  return OnDevices(config, matvec)


def _ritz_extremes(execution, states):
  """(smallest, largest) Ritz value of draw 0 so far (host numpy)."""
  steps = int(execution.replica(states.num_steps)[0])
  if steps == 0:
    return np.nan, np.nan
  alphas = execution.replica(states.alphas)[0, :steps].astype(np.float64)
  betas = execution.replica(states.betas)[0, :steps].astype(np.float64)
  ritz = np.linalg.eigvalsh(np.asarray(recurrence.tridiag(alphas, betas)))
  return float(ritz[0]), float(ritz[-1])


def _report(progress, info):
  """Prints one updating status line (and logs it), or calls `progress`."""
  if callable(progress):
    progress(info)
    return
  line = (f"Lanczos draws {info['draws']}: step {info['step']}/"
          f"{info['order']}, {info['seconds_per_product']:.3g} s/Hv, "
          f"ETA {info['eta_seconds']:.0f} s, Ritz "
          f"[{info['ritz_min']:.6g}, {info['ritz_max']:.6g}]")
  logging.info(line)
  end = '\n' if info['step'] == info['order'] else ''
  print('\r' + line, end=end, file=sys.stderr, flush=True)


def non_finite_error(bad, first_draw=0):
  """FloatingPointError naming the first draw whose product was not finite."""
  draw = int(np.argmax(bad >= 0))
  return FloatingPointError(
      f'matvec returned a non-finite value at Lanczos step {int(bad[draw])} '
      f'(draw {first_draw + draw}): check the loss, the data and the '
      'parameters.')


def run_segments(execution, keys, masks, first_draw, *, checkpoint_dir,
                 checkpoint_every, progress, identity):
  """One batch of draws: init, segments (checkpointed, reported), finish.

  Raises:
    FloatingPointError: at the end of the first segment with a non-finite
      product (that segment stopped there), before saving it.
  """
  config = execution.config
  order = config.order
  every = checkpoint_every or (max(1, order // 20) if progress else order)
  draws = f'{first_draw}-{first_draw + keys.shape[0] - 1}'
  manager = None
  step, states = 0, None
  if checkpoint_dir is not None:  # orbax: an optional dependency
    from spectral_density import checkpoint  # pylint: disable=g-import-not-at-top
    manager = checkpoint.LanczosCheckpoints(
        checkpoint_dir, f'draws_{draws}', config._asdict(), keys, identity)
    step, states = manager.restore(execution)
  if states is None:
    states = execution.init(keys, masks)
  start_time = time.perf_counter()
  start_step = step
  while step < order:
    stop = min(order, step + every)
    states = execution.run(states, step, stop)
    step = stop
    bad = execution.replica(states.bad_step)
    if np.any(bad >= 0):  # stop here: the run cannot give a valid result
      raise non_finite_error(bad, first_draw)
    if manager is not None:
      manager.save(step, states)
    if progress:
      jax.block_until_ready(states)
      per = (time.perf_counter() - start_time) / (step - start_step)
      lo, hi = _ritz_extremes(execution, states)
      _report(progress, {'draws': draws, 'step': step, 'order': order,
                         'seconds_per_product': per,
                         'eta_seconds': per * (order - step),
                         'ritz_min': lo, 'ritz_max': hi})
  return execution.finish(states)
