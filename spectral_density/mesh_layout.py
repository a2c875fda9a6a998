"""Where parameters, vectors and data live on a `jax.sharding.Mesh`.

Layouts are `NamedSharding`s. The parameters' own layout is the model's
(FSDP, tensor parallel, replicated); `fsdp_shardings` is one common choice.
A vector of the Lanczos run has each leaf laid out like the parameter leaf it
stands for; a batch of vectors or a basis adds unsplit leading axes (`lead`).
Data are ``[num_batches, batch_size, ...]``: the batches are dealt over the
`data_axes` (each group of devices sums its own batches) and each batch's
examples are split over the `example_axes` (FSDP splits them over its axis).

`place` builds global arrays from host arrays that every process holds, so the
same call works on one process and on many (each process fills only its own
devices' slices).
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def fsdp_shardings(params, mesh, axis='fsdp'):
  """Fully sharded layout: each leaf split along `axis` on its largest
  dimension that `axis`'s size divides; a leaf with none is replicated.

  Args:
    params: pytree of arrays (or shape-dtype structs).
    mesh: the `Mesh`; `axis` one of its axis names.
    axis: the mesh axis to split over (a name or a tuple of names).

  Returns:
    A pytree of `NamedSharding`s shaped like `params`.

  Raises:
    ValueError: an axis name that is not one of `mesh`'s.

  Example:
    A mesh of one device (of ``len(jax.devices())`` alike): a leaf is split
    on its largest dimension that the axis size divides:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jax.sharding import Mesh
    >>> import spectral_density as sd
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ('fsdp',))
    >>> shardings = sd.fsdp_shardings({'w': jnp.zeros((3, 8))}, mesh)
    >>> shardings['w'].spec                   # the larger dimension
    P(None, 'fsdp')
    >>> sd.fsdp_shardings({'w': jnp.zeros(8)}, mesh, axis='data')
    Traceback (most recent call last):
    ...
    ValueError: axis: 'data' is not an axis of the mesh {'fsdp': 1}.
  """
  names = axis if isinstance(axis, tuple) else (axis,)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f'axis: {name!r} is not an axis of the mesh '
                       f'{dict(mesh.shape)}.')
  size = int(np.prod([mesh.shape[n] for n in names]))
  def one(x):
    shape = np.shape(x)
    dims = [d for d in np.argsort(shape, kind='stable')[::-1]
            if shape[d] % size == 0]
    if not dims:
      return NamedSharding(mesh, P())
    spec = [None] * len(shape)
    spec[dims[0]] = axis
    return NamedSharding(mesh, P(*spec))
  return jax.tree.map(one, params)


def named_shardings(params):
  """The `NamedSharding` of every leaf of `params` and their common mesh.

  Raises:
    ValueError: a leaf is not a `jax.Array` on a `NamedSharding`, or two
      leaves are on different meshes.
  """
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError('params: has no entries.')
  mesh = None
  for x in leaves:
    sharding = getattr(x, 'sharding', None)
    if not isinstance(sharding, NamedSharding):
      raise ValueError(
          'params: every leaf must be a jax.Array laid out by a NamedSharding '
          f'on one Mesh (see mesh_layout.place); got a leaf with sharding '
          f'{sharding!r}.')
    if mesh is None:
      mesh = sharding.mesh
    elif sharding.mesh != mesh:
      raise ValueError('params: leaves are on different meshes.')
  return jax.tree.map(lambda x: x.sharding, params), mesh


def auto_axes(params):
  """`params` on the same devices and layout, on a mesh whose axes are all
  `AxisType.Auto` (`jax.make_mesh` makes Explicit axes by default since JAX
  0.7): the sharded path leaves the layout of intermediates to GSPMD and pins
  vectors with `with_sharding_constraint`, which only Auto axes allow. The
  arrays are not copied (same devices, same slices)."""
  shardings, mesh = named_shardings(params)
  auto = jax.sharding.AxisType.Auto
  if all(t == auto for t in mesh.axis_types):
    return params
  mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                           axis_types=(auto,) * len(mesh.axis_names))
  return jax.tree.map(
      lambda x, s: jax.device_put(x, NamedSharding(mesh, s.spec)),
      params, shardings)


def is_named_sharded(params):
  """Whether every leaf of `params` is a `jax.Array` on a `NamedSharding`."""
  leaves = jax.tree.leaves(params)
  return bool(leaves) and all(
      isinstance(getattr(x, 'sharding', None), NamedSharding) for x in leaves)


def is_sharded(params):
  """Whether `params` take the sharded path (`sharded_hvp_fn`) rather than
  the flat one (`get_hvp_fn`'s raveled ``[n]`` vectors).

  True when every leaf is a `jax.Array` on a `NamedSharding` of one mesh of
  more than one device and at least one leaf is split (not fully
  replicated). Host arrays, arrays on one device and fully replicated arrays
  stay on the flat path, as before.

  Args:
    params: the parameter pytree.

  Returns:
    bool.

  Raises:
    ValueError: a mixed layout, named `params`: some leaves split over a
      mesh and others host arrays, on one device, on another mesh, or split
      by a sharding that is not a `NamedSharding`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jax.sharding import Mesh
    >>> from spectral_density import mesh_layout
    >>> mesh = Mesh(np.array(jax.devices()), ('fsdp',))   # 1, 2, 4 or 8 devices
    >>> params = {'w': jnp.zeros(8), 'b': jnp.zeros(1)}
    >>> mesh_layout.is_sharded(params)                      # one device each
    False
    >>> placed = jax.device_put(params, mesh_layout.fsdp_shardings(params, mesh))
    >>> mesh_layout.is_sharded(placed) == (len(jax.devices()) > 1)
    True
  """
  leaves = jax.tree.leaves(params)
  split = [x for x in leaves if _is_split(x)]
  if not split:
    return False
  sharding = split[0].sharding
  if not isinstance(sharding, NamedSharding):
    raise ValueError(
        'params: a leaf is split over devices by a '
        f'{type(sharding).__name__}; the sharded path needs every leaf on a '
        'NamedSharding of one Mesh (see fsdp_shardings).')
  mesh = sharding.mesh
  for x in leaves:
    s = getattr(x, 'sharding', None)
    if not isinstance(s, NamedSharding) or s.mesh != mesh:
      where = ('a host array' if s is None else
               f'on {type(s).__name__}' if not isinstance(s, NamedSharding)
               else 'on another mesh')
      raise ValueError(
          'params: some leaves are split over the mesh '
          f'{dict(mesh.shape)} and another is {where}; put every leaf on a '
          'NamedSharding of that one mesh (replicated: PartitionSpec()) for '
          'the sharded path, or none for the flat one.')
  return True


def _is_split(x):
  """A `jax.Array` on several devices, not fully replicated."""
  sharding = getattr(x, 'sharding', None)
  return (isinstance(x, jax.Array) and sharding is not None and
          len(sharding.device_set) > 1 and not sharding.is_fully_replicated)


def with_lead(sharding, lead, last_lead_axes=()):
  """`sharding` with `lead` leading axes (a batch, a basis), unsplit but for
  the last one, split over `last_lead_axes` if given (a basis's rows dealt
  over the data axes, on which the parameters are replicated)."""
  spec = tuple(sharding.spec)
  lead_spec = [None] * lead
  if lead and last_lead_axes:
    lead_spec[-1] = (last_lead_axes[0] if len(last_lead_axes) == 1
                     else tuple(last_lead_axes))
  return NamedSharding(sharding.mesh, P(*lead_spec, *spec))


def data_sharding(mesh, data_axes, example_axes):
  """Layout of data ``[num_batches, batch_size, ...]``."""
  def axes(names):
    return None if not names else (names[0] if len(names) == 1 else names)
  return NamedSharding(mesh, P(axes(data_axes), axes(example_axes)))


def place(tree, shardings):
  """Host arrays (the same on every process) as global arrays laid out by
  `shardings` (a pytree of shardings, or one for every leaf).

  A `jax.Array` already laid out so is returned as it is; on one process this
  is `jax.device_put`; on several, each process fills its own devices' slices
  from its copy (`jax.make_array_from_callback`).
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _place_one(x, shardings), tree)
  return jax.tree.map(_place_one, tree, shardings)


def _place_one(x, sharding):
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding,
                                      lambda index: host[index])
