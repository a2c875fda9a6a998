"""Tests of experiments/input_pipeline.py."""

import gzip
import pickle
import types

import ml_collections
import numpy as np
import pytest

from experiments import input_pipeline as ip


def idx_bytes(array, dtype_code, big_endian_dtype):
  header = bytes([0, 0, dtype_code, array.ndim])
  dims = np.asarray(array.shape, '>i4').tobytes()
  return header + dims + np.asarray(array, big_endian_dtype).tobytes()


def config(**dataset):
  return ml_collections.ConfigDict({'dataset': dataset})


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


def test_parse_idx_reads_header_dims_and_big_endian_data():
  array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
  np.testing.assert_array_equal(ip.parse_idx(idx_bytes(array, 0x0C, '>i4')),
                                array)
  with pytest.raises(ValueError, match='magic'):
    ip.parse_idx(b'\x01\x00\x08\x01' + bytes(8))


def test_idx_reader_gives_all_fashion_mnist_examples(fashion_mnist_path):
  train = ip.read_idx_dataset(fashion_mnist_path, 'train')
  test = ip.read_idx_dataset(fashion_mnist_path, 'test')
  assert train['image'].shape == (60_000, 28, 28, 1)
  assert test['image'].shape == (10_000, 28, 28, 1)
  assert train['image'].dtype == np.uint8 and train['label'].dtype == np.int32
  # An independent parse: the label file has an 8-byte header, images 16.
  with gzip.open(fashion_mnist_path / 'train-labels-idx1-ubyte.gz') as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  with gzip.open(fashion_mnist_path / 't10k-images-idx3-ubyte.gz') as f:
    first_test_image = np.frombuffer(f.read(), np.uint8, 784, offset=16)
  np.testing.assert_array_equal(train['label'], labels)
  np.testing.assert_array_equal(train['label'][:10],
                                [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
  np.testing.assert_array_equal(test['image'][0].ravel(), first_test_image)
  np.testing.assert_array_equal(np.bincount(train['label']), [6000] * 10)


def test_embedded_subset_is_small_balanced_and_licensed():
  assert ip.EMBEDDED_FASHION_MNIST.stat().st_size < 2_000_000
  assert 'Zalando' in (ip.EMBEDDED_FASHION_MNIST.parent /
                       'FASHION_MNIST_COPYRIGHT').read_text()
  train = ip.read_embedded_fashion_mnist('train')
  test = ip.read_embedded_fashion_mnist('test')
  np.testing.assert_array_equal(np.bincount(train['label']), [300] * 10)
  np.testing.assert_array_equal(np.bincount(test['label']), [100] * 10)
  assert train['image'].shape == (3000, 28, 28, 1)


def test_embedded_subset_matches_idx_originals(fashion_mnist_path):
  with np.load(ip.EMBEDDED_FASHION_MNIST) as f:
    subset = {k: f[k] for k in f.files}
  for split in ('train', 'test'):
    original = ip.read_idx_dataset(fashion_mnist_path, split)
    index = subset[f'{split}_index']
    assert len(np.unique(index)) == len(index)
    np.testing.assert_array_equal(subset[f'{split}_image'],
                                  original['image'][index])
    np.testing.assert_array_equal(subset[f'{split}_label'],
                                  original['label'][index])


def test_cifar10_pickle_reader_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  written = {}
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, 3).tolist()
    written[name] = (images, labels)
    # The CIFAR layout: each row is the red plane, then green, then blue.
    rows = images.transpose(0, 3, 1, 2).reshape(3, 3072)
    with open(tmp_path / name, 'wb') as f:
      pickle.dump({b'data': rows, b'labels': labels}, f)
  train = ip.read_cifar10_python(tmp_path, 'train')
  test = ip.read_cifar10_python(tmp_path, 'test')
  np.testing.assert_array_equal(train['image'], np.concatenate(
      [written[f'data_batch_{i}'][0] for i in range(1, 6)]))
  np.testing.assert_array_equal(train['label'], sum(
      (written[f'data_batch_{i}'][1] for i in range(1, 6)), []))
  np.testing.assert_array_equal(test['image'], written['test_batch'][0])
  assert train['image'].shape == (15, 32, 32, 3)


def test_npz_dataset_loads_with_statistics_of_its_training_images(tmp_path):
  rng = np.random.default_rng(0)
  for split, num in (('train', 40), ('test', 8)):
    np.savez(tmp_path / f'{split}.npz',
             image=rng.integers(0, 256, (num, 6, 6, 2), np.uint8),
             label=np.arange(num) % 3)
  train, test, info = ip.load_dataset(config(name='npz',
                                             data_dir=str(tmp_path)))
  expected = ip.read_npz(tmp_path / 'train.npz')
  np.testing.assert_array_equal(train['image'], expected['image'])
  scaled = expected['image'].reshape(-1, 2) / 255.0
  np.testing.assert_allclose(info.mean, scaled.mean(0))
  np.testing.assert_allclose(info.std, scaled.std(0))
  assert (info.num_classes, info.num_train, info.num_test) == (3, 40, 8)


def test_synthetic_data_is_a_function_of_the_seed():
  first = ip.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=1)
  again = ip.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=1)
  other = ip.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=2)
  for split in (0, 1):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(first[split][key], again[split][key])
  assert not np.array_equal(first[0]['image'], other[0]['image'])
  assert first[0]['image'].shape == (50, 5, 5, 3)
  assert set(np.unique(first[0]['label'])) == {0, 1, 2, 3}


