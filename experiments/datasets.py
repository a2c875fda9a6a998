"""Dataset readers of the experiments: TFDS, IDX, CIFAR batches, npz, synthetic.

A dataset is a dict {'image': uint8 [N, H, W, C], 'label': int32 [N]}, or for
TFDS a `TfdsSource` indexed the same way (`source[indices]` -> such a dict).
Images stay uint8 here; `input_pipeline` augments, normalises and batches them.

Config schema of `load_dataset(config)`: the fields of `config.dataset`; an
absent field takes the default shown.

  name: str, one of
    'embedded_fashion_mnist'  the class-balanced Fashion-MNIST subset shipped in
                              experiments/data (3,000 train / 1,000 test)
    'fashion_mnist_idx'       the four Fashion-MNIST IDX .gz files in data_dir
    'mnist_idx'               the same for MNIST
    'cifar10_python'          CIFAR-10 python pickles (data_batch_1..5,
                              test_batch) in data_dir
    'npz'                     data_dir/train.npz and data_dir/test.npz, keys
                              'image' [N, H, W, C] uint8 and 'label' [N]
    'synthetic'               seeded uniform noise images, labels a fixed
                              random linear function of the image (learnable)
    'tfds:<name>'             a TFDS dataset prepared in data_dir in
                              array_record format, read by random access:
                              'tfds:mnist', 'tfds:fashion_mnist',
                              'tfds:cifar10', 'tfds:imagenet2012'
  data_dir: str | None = None
      Directory of the files; for TFDS its data_dir (None: the TFDS default).
  num_train: int | None = None
      Keep the first num_train training examples (None: all); for 'synthetic'
      how many to make (None: 1,024).
  num_test: int | None = None
      The same for the test split (synthetic: 256).
  image_size: int | None = None
      Side of the model's square input (None: native; 224 for variable-size
      TFDS images). Smaller images are zero-padded, larger ones centre-cropped;
      variable-size images are stored resized (shorter side) and
      centre-cropped to image_size / 0.875; evaluation and the Hessian take
      the centre image_size of that, training a random-resized crop of the
      decoded image.
  channels: int | None = None
      Input channels (None: native); one-channel images are repeated.
  num_classes: int | None = None
      For 'synthetic' how many (None: 10); for the others checked.
  augmentation: str | None = None
      'cifar' (4-pixel zero padding, random crop of image_size, horizontal
      flip: the authors'), 'imagenet' (random-resized crop to image_size of
      the decoded image, Goyal et al. 2017 / Inception, and flip) or 'none'.
      None: 'cifar' for CIFAR-10, 'imagenet' for ImageNet, else 'none'.
  image_shape: tuple = (28, 28, 1)
      'synthetic' only: native [H, W, C].
  seed: int = 0
      'synthetic' only.
  mean, std: tuple | None = None
      Per-channel normalisation of [0, 1] pixels. None: the published
      constants of MNIST, Fashion-MNIST, CIFAR-10 and ImageNet, otherwise
      estimated on the first 4,096 training images.

`load_dataset` returns (train, test, info), info a `DatasetInfo`.

Multi-host: every host holds the whole dataset (arrays, memory maps or random
access) and reads only its share (`input_pipeline` decides which).
"""

import dataclasses
import gzip
import math
import pathlib
import pickle
from typing import Any, Mapping

import numpy as np

from experiments import image_sources
from experiments.image_sources import fit_images
from experiments.image_sources import TfdsSource

EMBEDDED_FASHION_MNIST = (pathlib.Path(__file__).parent / 'data' /
                          'fashion_mnist_subset.npz')
AUGMENTATIONS = ('cifar', 'imagenet', 'none')
# ImageNet convention: train crops of 224 from images of 256.
IMAGENET_CROP_FRACTION = 0.875
# Enough for the per-channel moments to 3 digits; bounds the float64 copy.
MOMENTS_SAMPLE = 4096

# Per-channel mean and standard deviation of the training pixels in [0, 1].
NORMALIZATION = {
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}
_IDX_PREFIXES = {'train': 'train', 'test': 't10k'}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the batching need to know about a dataset.

  Attributes:
    name: the config name.
    num_classes: number of classes.
    image_shape: [H, W, C] of the model's input (stored images may be larger,
      for the 'imagenet' augmentation).
    mean: per-channel mean of [0, 1] pixels, [C].
    std: per-channel standard deviation of [0, 1] pixels, [C].
    augmentation: one of AUGMENTATIONS, applied to training batches.
    num_train: training examples.
    num_test: test examples.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augmentation: str
  num_train: int
  num_test: int


