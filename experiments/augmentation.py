"""Augmentation and normalisation of uint8 images (numpy, one image or a
batch), and the same normalisation inside a device program
(`normalized_on_device`).

  'cifar'     the authors': zero-pad 4 pixels, random 32x32 crop, left-right
              flip with probability 1/2.
  'imagenet'  random-resized crop (Szegedy et al. 2015, as in Goyal et al.
              2017: area fraction in [0.08, 1], aspect ratio log-uniform in
              [3/4, 4/3], of the decoded image) to image_size, and flip.
  'none'      the centre image_size crop, as for evaluation.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from experiments.datasets import DatasetInfo

CIFAR_PADDING = 4
# Random-resized crop (Inception; Goyal et al. 2017): area and aspect ratio.
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10


def normalize(images: np.ndarray, mean: tuple[float, ...],
              std: tuple[float, ...]) -> np.ndarray:
  """uint8 [..., C] to float32 (x / 255 - mean) / std per channel."""
  out = images.astype(np.float32)
  # In place, on rows of W x C values with mean and std tiled to match: numpy
  # is slow on a broadcast inner axis of C = 3, and fresh 77 MB arrays (one
  # ImageNet batch) cost more than the arithmetic.
  width = out.shape[-2] if out.ndim > 1 else 1
  rows = out.reshape(-1, width * out.shape[-1])
  rows /= 255.0
  rows -= np.tile(np.asarray(mean, np.float32), width)
  rows /= np.tile(np.asarray(std, np.float32), width)
  return out


def normalized_on_device(loss: Callable, mean: tuple[float, ...],
                         std: tuple[float, ...]) -> Callable:
  """`loss(params, batch)` that takes uint8 images and normalises them itself.

  The Hessian set then stays uint8 wherever it lives: a quarter of the
  device memory when resident, a quarter of the host-to-device bytes and no
  host arithmetic when streamed (`benchmarks.accelerator` measured the host's
  float32 normalisation at more than the product itself for ResNet-18 at
  224 x 224). The arithmetic is `normalize`'s, done in the parameters' dtype
  (float64 under `precision='float64'`) inside the product's program, where
  XLA fuses it into the first layer. Floating images pass through unchanged.

  Args:
    loss: loss(params, batch) on normalised images.
    mean, std: per channel, of images scaled to [0, 1].

  Returns:
    loss(params, batch), batch['image'] uint8 [B, H, W, C] or floating.
  """
  mean = np.asarray(mean, np.float64)
  std = np.asarray(std, np.float64)

  def wrapped(params, batch):
    images = batch['image']
    if jnp.issubdtype(images.dtype, jnp.integer):
      dtype = jnp.result_type(*jax.tree.leaves(params))
      images = ((images.astype(dtype) / dtype.type(255.0) - mean.astype(dtype))
                / std.astype(dtype))
      batch = {**batch, 'image': images}
    return loss(params, batch)

  return wrapped


def centre_crop(images: np.ndarray, size: int) -> np.ndarray:
  """Centre size x size window of images [..., H, W, C]."""
  top = (images.shape[-3] - size) // 2
  left = (images.shape[-2] - size) // 2
  return images[..., top:top + size, left:left + size, :]


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, size: int,
                  padding: int = CIFAR_PADDING) -> np.ndarray:
  """Random size x size window of the zero-padded image, flipped left-right
  with probability 1/2.

  Args:
    image: [H, W, C].
    rng: draws the offsets, then the flip.
    size: side of the crop.
    padding: zeros added on each side before cropping.

  Returns:
    [size, size, C], the dtype of image.
  """
  padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
  top = rng.integers(0, padded.shape[0] - size + 1)
  left = rng.integers(0, padded.shape[1] - size + 1)
  crop = padded[top:top + size, left:left + size]
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def crop_window(height: int, width: int,
                rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of a random-resized crop.

  A window of area fraction in CROP_AREA and log-uniform aspect ratio in
  CROP_RATIO, up to CROP_ATTEMPTS tries; otherwise the largest centred window
  with its ratio clamped to CROP_RATIO (torchvision's rule).
  """
  area = height * width
  log_ratio = np.log(CROP_RATIO)
  for _ in range(CROP_ATTEMPTS):
    target = area * rng.uniform(*CROP_AREA)
    ratio = math.exp(rng.uniform(*log_ratio))
    crop_w = round(math.sqrt(target * ratio))
    crop_h = round(math.sqrt(target / ratio))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      return (int(rng.integers(0, height - crop_h + 1)),
              int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w)
  ratio = width / height
  if ratio < CROP_RATIO[0]:
    crop_w, crop_h = width, round(width / CROP_RATIO[0])
  elif ratio > CROP_RATIO[1]:
    crop_h, crop_w = height, round(height * CROP_RATIO[1])
  else:
    crop_h, crop_w = height, width
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        size: int) -> np.ndarray:
  """A `crop_window` of image resized (bilinear) to size x size, flipped
  left-right with probability 1/2.

  Args:
    image: uint8 [H, W, C], as decoded.
    rng: draws the window, then the flip.
    size: side of the result.

  Returns:
    uint8 [size, size, C].
  """
  top, left, crop_h, crop_w = crop_window(*image.shape[:2], rng)
  crop = image[top:top + crop_h, left:left + crop_w]
  pil = Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else crop)
  resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR,
                                  reducing_gap=None))
  resized = resized.reshape(size, size, image.shape[-1])
  return resized[:, ::-1] if rng.random() < 0.5 else resized


def augment(image: np.ndarray, info: DatasetInfo,
            rng: np.random.Generator | None) -> np.ndarray:
  """One training image [H, W, C] to the model's [S, S, C] (still uint8):
  info.augmentation drawn from rng, or (rng None) the centre crop."""
  size = info.image_shape[0]
  if rng is not None and info.augmentation == 'cifar':
    return pad_crop_flip(image, rng, size)
  if rng is not None and info.augmentation == 'imagenet':
    return random_resized_crop(image, rng, size)
  return centre_crop(image, size)
