"""Tests of experiments/datasets.py (the readers)."""

import gzip
import pickle
import types

import ml_collections
import numpy as np
import pytest

from experiments import augmentation
from experiments import datasets as ds
from experiments import image_sources
from experiments import input_pipeline as ip


def idx_bytes(array, dtype_code, big_endian_dtype):
  header = bytes([0, 0, dtype_code, array.ndim])
  dims = np.asarray(array.shape, '>i4').tobytes()
  return header + dims + np.asarray(array, big_endian_dtype).tobytes()


def config(**dataset):
  return ml_collections.ConfigDict({'dataset': dataset})


def test_parse_idx_reads_header_dims_and_big_endian_data():
  array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
  np.testing.assert_array_equal(ds.parse_idx(idx_bytes(array, 0x0C, '>i4')),
                                array)
  with pytest.raises(ValueError, match='magic'):
    ds.parse_idx(b'\x01\x00\x08\x01' + bytes(8))


def test_idx_reader_gives_all_fashion_mnist_examples(fashion_mnist_path):
  train = ds.read_idx_dataset(fashion_mnist_path, 'train')
  test = ds.read_idx_dataset(fashion_mnist_path, 'test')
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
  assert ds.EMBEDDED_FASHION_MNIST.stat().st_size < 2_000_000
  assert 'Zalando' in (ds.EMBEDDED_FASHION_MNIST.parent /
                       'FASHION_MNIST_COPYRIGHT').read_text()
  train = ds.read_embedded_fashion_mnist('train')
  test = ds.read_embedded_fashion_mnist('test')
  np.testing.assert_array_equal(np.bincount(train['label']), [300] * 10)
  np.testing.assert_array_equal(np.bincount(test['label']), [100] * 10)
  assert train['image'].shape == (3000, 28, 28, 1)


def test_embedded_subset_matches_idx_originals(fashion_mnist_path):
  with np.load(ds.EMBEDDED_FASHION_MNIST) as f:
    subset = {k: f[k] for k in f.files}
  for split in ('train', 'test'):
    original = ds.read_idx_dataset(fashion_mnist_path, split)
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
  train = ds.read_cifar10_python(tmp_path, 'train')
  test = ds.read_cifar10_python(tmp_path, 'test')
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
  train, test, info = ds.load_dataset(config(name='npz',
                                             data_dir=str(tmp_path)))
  expected = ds.read_npz(tmp_path / 'train.npz')
  np.testing.assert_array_equal(train['image'], expected['image'])
  scaled = expected['image'].reshape(-1, 2) / 255.0
  np.testing.assert_allclose(info.mean, scaled.mean(0))
  np.testing.assert_allclose(info.std, scaled.std(0))
  assert (info.num_classes, info.num_train, info.num_test) == (3, 40, 8)


def test_synthetic_data_is_a_function_of_the_seed():
  first = ds.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=1)
  again = ds.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=1)
  other = ds.synthetic_dataset(50, 10, (5, 5, 3), 4, seed=2)
  for split in (0, 1):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(first[split][key], again[split][key])
  assert not np.array_equal(first[0]['image'], other[0]['image'])
  assert first[0]['image'].shape == (50, 5, 5, 3)
  assert set(np.unique(first[0]['label'])) == {0, 1, 2, 3}


def test_fit_images_pads_centred_and_repeats_grey_channels():
  images = np.arange(2 * 28 * 28).reshape(2, 28, 28, 1).astype(np.uint8)
  fitted = image_sources.fit_images(images, 32, 3)
  assert fitted.shape == (2, 32, 32, 3)
  for channel in range(3):
    np.testing.assert_array_equal(fitted[:, 2:30, 2:30, channel],
                                  images[..., 0])
  assert fitted[:, :2].max() == 0 and fitted[:, 30:].max() == 0
  np.testing.assert_array_equal(
      image_sources.fit_images(fitted, 28, None)[..., :1], images)


def test_load_embedded_fashion_mnist_padded_to_resnet_input():
  _, _, native = ds.load_dataset(config(name='embedded_fashion_mnist'))
  assert native.image_shape == (28, 28, 1)
  assert (native.num_train, native.num_test) == (3000, 1000)
  train, test, info = ds.load_dataset(config(
      name='embedded_fashion_mnist', num_train=500, image_size=32, channels=3))
  assert train['image'].shape == (500, 32, 32, 3)
  assert test['image'].shape == (1000, 32, 32, 3)
  assert info.image_shape == (32, 32, 3) and info.num_train == 500
  assert info.mean == (0.2860,) * 3 and info.std == (0.3530,) * 3
  assert info.augmentation == 'none' and info.num_classes == 10


def test_load_synthetic_dataset_and_check_of_classes():
  train, test, info = ds.load_dataset(config(
      name='synthetic', num_train=64, num_test=16, num_classes=5,
      image_shape=(6, 6, 3), seed=3))
  assert train['image'].shape == (64, 6, 6, 3) and len(test['label']) == 16
  assert info.num_classes == 5 and len(info.mean) == 3
  with pytest.raises(ValueError, match='classes'):
    ds.load_dataset(config(name='embedded_fashion_mnist', num_classes=100))
  with pytest.raises(ValueError, match='unknown dataset'):
    ds.load_dataset(config(name='svhn'))


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
  monkeypatch.setattr(image_sources, 'tfds_module', lambda: fake)


def test_tfds_dataset_must_be_prepared(monkeypatch):
  fake_tfds(monkeypatch, (None, None, 3), [], prepared=False)
  with pytest.raises(FileNotFoundError, match="'imagenet2012' is not prepared"):
    ds.load_dataset(config(name='tfds:imagenet2012'))


def test_tfds_imagenet_images_are_resized_then_cropped_by_augmentation(
    monkeypatch):
  rng = np.random.default_rng(0)
  records = [{'image': rng.integers(0, 256, shape, np.uint8), 'label': label}
             for label, shape in enumerate([(60, 80, 3), (90, 45, 3),
                                            (32, 32, 3)])]
  fake_tfds(monkeypatch, (None, None, 3), records)
  train, _, info = ds.load_dataset(config(name='tfds:imagenet2012',
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
                                augmentation.normalize(stored['image'][:, 2, 2],
                                             info.mean, info.std))

