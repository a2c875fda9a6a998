"""How a dataset is laid out for the curvature operators (host side, numpy).

A resident dataset (a pytree of arrays with a leading example axis) is cut
into batches of `batch_size` consecutive examples and dealt to the devices
(`shard_dataset`); a streamed one (a list of batches, or a callable returning
a fresh iterator) is grouped one batch per device (`work_items`). `check_form`
refuses the kinds that cannot be passed over `order` times.
"""

import collections.abc
import math

import jax
import numpy as np


def num_examples(dataset):
  """The common leading size of the arrays of a resident dataset."""
  leaves = jax.tree_util.tree_leaves_with_path(dataset)
  if not leaves:
    raise ValueError('dataset: empty (no arrays).')
  for path, x in leaves:
    if not np.ndim(x):
      raise ValueError(
          f'dataset: leaf {jax.tree_util.keystr(path) or "(the root)"} is a '
          'scalar; every array of a dataset needs the leading example axis. '
          'Pass constants through the loss (a closure), not the dataset.')
  sizes = {np.shape(x)[0] for _, x in leaves}
  if len(sizes) != 1:
    by_size = {}
    for path, x in leaves:
      by_size.setdefault(np.shape(x)[0], jax.tree_util.keystr(path))
    raise ValueError(
        'dataset: every array needs the same leading example axis, got '
        + ', '.join(f'{n} ({where})' for n, where in sorted(by_size.items()))
        + '.')
  num_examples = sizes.pop()
  if num_examples == 0:
    raise ValueError('dataset: has 0 examples.')
  return num_examples


def shard_dataset(dataset, batch_size, num_devices, weight_dtype=np.float32,
                  positions=None):
  """Lays a dataset out in batches over devices (host side, numpy).

  Batch ``j`` is examples ``[j B, (j + 1) B)``; device ``g`` (its position in
  the device list) gets batches ``[g P, (g + 1) P)`` with ``P = ceil(N_full /
  D)``. Only the rows of the requested devices are read, so on a pod each host
  reads just its own shard (from a memory map, say).

  Args:
    dataset: pytree of arrays ``[N, ...]`` (anything numpy can slice).
    batch_size: examples per batch (clipped to N).
    num_devices: D, all devices of all hosts.
    weight_dtype: dtype of the returned weights.
    positions: device positions to lay out (default all): this host's.

  Returns:
    ``(data, weights, rem_batch, rem_weight)``: `data` leaves
    ``[len(positions), batches_per_device, batch_size, ...]``, `weights`
    ``[len(positions), batches_per_device]`` (``batch_size / N``, or 0 for
    padding slots, which hold copies of batch 0), `rem_batch` the last ``N mod
    batch_size`` examples (None if none) and `rem_weight` = ``(N mod
    batch_size) / N``.
  """
  n = num_examples(dataset)
  if batch_size is None or int(batch_size) < 1:
    raise ValueError(
        f'batch_size: must be a positive integer for an array dataset, got '
        f'{batch_size!r}.')
  b = min(int(batch_size), n)
  num_full = n // b
  per_device = math.ceil(num_full / num_devices)
  positions = range(num_devices) if positions is None else positions
  batch_ids = np.array([[g * per_device + i for i in range(per_device)]
                        for g in positions]).reshape(len(positions), per_device)
  real = batch_ids < num_full
  batch_ids = np.where(real, batch_ids, 0)

  def arrange(x):
    rows = [np.asarray(x[j * b:(j + 1) * b]) for j in batch_ids.ravel()]
    return np.stack(rows).reshape(batch_ids.shape + (b,) + rows[0].shape[1:])

  data = jax.tree.map(arrange, dataset)
  weights = np.where(real, b / n, 0.0).astype(weight_dtype)
  rem = n - num_full * b
  rem_batch = (jax.tree.map(lambda x: np.asarray(x[num_full * b:]), dataset)
               if rem else None)
  return data, weights, rem_batch, np.asarray(rem / n, weight_dtype)


def stack(batches, pad):
  """``[len(batches) + pad, ...]`` leaves; padding repeats the first batch."""
  return jax.tree.map(lambda *xs: np.stack(xs + xs[:1] * pad), *batches)


def work_items(batches, num_dev):
  """The streamed batches as work for `num_dev` devices: ``('group', [D, ...]
  batches, [D] weights)`` for runs of D batches of the common size,
  ``('single', batch, weight)`` otherwise; weights count examples."""
  pending, size, structure = [], None, None
  for index, batch in enumerate(batches):
    if structure is None:
      structure = jax.tree.structure(batch)
    elif jax.tree.structure(batch) != structure:
      raise ValueError(
          f'dataset: batch {index} has the structure '
          f'{jax.tree.structure(batch)}, batch 0 {structure}: every batch '
          'needs the same keys (the loss reads the same entries).')
    leaves = jax.tree.leaves(batch)
    n = int(np.shape(leaves[0])[0]) if leaves else 0
    if n == 0:
      continue
    size = n if size is None else size
    if n != size or num_dev == 1:
      yield 'single', batch, float(n)
      continue
    pending.append(batch)
    if len(pending) == num_dev:
      yield 'group', stack(pending, 0), [float(size)] * num_dev
      pending = []
  if pending:
    pad = num_dev - len(pending)
    yield ('group', stack(pending, pad),
           [float(size)] * len(pending) + [0.0] * pad)


def _is_tuple_of_batches(dataset):
  """A tuple whose entries are containers of one structure (batches), not
  arrays (a dataset such as ``(x, y)``)."""
  if not isinstance(dataset, tuple) or len(dataset) < 2:
    return False
  structures = {jax.tree.structure(x) for x in dataset}
  return len(structures) == 1 and not jax.tree_util.treedef_is_leaf(
      structures.pop())


def check_form(dataset):
  """Raises for datasets of the wrong kind: one-shot iterators, tuples of
  batches."""
  if isinstance(dataset, collections.abc.Iterator):
    raise TypeError(
        'dataset: an iterator or generator is read once, but Lanczos passes '
        'over the data once per step: pass a list of batches, or a callable '
        'returning a fresh iterator (e.g. lambda: make_batches()).')
  if _is_tuple_of_batches(dataset):
    raise TypeError(
        'dataset: a tuple of batches; pass a list of batches (streamed), or '
        'one pytree of arrays with a leading example axis and batch_size.')


def is_random_access(dataset):
  """A random-access source (``len`` and ``[i]``: a grain ``MapDataset``, a
  TFDS data source), not an array nor a container of arrays."""
  return (not isinstance(dataset, (list, tuple, dict, str, bytes,
                                   collections.abc.Mapping,
                                   collections.abc.Iterator)) and
          not hasattr(dataset, 'shape') and
          jax.tree_util.treedef_is_leaf(jax.tree.structure(dataset)) and
          hasattr(dataset, '__len__') and hasattr(dataset, '__getitem__'))


def as_streamable(dataset, batch_size):
  """``(dataset, batch_size)`` with a random-access source made a stream: a
  callable returning a fresh iterator over its records in order, each a
  batch (`batch_size` None) or an example (grouped into batches of
  `batch_size`, the last one shorter); other datasets unchanged."""
  if not is_random_access(dataset):
    return dataset, batch_size
  source, size = dataset, batch_size
  if len(source) == 0:
    raise ValueError('dataset: the random-access source has no records.')

  def batches():
    if size is None:
      for i in range(len(source)):
        yield source[i]
      return
    for start in range(0, len(source), size):
      records = [source[i] for i in range(start, min(start + size,
                                                        len(source)))]
      yield jax.tree.map(lambda *xs: np.stack(xs), *records)
  return batches, None
