"""Image sources: fitting images to one shape, and random access to TFDS
splits (and a synthetic stand-in for one), one record at a time."""

import io
from typing import Any

import numpy as np
from PIL import Image


class JpegSource:
  """A stand-in for a `tfds.data_source` of JPEG images (ImageNet's
  format): random images encoded once, decoded at every read.

  Record i is distinct image i % num_distinct (bounded memory); its label is
  i % num_classes. Wrap it in `TfdsSource` like a real TFDS split.
  """

  def __init__(self, num_examples: int, shapes: list[tuple[int, int, int]],
               num_distinct: int = 64, num_classes: int = 1000,
               quality: int = 90, seed: int = 0):
    """Args:

      num_examples: len() of the source.
      shapes: [H, W, C] of the distinct images, used in turn.
      num_distinct: how many distinct images are encoded.
      num_classes: labels are i % num_classes.
      quality: JPEG quality.
      seed: of the pixels (smooth noise, so that JPEG sizes are realistic).
    """
    rng = np.random.default_rng(seed)
    self._num_examples, self._num_classes = num_examples, num_classes
    self._encoded = []
    for i in range(num_distinct):
      height, width, channels = shapes[i % len(shapes)]
      coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1,
                                     channels), np.uint8)
      image = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :width]
      image = (image + rng.integers(0, 32, image.shape)).clip(0, 255)
      pil = Image.fromarray(image.astype(np.uint8).squeeze(-1) if channels == 1
                            else image.astype(np.uint8))
      buffer = io.BytesIO()
      pil.save(buffer, format='JPEG', quality=quality)
      self._encoded.append(buffer.getvalue())

  def __len__(self) -> int:
    return self._num_examples

  def encoded(self, index: int) -> bytes:
    """The JPEG bytes of record index."""
    return self._encoded[index % len(self._encoded)]

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = np.asarray(Image.open(io.BytesIO(self.encoded(index))))
    return {'image': image.reshape(*image.shape[:2], -1),
            'label': index % self._num_classes}


def fit_images(images: np.ndarray, image_size: int | None,
               channels: int | None) -> np.ndarray:
  """Zero-pads or centre-crops images to a square size; repeats one channel.

  Args:
    images: [N, H, W, C].
    image_size: side of the result (None: keep H, W).
    channels: channels of the result (None: keep C); C must equal it or be 1.

  Returns:
    [N, image_size, image_size, channels], the dtype of images.
  """
  if channels is not None and channels != images.shape[-1]:
    if images.shape[-1] != 1:
      raise ValueError(f'cannot make {channels} channels of {images.shape[-1]}')
    images = np.repeat(images, channels, axis=-1)
  if image_size is None:
    return images
  for axis in (1, 2):
    excess = images.shape[axis] - image_size
    if excess > 0:
      images = np.take(images, np.arange(image_size) + excess // 2, axis=axis)
    elif excess < 0:
      pad = [(0, 0)] * images.ndim
      pad[axis] = (-excess // 2, -excess - (-excess // 2))
      images = np.pad(images, pad)
  return images


def resize_and_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side of an image to size and crops the centre square.

  Args:
    image: uint8 [H, W, C].
    size: side of the result.

  Returns:
    uint8 [size, size, C].
  """
  height, width = image.shape[:2]
  scale = size / min(height, width)
  new_width = max(size, round(width * scale))
  new_height = max(size, round(height * scale))
  pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
  resized = np.asarray(pil.resize((new_width, new_height),
                                  Image.Resampling.BICUBIC))
  resized = resized.reshape(new_height, new_width, image.shape[-1])
  top, left = (new_height - size) // 2, (new_width - size) // 2
  return resized[top:top + size, left:left + size]


class TfdsSource:
  """Random access to a prepared TFDS split, images fitted to one shape.

  `source[indices]` returns {'image': uint8 [len(indices), S, S, C],
  'label': int32 [len(indices)]} like the arrays of the offline readers.
  """

  def __init__(self, source: Any, image_size: int | None,
               channels: int | None, fixed_shape: bool,
               num_examples: int | None = None):
    """Args:

      source: a `tfds.data_source` split: len() and [int] -> {'image', 'label'}.
      image_size: stored side S (None: native, only with fixed_shape).
      channels: stored channels (None: native).
      fixed_shape: whether all images share one shape; they are then padded or
        cropped like `fit_images`, otherwise resized and centre-cropped.
      num_examples: keep the first num_examples (None: all).
    """
    self._source = source
    self._image_size = image_size
    self._channels = channels
    self._fixed_shape = fixed_shape
    self._length = (len(source) if num_examples is None else
                    min(num_examples, len(source)))

  def __len__(self) -> int:
    return self._length

  def native_record(self, index: int) -> dict[str, Any]:
    """Example index as decoded, channels fitted, before any resize:
    {'image': uint8 [H, W, C], 'label': int} (the random-resized crop
    starts from it)."""
    record = self._source[int(index)]
    image = fit_images(np.asarray(record['image'], np.uint8)[None], None,
                       self._channels)[0]
    return {'image': image, 'label': int(record['label'])}

  def record(self, index: int) -> dict[str, Any]:
    """Example index at the stored shape: {'image': uint8 [S, S, C],
    'label': int}."""
    record = self.native_record(index)
    image = record['image']
    if not self._fixed_shape:
      image = resize_and_centre_crop(image, self._image_size)
    return {'image': fit_images(image[None], self._image_size, None)[0],
            'label': record['label']}

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    records = [self.record(i) for i in indices]
    return {'image': np.stack([r['image'] for r in records]),
            'label': np.asarray([r['label'] for r in records], np.int32)}


def tfds_module() -> Any:
  """`tensorflow_datasets`, imported on first use: only 'tfds:' datasets need
  it (the `tfds` extra), so the rest runs without it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "'tfds:' datasets need tensorflow-datasets: pip install -e "
        "'.[experiments,tfds]'") from e
  return tfds


def tfds_builder(name: str, data_dir: str | None) -> Any:
  """The builder of a TFDS dataset, which must be prepared in data_dir.

  Raises:
    FileNotFoundError: not prepared there (nothing is downloaded).
  """
  builder = tfds_module().builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir}. '
        f'Prepare it beforehand in array_record format (random access needs '
        f'it), e.g. `tfds build {name} --file_format=array_record '
        f'--data_dir=DIR`, and set config.dataset.data_dir=DIR.')
  return builder
