"""The layout of saved Lanczos states, whole or split over devices.

With ``basis='sharded'`` each device holds its slice of every vector field of
the state (`VECTOR_FIELDS`) and a copy of the rest, so a saved state is
``[num_shards, num_draws, ..., dim_local]``. These functions reassemble such
states into whole vectors and split them again, so that a run checkpointed on
one topology resumes on another. Kept apart from `checkpoint` (orbax, an
optional dependency) because the execution objects need them on every run.
"""

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import parallel
from spectral_density import recurrence

VECTOR_FIELDS = ('basis', 'v_prev', 'v', 'mask')  # last axis: over dim


def saved_shapes(config, num_draws):
  """`recurrence.State` of `jax.ShapeDtypeStruct`: a run's states as saved,
  split (``[num_shards, num_draws, ..., dim_local]``) or not."""
  size = parallel.slice_size(config.dim, config.num_shards)
  dtype = jnp.dtype(config.dtype)
  masks = (jax.ShapeDtypeStruct((num_draws, size), dtype) if config.masked
           else None)
  shapes = jax.eval_shape(
      jax.vmap(lambda k, m: recurrence.init_state(
          k, m, size, config.order, dtype, config.start,
          config.reorthogonalize),
               in_axes=(0, None if masks is None else 0)),
      jax.random.split(jax.random.key(0), num_draws), masks)
  lead = (config.num_shards,) if config.num_shards > 1 else ()
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(lead + s.shape, s.dtype),
                      shapes)


def join_slices(x, dim, xp=np):
  """``[S, k, ..., size]`` slices -> ``[k, ..., dim]`` whole vectors (`xp`:
  numpy on the host, `jax.numpy` for traced arrays)."""
  x = xp.moveaxis(xp.asarray(x), 0, -2)
  return x.reshape(x.shape[:-2] + (-1,))[..., :dim]


def whole_states(states, num_shards, dim):
  """Host states saved with `num_shards` slices, with whole vectors: vector
  fields ``[num_draws, ..., dim]``, the rest ``[num_draws, ...]``."""
  if num_shards == 1:
    return states
  fields = {}
  for name, x in states._asdict().items():
    x = np.asarray(x)
    if name in VECTOR_FIELDS:
      x = join_slices(x, dim)
    else:  # every device holds the same copy
      x = x[0]
    fields[name] = x
  return recurrence.State(**fields)


def split_states(states, num_shards):
  """The inverse of `whole_states`: ``[S, k, ..., size]`` host arrays."""
  fields = {}
  for name, x in states._asdict().items():
    x = np.asarray(x)
    if name in VECTOR_FIELDS:
      size = parallel.slice_size(x.shape[-1], num_shards)
      pad = size * num_shards - x.shape[-1]
      x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
      x = np.moveaxis(x.reshape(x.shape[:-1] + (num_shards, size)), -2, 0)
    else:
      x = np.broadcast_to(x, (num_shards,) + x.shape)
    fields[name] = x
  return recurrence.State(**fields)