def parse_idx(raw: bytes) -> np.ndarray:
  """The array of an IDX file (the MNIST format), its dims from the header."""
  if raw[:2] != b'\x00\x00' or raw[2] not in _IDX_DTYPES:
    raise ValueError('not an IDX file: bad magic number')
  ndim = raw[3]
  shape = np.frombuffer(raw, '>i4', count=ndim, offset=4)
  data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
  return data.reshape(shape)


def read_idx_dataset(data_dir: str | pathlib.Path,
                     split: str) -> dict[str, np.ndarray]:
  """Reads MNIST or Fashion-MNIST from its IDX .gz files.

  Args:
    data_dir: directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
    split: 'train' or 'test'.

  Returns:
    {'image': uint8 [N, 28, 28, 1], 'label': int32 [N]}.
  """
  prefix = pathlib.Path(data_dir) / _IDX_PREFIXES[split]
  with gzip.open(f'{prefix}-images-idx3-ubyte.gz', 'rb') as f:
    images = parse_idx(f.read())
  with gzip.open(f'{prefix}-labels-idx1-ubyte.gz', 'rb') as f:
    labels = parse_idx(f.read())
  return {'image': images.astype(np.uint8)[..., None],
          'label': labels.astype(np.int32)}


def read_cifar10_python(data_dir: str | pathlib.Path,
                        split: str) -> dict[str, np.ndarray]:
  """Reads CIFAR-10 from its python pickle batches.

  Args:
    data_dir: directory with data_batch_1 .. data_batch_5 and test_batch.
    split: 'train' or 'test'.

  Returns:
    {'image': uint8 [N, 32, 32, 3], 'label': int32 [N]}.
  """
  names = ([f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else
           ['test_batch'])
  images, labels = [], []
  for name in names:
    with open(pathlib.Path(data_dir) / name, 'rb') as f:
      batch = pickle.load(f, encoding='bytes')
    # Each row holds the red, then the green, then the blue 32x32 plane.
    images.append(np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32))
    labels.append(np.asarray(batch[b'labels'], np.int32))
  return {'image': np.concatenate(images).transpose(0, 2, 3, 1),
          'label': np.concatenate(labels)}


