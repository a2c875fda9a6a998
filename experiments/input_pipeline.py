"""The input pipeline: training batches (grain), evaluation batches and the
Hessian set.

The datasets come from `experiments.datasets` (uint8 images, arrays or random
access). This module turns them into float32 batches normalised per channel:

* `train_batches`: a grain pipeline. The order of each epoch is a permutation
  of the examples drawn from (seed, epoch) by grain's index shuffle, one index
  at a time (nothing of size N is permuted per step); each host reads only its
  rows of each global batch; each record is augmented with a generator drawn
  from (seed, its global position), so the batches depend neither on the
  number of worker processes nor on where the iteration started, and training
  resumes exactly. `prefetch_to_device` puts them on the data mesh ahead
  (`experiments.layout`).
* `eval_batches`: each host's contiguous share, in padded, masked batches.
* `prepare_hessian_set`: the fixed set of the Hessian, decoded and cropped
  once (host memory or a memory-mapped file), each host its share of the
  batches; every product then only moves these uint8 arrays (normalised on
  the device by `augmentation.normalized_on_device`) or, if asked, normalises
  them on the host.

Augmentation (`DatasetInfo.augmentation`): see `experiments.augmentation`.
"""

import functools
import math
import os
from typing import Any, Iterator, Mapping

from absl import flags
import grain
import jax
import numpy as np

from experiments import layout
from experiments.augmentation import augment
from experiments.augmentation import centre_crop
from experiments.augmentation import normalize
from experiments.datasets import data_size
from experiments.datasets import DatasetInfo
from experiments.datasets import record
from experiments.datasets import take
# Re-exported: train.py, the notebooks and the benchmarks read datasets
# through this module.
# pylint: disable=unused-import,g-bad-import-order
from experiments.datasets import load_dataset  # noqa: F401
from experiments.datasets import read_embedded_fashion_mnist  # noqa: F401
from experiments.datasets import read_idx_dataset  # noqa: F401
# pylint: enable=unused-import,g-bad-import-order


def preprocess(batch: Mapping[str, np.ndarray], info: DatasetInfo,
               rng: np.random.Generator | None = None,
               normalized: bool = True) -> dict[str, np.ndarray]:
  """A uint8 batch to the model's input: augmented if rng is given, normalised.

  Args:
    batch: {'image': uint8 [B, S, S, C], 'label': [B]} (stored shape).
    info: the dataset's info (augmentation, input shape, mean, std).
    rng: draws the augmentation; None: evaluation (centre crop only).
    normalized: False keeps the uint8 images (for a loss wrapped in
      `augmentation.normalized_on_device`).

  Returns:
    {'image': float32 (uint8 if not normalized) [B, *info.image_shape],
    'label': int32 [B]}.
  """
  if rng is None:
    images = centre_crop(batch['image'], info.image_shape[0])
  else:
    images = np.stack([augment(image, info, rng) for image in batch['image']])
  return {'image': (normalize(images, info.mean, info.std) if normalized
                    else np.ascontiguousarray(images)),
          'label': np.asarray(batch['label'], np.int32)}


def process_slice(num_examples: int, process_index: int,
                  process_count: int) -> slice:
  """Contiguous share of a process; the shares partition range(num_examples)."""
  return slice(num_examples * process_index // process_count,
               num_examples * (process_index + 1) // process_count)


def hessian_batch_starts(num_examples: int, batch_size: int,
                         process_index: int | None = None,
                         process_count: int | None = None) -> range:
  """First example of each Hessian batch this process streams: the batches
  of `batch_size` consecutive examples, cut as in one process, and dealt to
  the processes in contiguous shares (so the batch-norm statistics of
  bn_mode='train' do not depend on the process count)."""
  process_index, process_count = _process(process_index, process_count)
  starts = range(0, num_examples, batch_size)
  return starts[process_slice(len(starts), process_index, process_count)]


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), jax's where not given."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  local = global_batch_size // process_count
  devices = jax.local_device_count()
  if global_batch_size % process_count or local % devices:
    raise ValueError(
        f'global batch size {global_batch_size} must split evenly over '
        f'{process_count} processes of {devices} local devices')
  return local


def _training_record(position: int, _, *, data: Any, order: grain.MapDataset,
                     num_examples: int, epoch_records: int,
                     native: bool) -> dict[str, Any]:
  """The example at global position `position` of the endless training
  stream: epoch position // epoch_records, its order a grain index shuffle."""
  epoch, offset = divmod(position, epoch_records)
  return record(data, order[epoch * num_examples + offset], native)


def _augment_record(example: dict[str, Any], rng: np.random.Generator, *,
                    info: DatasetInfo) -> dict[str, Any]:
  return {'image': augment(example['image'], info, rng),
          'label': example['label']}


