"""Tests of experiments/input_pipeline.py."""

import io

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from experiments import augmentation
from experiments import image_sources
from experiments import input_pipeline as ip
from experiments import layout


def info_for(image_shape, augmentation='none', mean=None, std=None):
  channels = image_shape[-1]
  return ip.DatasetInfo(name='test', num_classes=10, image_shape=image_shape,
                        mean=mean or (0.5,) * channels,
                        std=std or (0.25,) * channels,
                        augmentation=augmentation, num_train=0, num_test=0)


def numbered(num_examples, shape=(4, 4, 1)):
  """Images that are all 7, labelled by their own index, to track examples."""
  return {'image': np.full((num_examples, *shape), 7, np.uint8),
          'label': np.arange(num_examples, dtype=np.int32)}


def test_preprocess_normalises_and_centre_crops_for_evaluation():
  batch = {'image': np.full((2, 10, 10, 3), 51, np.uint8),
           'label': np.array([1, 2])}
  info = info_for((8, 8, 3), 'imagenet', mean=(0.1, 0.2, 0.3),
                  std=(0.5, 0.5, 0.25))
  out = ip.preprocess(batch, info)
  assert out['image'].shape == (2, 8, 8, 3) and out['image'].dtype == np.float32
  np.testing.assert_allclose(out['image'][0, 0, 0], [0.2, 0.0, -0.4],
                             atol=1e-6)
  train = ip.preprocess(batch, info, np.random.default_rng(0))
  assert train['image'].shape == (2, 8, 8, 3)


def test_train_batches_are_deterministic_resumable_and_cover_each_epoch():
  data = numbered(40)
  info = info_for((4, 4, 1))
  batches = ip.train_batches(data, info, 8, seed=5, process_index=0,
                             process_count=1)
  labels = [next(batches)['label'] for _ in range(10)]
  # 5 steps per epoch: each epoch is a permutation of all 40 examples.
  for epoch in (0, 1):
    np.testing.assert_array_equal(
        np.sort(np.concatenate(labels[5 * epoch:5 * epoch + 5])), np.arange(40))
  assert not np.array_equal(labels[0], labels[5])
  resumed = ip.train_batches(data, info, 8, seed=5, start_step=7,
                             process_index=0, process_count=1)
  for step in (7, 8, 9):
    np.testing.assert_array_equal(next(resumed)['label'], labels[step])
  other_seed = ip.train_batches(data, info, 8, seed=6, process_index=0,
                                process_count=1)
  assert not np.array_equal(next(other_seed)['label'], labels[0])


def _cifar_like(num):
  """``num`` random 8x8x3 uint8 images labelled 0..num-1, with CIFAR's
  augmentation."""
  rng = np.random.default_rng(0)
  data = {'image': rng.integers(0, 256, (num, 8, 8, 3), np.uint8),
          'label': np.arange(num, dtype=np.int32)}
  return data, info_for((8, 8, 3), 'cifar')


def test_train_augmentation_is_a_function_of_seed_and_step():
  data, info = _cifar_like(16)
  fresh = ip.train_batches(data, info, 8, seed=0, process_index=0,
                           process_count=1)
  images = [next(fresh)['image'] for _ in range(3)]
  resumed = ip.train_batches(data, info, 8, seed=0, start_step=2,
                             process_index=0, process_count=1)
  np.testing.assert_array_equal(next(resumed)['image'], images[2])


def test_processes_split_each_global_batch_between_them():
  data = numbered(64)
  info = info_for((4, 4, 1))
  single = ip.train_batches(data, info, 32, seed=0, process_index=0,
                            process_count=1)
  shards = [ip.train_batches(data, info, 32, seed=0, process_index=p,
                             process_count=2) for p in (0, 1)]
  for _ in range(3):
    parts = [next(s)['label'] for s in shards]
    assert [len(p) for p in parts] == [16, 16]
    np.testing.assert_array_equal(np.concatenate(parts), next(single)['label'])


def test_batch_size_must_split_over_processes_and_devices():
  with pytest.raises(ValueError, match='split evenly'):
    next(ip.train_batches(numbered(64), info_for((4, 4, 1)), 12, seed=0,
                          process_index=0, process_count=1))


@pytest.mark.parametrize('num_examples, process_count',
                         [(10, 3), (7, 8), (60_000, 6), (0, 2)])
def test_process_slices_partition_the_examples(num_examples, process_count):
  slices = [ip.process_slice(num_examples, p, process_count)
            for p in range(process_count)]
  covered = np.concatenate([np.arange(num_examples)[s] for s in slices])
  np.testing.assert_array_equal(covered, np.arange(num_examples))
  sizes = [s.stop - s.start for s in slices]
  assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize('process_count', [1, 2, 3, 7])