def read_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads {'image': uint8 [N, H, W, C], 'label': int32 [N]} from a .npz."""
  with np.load(path) as f:
    return {'image': f['image'].astype(np.uint8),
            'label': f['label'].astype(np.int32)}


def read_embedded_fashion_mnist(split: str) -> dict[str, np.ndarray]:
  """The Fashion-MNIST subset shipped with the package (make_embedded_data.py).

  Args:
    split: 'train' or 'test'.

  Returns:
    {'image': uint8 [N, 28, 28, 1], 'label': int32 [N]}.
  """
  with np.load(EMBEDDED_FASHION_MNIST) as f:
    return {'image': f[f'{split}_image'], 'label': f[f'{split}_label']}


def synthetic_dataset(num_train: int, num_test: int,
                      image_shape: tuple[int, int, int], num_classes: int,
                      seed: int) -> tuple[dict[str, np.ndarray], ...]:
  """Uniform uint8 noise images, labelled by a fixed random linear classifier.

  Args:
    num_train: training examples.
    num_test: test examples.
    image_shape: [H, W, C].
    num_classes: number of classes.
    seed: determines images, classifier and so labels.

  Returns:
    (train, test) dicts {'image': uint8 [N, H, W, C], 'label': int32 [N]}.
  """
  rng = np.random.default_rng(seed)
  num_examples = num_train + num_test
  images = rng.integers(0, 256, (num_examples, *image_shape), np.uint8)
  weights = rng.standard_normal((math.prod(image_shape), num_classes))
  centred = images.reshape(num_examples, -1) / 255.0 - 0.5
  labels = np.argmax(centred @ weights, axis=1).astype(np.int32)
  return ({'image': images[:num_train], 'label': labels[:num_train]},
          {'image': images[num_train:], 'label': labels[num_train:]})


def data_size(data: Any) -> int:
  """Number of examples of a dataset dict or source."""
  return len(data['label']) if isinstance(data, Mapping) else len(data)


def take(data: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  """The examples at indices, {'image': [len(indices), ...], 'label': [...]}."""
  if isinstance(data, Mapping):
    return {key: value[indices] for key, value in data.items()}
  return data[indices]


def record(data: Any, index: int, native: bool = False) -> dict[str, Any]:
  """One example, {'image': uint8 [H, W, C], 'label': int}: at the stored
  shape, or (native=True) as decoded before any resize (TFDS; arrays are
  stored as they are)."""
  if isinstance(data, Mapping):
    return {'image': data['image'][index], 'label': int(data['label'][index])}
  return data.native_record(index) if native else data.record(index)


def channel_moments(images: np.ndarray) -> tuple[tuple[float, ...], ...]:
  """Per-channel mean and standard deviation of uint8 images [N, H, W, C]."""
  scaled = images.reshape(-1, images.shape[-1]) / 255.0
  return tuple(scaled.mean(0).tolist()), tuple(scaled.std(0).tolist())


def _read_arrays(cfg: Any) -> tuple[dict, dict, str, int]:
  """(train, test, normalisation key, classes) of the offline datasets."""
  name, data_dir = cfg.name, cfg.get('data_dir')
  if name == 'embedded_fashion_mnist':
    return (read_embedded_fashion_mnist('train'),
            read_embedded_fashion_mnist('test'), 'fashion_mnist', 10)
  if name in ('fashion_mnist_idx', 'mnist_idx'):
    return (read_idx_dataset(data_dir, 'train'),
            read_idx_dataset(data_dir, 'test'), name[:-len('_idx')], 10)
  if name == 'cifar10_python':
    return (read_cifar10_python(data_dir, 'train'),
            read_cifar10_python(data_dir, 'test'), 'cifar10', 10)
  if name == 'npz':
    train = read_npz(pathlib.Path(data_dir) / 'train.npz')
    test = read_npz(pathlib.Path(data_dir) / 'test.npz')
    return train, test, None, int(train['label'].max()) + 1
  if name == 'synthetic':
    num_classes = cfg.get('num_classes') or 10
    train, test = synthetic_dataset(
        cfg.get('num_train') or 1024, cfg.get('num_test') or 256,
        tuple(cfg.get('image_shape', (28, 28, 1))), num_classes,
        cfg.get('seed', 0))
    return train, test, None, num_classes
  raise ValueError(f'unknown dataset {name!r}')


def _load_tfds(cfg: Any) -> tuple[TfdsSource, TfdsSource, str, int, tuple]:
  """(train, test, normalisation key, classes, model input shape) from TFDS."""
  name = cfg.name[len('tfds:'):]
  builder = image_sources.tfds_builder(name, cfg.get('data_dir'))
  native_shape = builder.info.features['image'].shape
  fixed_shape = None not in native_shape
  channels = cfg.get('channels') or native_shape[-1]
  input_size = cfg.get('image_size') or native_shape[0] or 224
  stored_size = (input_size if fixed_shape else
                 round(input_size / IMAGENET_CROP_FRACTION))
  splits = []
  for split, num in (('train', cfg.get('num_train')),
                     ('test', cfg.get('num_test'))):
    source = image_sources.tfds_module().data_source(name, split=split,
                                 data_dir=cfg.get('data_dir'), download=False)
    splits.append(TfdsSource(source, stored_size, channels, fixed_shape, num))
  return (*splits, name, builder.info.features['label'].num_classes,
          (input_size, input_size, channels))


def _normalization(cfg: Any, key: str | None, train: Any,
                   channels: int) -> tuple[tuple[float, ...], ...]:
  """(mean, std) per channel: the config's, the published, or estimated."""
  if cfg.get('mean') and cfg.get('std'):
    return tuple(cfg.mean), tuple(cfg.std)
  if key in NORMALIZATION:
    mean, std = NORMALIZATION[key]
    # Grey images repeated to three channels keep their one-channel statistics.
    return mean * (channels // len(mean)), std * (channels // len(std))
  sample = take(train, np.arange(min(MOMENTS_SAMPLE, data_size(train))))
  return channel_moments(sample['image'])


def load_dataset(config: Any) -> tuple[Any, Any, DatasetInfo]:
  """Loads the dataset described by config.dataset (schema in the module doc).

  Args:
    config: ml_collections.ConfigDict with a `dataset` field.

  Returns:
    (train, test, info): train and test dataset dicts {'image': uint8
    [N, S, S, C], 'label': int32 [N]} (`TfdsSource` for TFDS), and their
    `DatasetInfo`.
  """
  cfg = config.dataset
  if cfg.name.startswith('tfds:'):
    train, test, key, num_classes, image_shape = _load_tfds(cfg)
  else:
    train, test, key, num_classes = _read_arrays(cfg)
    train, test = (
        {'image': fit_images(d['image'][:num], cfg.get('image_size'),
                             cfg.get('channels')),
         'label': d['label'][:num]}
        for d, num in ((train, cfg.get('num_train')),
                       (test, cfg.get('num_test'))))
    image_shape = train['image'].shape[1:]
  if cfg.get('num_classes') not in (None, num_classes):
    raise ValueError(f'{cfg.name} has {num_classes} classes, the config says '
                     f'{cfg.num_classes}')
  mean, std = _normalization(cfg, key, train, image_shape[-1])
  default_augmentation = {'cifar10': 'cifar', 'imagenet2012': 'imagenet'}
  augmentation = (cfg.get('augmentation') or
                  default_augmentation.get(key, 'none'))
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f'augmentation must be one of {AUGMENTATIONS}, got '
                     f'{augmentation!r}')
  info = DatasetInfo(
      name=cfg.name, num_classes=num_classes, image_shape=tuple(image_shape),
      mean=mean, std=std, augmentation=augmentation,
      num_train=data_size(train), num_test=data_size(test))
  return train, test, info