def _normalize_batch(batch: dict[str, np.ndarray], *,
                     info: DatasetInfo) -> dict[str, np.ndarray]:
  return {'image': normalize(batch['image'], info.mean, info.std),
          'label': np.asarray(batch['label'], np.int32)}


def train_dataset(data: Any, info: DatasetInfo, global_batch_size: int,
                  seed: int, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """This process's training batches as a lazy grain `MapDataset`: element s
  is its part of the global batch of step s (endless; see the module doc).

  Global step s holds positions [s G, (s + 1) G) of the stream, G the global
  batch; epoch e is the first floor(N / G) G examples of permutation e (the
  last incomplete global batch dropped); process p reads rows
  [p G / P, (p + 1) G / P) of every global batch.

  Args: as `train_batches`.

  Returns:
    MapDataset of {'image': float32 [G / P, *info.image_shape], 'label':
    int32 [G / P]}.
  """
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count)
  num_examples = data_size(data)
  steps_per_epoch = num_examples // global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{num_examples} examples are fewer than one global batch '
                     f'of {global_batch_size}')
  # Permutation e is order[e N: (e + 1) N], computed index by index.
  order = grain.MapDataset.range(num_examples).seed(seed).shuffle()
  epoch_records = steps_per_epoch * global_batch_size
  read = functools.partial(
      _training_record, data=data, order=order, num_examples=num_examples,
      epoch_records=epoch_records, native=info.augmentation == 'imagenet')
  # The augmentation generator of a record is drawn from (seed, its global
  # position): independent of process and worker counts.
  stream = (grain.MapDataset.range(epoch_records).repeat().seed(seed + 1)
            .map_with_index(read)
            .random_map(functools.partial(_augment_record, info=info)))
  batches = stream.batch(local, drop_remainder=True)
  return batches[process_index::process_count].map(
      functools.partial(_normalize_batch, info=info))


def _worker_processes(dataset: grain.IterDataset,
                      num_workers: int) -> grain.IterDataset:
  """dataset read by num_workers grain processes (0: as it is)."""
  if num_workers < 0:
    raise ValueError(f'num_workers must be >= 0, got {num_workers}')
  if not num_workers:
    return dataset
  # Grain's workers read absl flags; outside an absl app (tests, benchmarks)
  # they are not parsed, and the defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers))


def train_batches(data: Any, info: DatasetInfo, global_batch_size: int,
                  seed: int, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None, num_workers: int = 0,
                  read_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented training batches of this process, from step start_step.

  Args:
    data: dataset dict or source (`experiments.datasets`).
    info: the dataset's info.
    global_batch_size: examples per step over all processes; each process gets
      global_batch_size / process_count, divisible by its local device count.
    seed: seed of the shuffle and the augmentation.
    start_step: the first step yielded.
    process_index: this process (None: jax.process_index()).
    process_count: processes (None: jax.process_count()).
    num_workers: grain worker processes that read, decode and augment
      (0: this process, with read_threads threads).
    read_threads: threads per process reading records.

  Yields:
    {'image': float32 [local_batch, *info.image_shape], 'label': int32
    [local_batch]}; the same whatever num_workers and start_step.
  """
  dataset = train_dataset(data, info, global_batch_size, seed, process_index,
                          process_count)[start_step:]
  batches = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=2 * read_threads))
  return iter(_worker_processes(batches, num_workers))


def prefetch_to_device(batches: Iterator[Mapping[str, np.ndarray]],
                       mesh: jax.sharding.Mesh | None = None,
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """This process's host batches as global batches on `mesh`, `size`
  transfers ahead.

  Args:
    batches: {key: [B_local, ...]}, this process's rows of each global batch.
    mesh: a `layout.data_mesh` (default: over all devices).
    size: batches in flight.

  Yields:
    {key: [B_local * processes, ...]} split over the mesh's 'data' axis
    (`layout.global_batch`).
  """
  return layout.prefetch(batches, layout.data_mesh() if mesh is None else mesh,
                         size)


def eval_batches(data: Any, info: DatasetInfo, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the data in order, in padded, masked batches.

  Every process yields the same number of batches (collectives stay matched);
  padding rows repeat example 0 with mask 0.

  Args:
    data: dataset dict or source.
    info: the dataset's info.
    global_batch_size: rows per step over all processes.
    process_index: this process (None: jax.process_index()).
    process_count: processes (None: jax.process_count()).

  Yields:
    {'image': float32 [local_batch, *info.image_shape], 'label': int32
    [local_batch], 'mask': float32 [local_batch]}.
  """
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count)
  num_examples = data_size(data)
  share = process_slice(num_examples, process_index, process_count)
  num_batches = math.ceil(math.ceil(num_examples / process_count) / local)
  for batch_index in range(num_batches):
    indices = share.start + batch_index * local + np.arange(local)
    mask = indices < share.stop
    batch = preprocess(take(data, np.where(mask, indices, 0)), info)
    yield {**batch, 'mask': mask.astype(np.float32)}