def test_fit_images_pads_centred_and_repeats_grey_channels():
  images = np.arange(2 * 28 * 28).reshape(2, 28, 28, 1).astype(np.uint8)
  fitted = ip.fit_images(images, 32, 3)
  assert fitted.shape == (2, 32, 32, 3)
  for channel in range(3):
    np.testing.assert_array_equal(fitted[:, 2:30, 2:30, channel],
                                  images[..., 0])
  assert fitted[:, :2].max() == 0 and fitted[:, 30:].max() == 0
  np.testing.assert_array_equal(ip.fit_images(fitted, 28, None)[..., :1],
                                images)


def test_random_crop_and_flip_only_flips_without_padding_deterministically():
  images = np.random.default_rng(0).integers(0, 256, (16, 5, 5, 1), np.uint8)
  out = ip.random_crop_and_flip(images, np.random.default_rng(3), 5)
  again = ip.random_crop_and_flip(images, np.random.default_rng(3), 5)
  np.testing.assert_array_equal(out, again)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 16


def test_cifar_augmentation_crops_a_window_of_the_padded_image():
  images = np.random.default_rng(0).integers(1, 256, (6, 8, 8, 3), np.uint8)
  out = ip.random_crop_and_flip(images, np.random.default_rng(1), 8, padding=4)
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
  for o, p in zip(out, padded):
    windows = [w for y in range(9) for x in range(9)
               for w in (p[y:y + 8, x:x + 8], p[y:y + 8, x:x + 8][:, ::-1])]
    assert any(np.array_equal(o, w) for w in windows)


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


def test_train_augmentation_is_a_function_of_seed_and_step():
  rng = np.random.default_rng(0)
  data = {'image': rng.integers(0, 256, (16, 8, 8, 3), np.uint8),
          'label': np.arange(16, dtype=np.int32)}
  info = info_for((8, 8, 3), 'cifar')
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
  rng = np.random.default_rng(0)
  data = {'image': rng.integers(0, 256, (20, 8, 8, 3), np.uint8),
          'label': np.arange(20, dtype=np.int32)}
  info = info_for((8, 8, 3), 'cifar')
  hessian = ip.hessian_dataset(data, info, num_examples=12)
  np.testing.assert_array_equal(hessian['label'], np.arange(12))
  np.testing.assert_allclose(hessian['image'],
                             (data['image'][:12] / 255.0 - 0.5) / 0.25,
                             atol=1e-6)
  assert ip.hessian_dataset(data, info)['image'].shape == (20, 8, 8, 3)