def test_hessian_batch_starts_deal_one_process_batches_to_processes(
    process_count):
  """The processes stream the batches one process would, each once."""
  shares = [list(ip.hessian_batch_starts(53, 10, p, process_count))
            for p in range(process_count)]
  assert sum(shares, []) == [0, 10, 20, 30, 40, 50]
  assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_eval_batches_cover_every_example_once_in_equal_batch_counts():
  data = numbered(50)
  info = info_for((4, 4, 1))
  per_process = [list(ip.eval_batches(data, info, 24, process_index=p,
                                      process_count=3)) for p in range(3)]
  assert [len(batches) for batches in per_process] == [3, 3, 3]
  seen = np.concatenate([b['label'][b['mask'] == 1]
                         for batches in per_process for b in batches])
  np.testing.assert_array_equal(seen, np.arange(50))
  assert all(b['image'].shape == (8, 4, 4, 1)
             for batches in per_process for b in batches)


def test_hessian_dataset_is_the_first_examples_unaugmented():
  data, info = _cifar_like(20)
  hessian = ip.hessian_dataset(data, info, num_examples=12)
  np.testing.assert_array_equal(hessian['label'], np.arange(12))
  np.testing.assert_allclose(hessian['image'],
                             (data['image'][:12] / 255.0 - 0.5) / 0.25,
                             atol=1e-6)
  assert ip.hessian_dataset(data, info)['image'].shape == (20, 8, 8, 3)


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_per_host_shards_partition_every_epoch_and_epochs_reshuffle(
    process_count):
  data = numbered(70)
  info = info_for((4, 4, 1))
  # Global batch 32 (8 devices per host in the tests): 2 steps per epoch, 64
  # of the 70 examples each epoch.
  hosts = [ip.train_batches(data, info, 32, seed=1, process_index=p,
                            process_count=process_count)
           for p in range(process_count)]
  epochs = []
  for _ in range(3):
    labels = [[next(h)['label'] for _ in range(2)] for h in hosts]
    seen = np.concatenate(sum(labels, []))
    # Every host reads disjoint examples: together each example at most once.
    assert len(seen) == 64 and len(np.unique(seen)) == 64
    epochs.append(np.concatenate([np.concatenate(
        [labels[p][s] for p in range(process_count)]) for s in range(2)]))
  # The global order does not depend on the number of hosts.
  single = ip.train_batches(data, info, 32, seed=1, process_index=0,
                            process_count=1)
  np.testing.assert_array_equal(
      np.concatenate([next(single)['label'] for _ in range(6)]),
      np.concatenate(epochs))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_epoch_order_is_grains_index_shuffle_of_seed_and_epoch():
  """An epoch's order is a permutation drawn per index, not per step."""
  order = grain.MapDataset.range(40).seed(7).shuffle()
  for epoch in (0, 1, 2):
    permutation = [order[epoch * 40 + i] for i in range(40)]
    np.testing.assert_array_equal(np.sort(permutation), np.arange(40))
  batches = ip.train_batches(numbered(40), info_for((4, 4, 1)), 40, seed=7,
                             process_index=0, process_count=1)
  for epoch in (0, 1):
    np.testing.assert_array_equal(next(batches)['label'],
                                  [order[epoch * 40 + i] for i in range(40)])


def test_training_crops_are_windows_of_the_padded_source_images():
  rng = np.random.default_rng(0)
  data = {'image': rng.integers(1, 256, (24, 8, 8, 3), np.uint8),
          'label': np.arange(24, dtype=np.int32)}
  info = info_for((8, 8, 3), 'cifar', mean=(0.0,) * 3, std=(1 / 255,) * 3)
  batch = next(ip.train_batches(data, info, 24, seed=0, process_index=0,
                                process_count=1))
  assert batch['image'].shape == (24, 8, 8, 3)
  padded = np.pad(data['image'], [(0, 0), (4, 4), (4, 4), (0, 0)])
  flips = 0
  for image, label in zip(np.rint(batch['image']).astype(np.uint8),
                          batch['label']):
    p = padded[label]
    windows = {(y, x, f): (p[y:y + 8, x:x + 8][:, ::-1] if f else
                           p[y:y + 8, x:x + 8])
               for y in range(9) for x in range(9) for f in (0, 1)}
    matches = [k for k, w in windows.items() if np.array_equal(image, w)]
    assert matches, f'example {label} is no window of its padded image'
    flips += matches[0][2]
  assert 0 < flips < 24