def hessian_dataset(data: Any, info: DatasetInfo,
                    num_examples: int | None = None,
                    normalized: bool = True) -> dict[str, np.ndarray]:
  """The fixed set the Hessian is taken over: the first examples, not augmented.

  Args:
    data: the training dataset dict or source.
    info: the dataset's info.
    num_examples: how many (None: all).
    normalized: float32 normalised images; False: the centre-cropped uint8
      images, for a loss wrapped in `augmentation.normalized_on_device`.

  Returns:
    {'image': float32 (or uint8) [num_examples, *info.image_shape], 'label':
    int32 [num_examples]}.
  """
  size = data_size(data)
  num_examples = size if num_examples is None else min(num_examples, size)
  return preprocess(take(data, np.arange(num_examples)), info,
                    normalized=normalized)


class HessianSet:
  """This process's share of the Hessian batches, decoded and cropped once.

  Calling it returns a fresh iterator of the batches: the streamed-dataset
  form of `spectral_density.get_hvp_fn`. A product decodes nothing: it moves
  the uint8 batches (for a loss wrapped in
  `augmentation.normalized_on_device`) or, with normalized=True, one pass of
  uint8 -> float32 normalisation on the host first.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               batch_sizes: list[int], info: DatasetInfo,
               normalized: bool = True):
    """Args:

      images: uint8 [n, *info.image_shape] (array or memory map), the batches
        one after another.
      labels: int32 [n].
      batch_sizes: examples of each batch, summing to n.
      info: mean and std of the normalisation.
      normalized: yield float32 normalised images; False: the uint8 ones.
    """
    self.images, self.labels = images, labels
    self.batch_sizes = batch_sizes
    self._info = info
    self.normalized = normalized

  def __len__(self) -> int:
    return len(self.batch_sizes)

  def __call__(self) -> Iterator[dict[str, np.ndarray]]:
    start = 0
    for size in self.batch_sizes:
      images = self.images[start:start + size]
      yield {'image': (normalize(images, self._info.mean, self._info.std)
                       if self.normalized else np.asarray(images)),
             'label': self.labels[start:start + size]}
      start += size


def _hessian_record(position: int, *, data: Any, indices: np.ndarray,
                    size: int) -> dict[str, Any]:
  example = record(data, int(indices[position]))
  return {'image': centre_crop(example['image'], size),
          'label': example['label']}


def prepare_hessian_set(data: Any, info: DatasetInfo, num_examples: int,
                        batch_size: int, cache_dir: str | None = None,
                        num_workers: int = 0, process_index: int | None = None,
                        process_count: int | None = None,
                        chunk: int = 256,
                        normalized: bool = True) -> HessianSet:
  """Decodes and crops this process's Hessian batches once.

  The batches are those of `hessian_batch_starts` (the first num_examples
  examples cut into batches of batch_size, dealt to the processes), with the
  evaluation crop and no augmentation.

  Args:
    data: the training dataset dict or source.
    info: the dataset's info.
    num_examples: size of the whole Hessian set (capped at the data size).
    batch_size: examples per Hessian batch.
    cache_dir: if given, the images go to a memory-mapped .npy file there
      (one per process) instead of host memory.
    num_workers: grain worker processes that decode (0: this process).
    process_index: this process (None: jax.process_index()).
    process_count: processes (None: jax.process_count()).
    chunk: records decoded per grain element.
    normalized: as `HessianSet`'s.

  Returns:
    `HessianSet` of this process's share.
  """
  process_index, process_count = _process(process_index, process_count)
  num_examples = min(num_examples, data_size(data))
  starts = hessian_batch_starts(num_examples, batch_size, process_index,
                                process_count)
  # The share is consecutive batches, so consecutive examples.
  indices = np.arange(starts.start, min(starts.stop, num_examples))
  batch_sizes = [min(batch_size, num_examples - s) for s in starts]
  shape = (len(indices), *info.image_shape)
  if cache_dir is None:
    images = np.empty(shape, np.uint8)
  else:
    os.makedirs(cache_dir, exist_ok=True)
    images = np.lib.format.open_memmap(
        os.path.join(cache_dir, f'hessian_images_{process_index}.npy'), 'w+',
        np.uint8, shape)
  labels = np.empty(len(indices), np.int32)
  decoded = grain.MapDataset.range(len(indices)).map(functools.partial(
      _hessian_record, data=data, indices=indices, size=info.image_shape[0]))
  stream = _worker_processes(decoded.batch(chunk).to_iter_dataset(),
                             num_workers)
  start = 0
  for part in stream:
    images[start:start + len(part['label'])] = part['image']
    labels[start:start + len(part['label'])] = part['label']
    start += len(part['label'])
  return HessianSet(images, labels, batch_sizes, info, normalized)