# --- Text: byte sequences for the language model (experiments/transformer). --

# Directories of the standard library left out of the 'stdlib' corpus: tests
# (large generated data files) and third-party packages.
STDLIB_EXCLUDED = ('site-packages', 'dist-packages', 'test', 'tests',
                   'idle_test', '__pycache__')


def stdlib_files(root=None):
  """The 'stdlib' corpus's files: every ``.py`` file under the Python
  standard library's directory (`sysconfig`), sorted by relative path, without
  `STDLIB_EXCLUDED` directories. Present on every machine with Python; it
  changes with the Python version (reports record it)."""
  import sysconfig  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root or sysconfig.get_paths()['stdlib'])
  return sorted(
      (p for p in root.rglob('*.py')
       if not set(p.relative_to(root).parts[:-1]) & set(STDLIB_EXCLUDED)),
      key=lambda p: p.relative_to(root).as_posix())


def byte_sequences(texts, seq_len):
  """Documents as padded byte sequences.

  Each document (bytes) is cut into pieces of ``seq_len + 1`` bytes
  overlapping by one (piece j's last byte is piece j + 1's first), so every
  byte after the first of a document is a target exactly once; a document's
  last piece is zero-padded.

  Returns:
    {'tokens': int32 [N, seq_len + 1], 'mask': float32 [N, seq_len]} (mask:
    target t + 1 is a real byte).
  """
  tokens, masks = [], []
  for text in texts:
    data = np.frombuffer(text, np.uint8)
    if data.size < 2:
      continue
    pieces = -(-(data.size - 1) // seq_len)                 # ceil
    padded = np.zeros(pieces * seq_len + 1, np.int32)
    padded[:data.size] = data
    starts = np.arange(pieces)[:, None] * seq_len
    tokens.append(padded[starts + np.arange(seq_len + 1)[None]])
    targets = starts + 1 + np.arange(seq_len)[None]        # [pieces, T]
    masks.append((targets < data.size).astype(np.float32))
  return {'tokens': np.concatenate(tokens), 'mask': np.concatenate(masks)}


def _spread(n, k):
  """k indices spread evenly over range(n) (deterministic)."""
  if k > n:
    raise ValueError(f'the corpus has {n} sequences, {k} were asked for.')
  return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def load_text_dataset(config):
  """(train, test) byte-sequence sets of `config.dataset` (text schema).

  Fields: name ('stdlib', or 'tfds:<name>' for a TFDS text dataset on pods,
  e.g. 'tfds:lm1b', with `text_key` its text feature), seq_len, num_train,
  num_test (None: all), data_dir (TFDS). 'stdlib': the sequences of
  `stdlib_files` in order; the training set is `num_train` of the first 90%
  spread evenly, the test set `num_test` of the last 10%.
  """
  cfg = config.dataset
  seq_len = int(cfg.seq_len)
  if cfg.name == 'stdlib':
    seqs = byte_sequences((p.read_bytes() for p in stdlib_files()), seq_len)
    n = len(seqs['mask'])
    cut = int(0.9 * n)
    num_train = cfg.get('num_train') or cut
    num_test = cfg.get('num_test') or n - cut
    train_ids = _spread(cut, num_train)
    test_ids = cut + _spread(n - cut, num_test)
    return ({k: v[train_ids] for k, v in seqs.items()},
            {k: v[test_ids] for k, v in seqs.items()})
  if cfg.name.startswith('tfds:'):
    tfds = image_sources.tfds_module()
    name, key = cfg.name[len('tfds:'):], cfg.get('text_key') or 'text'
    out = []
    for split, num in (('train', cfg.get('num_train')),
                       ('test', cfg.get('num_test'))):
      source = tfds.data_source(name, split=split, data_dir=cfg.get('data_dir'),
                                download=False)
      texts, count = [], 0
      for i in range(len(source)):
        text = source[i][key]
        texts.append(text if isinstance(text, bytes) else text.encode())
        count += max(len(texts[-1]) - 1, 0) // seq_len + 1
        if num and count >= num:
          break
      seqs = byte_sequences(texts, seq_len)
      out.append({k: v[:num] for k, v in seqs.items()} if num else seqs)
    return tuple(out)
  raise ValueError(f"dataset.name: a text dataset is 'stdlib' or "
                   f"'tfds:<name>', got {cfg.name!r}.")