def test_load_embedded_fashion_mnist_padded_to_resnet_input():
  _, _, native = ip.load_dataset(config(name='embedded_fashion_mnist'))
  assert native.image_shape == (28, 28, 1)
  assert (native.num_train, native.num_test) == (3000, 1000)
  train, test, info = ip.load_dataset(config(
      name='embedded_fashion_mnist', num_train=500, image_size=32, channels=3))
  assert train['image'].shape == (500, 32, 32, 3)
  assert test['image'].shape == (1000, 32, 32, 3)
  assert info.image_shape == (32, 32, 3) and info.num_train == 500
  assert info.mean == (0.2860,) * 3 and info.std == (0.3530,) * 3
  assert info.augmentation == 'none' and info.num_classes == 10


def test_load_synthetic_dataset_and_check_of_classes():
  train, test, info = ip.load_dataset(config(
      name='synthetic', num_train=64, num_test=16, num_classes=5,
      image_shape=(6, 6, 3), seed=3))
  assert train['image'].shape == (64, 6, 6, 3) and len(test['label']) == 16
  assert info.num_classes == 5 and len(info.mean) == 3
  with pytest.raises(ValueError, match='classes'):
    ip.load_dataset(config(name='embedded_fashion_mnist', num_classes=100))
  with pytest.raises(ValueError, match='unknown dataset'):
    ip.load_dataset(config(name='svhn'))


def fake_tfds(monkeypatch, image_shape, records, prepared=True):
  """Stands in for a prepared TFDS dataset (TFDS cannot prepare one offline)."""
  builder = types.SimpleNamespace(
      is_prepared=lambda: prepared, data_dir='/nowhere/imagenet2012',
      info=types.SimpleNamespace(features={
          'image': types.SimpleNamespace(shape=image_shape),
          'label': types.SimpleNamespace(num_classes=1000)}))
  fake = types.SimpleNamespace(
      builder=lambda name, data_dir: builder,
      data_source=lambda name, split, data_dir, download: records)
  monkeypatch.setattr(ip, '_tfds', lambda: fake)


def test_tfds_dataset_must_be_prepared(monkeypatch):
  fake_tfds(monkeypatch, (None, None, 3), [], prepared=False)
  with pytest.raises(FileNotFoundError, match="'imagenet2012' is not prepared"):
    ip.load_dataset(config(name='tfds:imagenet2012'))


def test_tfds_imagenet_images_are_resized_then_cropped_by_augmentation(
    monkeypatch):
  rng = np.random.default_rng(0)
  records = [{'image': rng.integers(0, 256, shape, np.uint8), 'label': label}
             for label, shape in enumerate([(60, 80, 3), (90, 45, 3),
                                            (32, 32, 3)])]
  fake_tfds(monkeypatch, (None, None, 3), records)
  train, _, info = ip.load_dataset(config(name='tfds:imagenet2012',
                                          image_size=28))
  assert info.image_shape == (28, 28, 3) and info.augmentation == 'imagenet'
  assert info.mean == (0.485, 0.456, 0.406)
  stored = train[np.array([0, 1, 2])]
  assert stored['image'].shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(stored['label'], [0, 1, 2])
  # An image already of the stored size is unchanged by the resize.
  np.testing.assert_array_equal(stored['image'][2], records[2]['image'])
  batch = ip.preprocess(stored, info, np.random.default_rng(0))
  assert batch['image'].shape == (3, 28, 28, 3)
  np.testing.assert_array_equal(ip.preprocess(stored, info)['image'][:, 0, 0],
                                ip.normalize(stored['image'][:, 2, 2],
                                             info.mean, info.std))