def test_batches_do_not_depend_on_the_number_of_workers():
  data, info = _cifar_like(32)
  inline = ip.train_batches(data, info, 8, seed=3, process_index=0,
                            process_count=1)
  expected = [next(inline) for _ in range(6)]
  workers = ip.train_batches(data, info, 8, seed=3, start_step=2,
                             process_index=0, process_count=1, num_workers=1)
  for step in range(2, 6):
    batch = next(workers)
    np.testing.assert_array_equal(batch['label'], expected[step]['label'])
    np.testing.assert_array_equal(batch['image'], expected[step]['image'])


def coordinate_image(height, width):
  """uint8 [H, W, 3]: channel 0 the row, channel 1 the column, 2 zero."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


class TwoViews:
  """A source whose stored images are black and decoded ones coordinates."""

  def __len__(self):
    return 16

  def record(self, index):
    return {'image': np.zeros((36, 36, 3), np.uint8), 'label': index}

  def native_record(self, index):
    return {'image': coordinate_image(90, 120), 'label': index}


def test_imagenet_training_crops_the_decoded_image_not_the_stored_one():
  info = info_for((32, 32, 3), 'imagenet', mean=(0.0,) * 3,
                  std=(1 / 255,) * 3)
  batch = next(ip.train_batches(TwoViews(), info, 16, seed=0,
                                process_index=0, process_count=1))
  assert batch['image'].shape == (16, 32, 32, 3)
  images = np.rint(batch['image']).astype(int)
  spans = []
  for image in images:
    rows, cols = image[:, 0, 0], image[0, :, 1]
    # A resized window of the coordinate image: rows grow, columns grow or
    # (flipped) shrink.
    assert np.all(np.diff(rows) >= 0) and rows.max() <= 89
    assert np.all(np.diff(cols) >= 0) or np.all(np.diff(cols) <= 0)
    spans.append(rows.max() - rows.min())
  # Windows of various sizes, most larger than the 36 stored pixels could be.
  assert min(spans) < 50 < max(spans)


@pytest.mark.parametrize('cache', [False, True])
def test_hessian_set_is_the_unaugmented_decoded_data_split_by_host(
    tmp_path, cache):
  source = image_sources.TfdsSource(
      image_sources.JpegSource(23, [(40, 50, 3), (50, 40, 3)], num_distinct=23),
      36, 3, fixed_shape=False)
  info = info_for((32, 32, 3), 'imagenet', mean=(0.4, 0.5, 0.6),
                  std=(0.2, 0.3, 0.25))
  # The reference: decode each JPEG with PIL, resize, centre-crop by hand.
  reference = []
  for i in range(21):
    decoded = np.asarray(Image.open(io.BytesIO(source._source.encoded(i))))
    height, width = decoded.shape[:2]
    scale = 36 / min(height, width)
    resized = np.asarray(Image.fromarray(decoded).resize(
        (max(36, round(width * scale)), max(36, round(height * scale))),
        Image.Resampling.BICUBIC))
    # Stored: the centre 36 x 36; the Hessian's crop: its centre 32 x 32.
    top, left = (resized.shape[0] - 36) // 2, (resized.shape[1] - 36) // 2
    reference.append(resized[top + 2:top + 34, left + 2:left + 34])
  expected = augmentation.normalize(np.stack(reference), info.mean, info.std)
  shares = [ip.prepare_hessian_set(
      source, info, 21, 5, cache_dir=str(tmp_path) if cache else None,
      process_index=p, process_count=2, chunk=4) for p in (0, 1)]
  assert [len(s) for s in shares] == [2, 3]
  batches = [b for s in shares for b in s()]
  assert [len(b['label']) for b in batches] == [5, 5, 5, 5, 1]
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]),
                                np.arange(21) % 1000)
  np.testing.assert_allclose(np.concatenate([b['image'] for b in batches]),
                             expected, atol=1e-6)
  # A second pass reads the prepared arrays again: same batches.
  again = list(shares[0]())
  np.testing.assert_array_equal(again[0]['image'], batches[0]['image'])
  assert isinstance(shares[0].images, np.memmap) == cache


def test_prefetch_to_device_splits_each_batch_over_the_data_mesh():
  data = numbered(64)
  info = info_for((4, 4, 1))
  host = ip.train_batches(data, info, 16, seed=0, process_index=0,
                          process_count=1)
  expected = [next(host) for _ in range(3)]
  mesh = layout.data_mesh()
  on_devices = ip.prefetch_to_device(ip.train_batches(
      data, info, 16, seed=0, process_index=0, process_count=1), mesh)
  devices = jax.device_count()
  for batch in expected:
    placed = next(on_devices)
    assert placed['image'].shape == (16, 4, 4, 1)
    assert placed['label'].sharding == layout.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(placed['label']), batch['label'])
    # Device i holds rows [2 i, 2 i + 2) of the batch.
    for shard in placed['label'].addressable_shards:
      start = shard.index[0].start
      assert shard.data.shape == (16 // devices,)
      np.testing.assert_array_equal(
          shard.data, batch['label'][start:start + 16 // devices])


def test_grain_reads_a_real_tfds_data_source(monkeypatch):
  """tfds.data_source (random access, no TensorFlow) under TFDS's mock data,
  through load_dataset and the grain pipeline."""
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=40):
    # Mock data is never 'prepared'; the check itself is tested elsewhere.
    monkeypatch.setattr(image_sources, 'tfds_builder',
                        lambda name, data_dir: tfds.builder(name))
    train, _, info = ip.load_dataset(ml_collections.ConfigDict(
        {'dataset': {'name': 'tfds:cifar10'}}))
    source = tfds.data_source('cifar10', split='train')
    batches = ip.train_batches(train, info, 16, seed=0, process_index=0,
                               process_count=1)
    labels = np.concatenate([next(batches)['label'] for _ in range(2)])
    # Two steps of epoch 0: the records of the first 32 shuffled indices.
    order = grain.MapDataset.range(40).seed(0).shuffle()
    np.testing.assert_array_equal(
        labels, [source[order[i]]['label'] for i in range(32)])
    hessian = ip.prepare_hessian_set(train, info, 40, 16, process_index=0,
                                     process_count=1)
    images = np.concatenate([b['image'] for b in hessian()])
    reference = np.stack([np.asarray(source[i]['image']) for i in range(40)])
    np.testing.assert_allclose(
        images, ip.normalize(reference, info.mean, info.std), atol=1e-6)
    np.testing.assert_array_equal(
        np.concatenate([b['label'] for b in hessian()]),
        [source[i]['label'] for i in range(40)])
  assert info.augmentation == 'cifar' and labels.shape == (32,)


@pytest.mark.parametrize('precision', ['float32', 'float64'])
def test_uint8_hessian_set_normalised_on_device_gives_the_same_products(
    precision):
  """The probe's uint8 set with `normalized_on_device`: the same H v as the
  host-normalised set, resident and streamed; the normalisation runs in the
  parameters' dtype (float64: against a float64 host normalisation)."""
  import spectral_density as sd  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  info = info_for((6, 6, 3), mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
  data = {'image': rng.integers(0, 256, (24, 8, 8, 3), np.uint8),
          'label': rng.integers(0, 10, 24).astype(np.int32)}
  dtype = np.dtype(precision)
  params = {'w': (rng.normal(size=(6 * 6 * 3, 10)) * 0.1).astype(dtype)}
  seen = []

  def loss(p, batch):
    seen.append(batch['image'].dtype)
    logits = batch['image'].reshape(len(batch['label']), -1) @ p['w']
    logp = jax.nn.log_softmax(logits)
    return -jax.numpy.take_along_axis(logp, batch['label'][:, None], 1).mean()

  on_device = augmentation.normalized_on_device(loss, info.mean, info.std)
  uint8s = ip.hessian_dataset(data, info, normalized=False)
  assert uint8s['image'].dtype == np.uint8
  if precision == 'float32':
    floats = ip.hessian_dataset(data, info)
  else:
    floats = dict(uint8s, image=(uint8s['image'] / 255.0 - info.mean) /
                  np.asarray(info.std))
  assert floats['image'].shape == uint8s['image'].shape
  v = rng.normal(size=params['w'].size).astype(dtype)
  with jax.enable_x64(precision == 'float64'):
    reference, _, _ = sd.get_hvp_fn(loss, params, floats, batch_size=8)
    resident, _, _ = sd.get_hvp_fn(on_device, params, uint8s, batch_size=8)
    streamed, _, _ = sd.get_hvp_fn(on_device, params, ip.prepare_hessian_set(
        data, info, 24, 8, process_index=0, process_count=1,
        normalized=False))
    expected = np.asarray(reference(v))
    assert np.linalg.norm(expected) > 0
    tol = 1e-6 if precision == 'float32' else 1e-12
    for op in (resident, streamed):
      np.testing.assert_allclose(np.asarray(op(v)), expected, rtol=tol,
                                 atol=tol * np.abs(expected).max())
    # Inside the products the images were floats of the parameters' dtype.
    assert seen[-1] == dtype
    # Floating images pass through untouched.
    np.testing.assert_array_equal(on_device(params, floats),
                                  loss(params, floats))
