"""Tests of experiments/augmentation.py against reference crops."""

import numpy as np

from experiments import augmentation


def test_pad_crop_flip_only_flips_without_padding_deterministically():
  images = np.random.default_rng(0).integers(0, 256, (16, 5, 5, 1), np.uint8)
  out = [augmentation.pad_crop_flip(i, rng, 5, 0)
         for i, rng in zip(images, np.random.default_rng(3).spawn(16))]
  again = [augmentation.pad_crop_flip(i, rng, 5, 0)
           for i, rng in zip(images, np.random.default_rng(3).spawn(16))]
  np.testing.assert_array_equal(out, again)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 16


def test_cifar_augmentation_is_the_reference_window_of_the_padded_image():
  images = np.random.default_rng(0).integers(1, 256, (12, 8, 8, 3), np.uint8)
  padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
  seen_flips = set()
  for image, p, seed in zip(images, padded, range(12)):
    out = augmentation.pad_crop_flip(image, np.random.default_rng(seed), 8)
    assert out.shape == image.shape and out.dtype == np.uint8
    # The reference: the same draws (top, left, flip) applied by hand.
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, 9), rng.integers(0, 9)
    flip = rng.random() < 0.5
    window = p[top:top + 8, left:left + 8]
    np.testing.assert_array_equal(out, window[:, ::-1] if flip else window)
    seen_flips.add(flip)
  assert seen_flips == {True, False}


def coordinate_image(height, width):
  """uint8 [H, W, 3]: channel 0 the row, channel 1 the column, 2 zero."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def test_random_resized_crop_windows_have_the_inception_area_and_ratio():
  rng = np.random.default_rng(0)
  fractions, ratios = [], []
  for _ in range(400):
    top, left, h, w = augmentation.crop_window(120, 200, rng)
    assert 0 <= top <= 120 - h and 0 <= left <= 200 - w
    fractions.append(h * w / (120 * 200))
    ratios.append(w / h)
  # Rounding to whole pixels moves the bounds by about a pixel.
  # Ratio at most 4/3 on a 120 x 200 image: at most 120 x 160 pixels.
  assert 0.07 < min(fractions) < 0.15 and 0.7 < max(fractions) <= 0.81
  assert 0.74 < min(ratios) < 0.8 and 1.25 < max(ratios) < 1.35
  # In a strip of ratio 1/20 no window fits: the fallback is the centred
  # window of ratio 3/4 (torchvision's rule).
  assert augmentation.crop_window(400, 20, rng) == (186, 0, 27, 20)


def test_random_resized_crop_resizes_a_sub_window_and_flips_it():
  image = coordinate_image(120, 160)
  flips = set()
  for seed in range(20):
    out = augmentation.random_resized_crop(image,
                                           np.random.default_rng(seed), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    top, left, h, w = augmentation.crop_window(120, 160,
                                               np.random.default_rng(seed))
    # Bilinear resizing only averages pixels of the window.
    assert top <= out[..., 0].min() and out[..., 0].max() <= top + h - 1
    assert left <= out[..., 1].min() and out[..., 1].max() <= left + w - 1
    rows = out[:, 0, 0].astype(int)
    cols = out[0, :, 1].astype(int)
    assert np.all(np.diff(rows) >= 0)
    flipped = bool(np.all(np.diff(cols) <= 0))
    assert flipped or np.all(np.diff(cols) >= 0)
    flips.add(flipped)
  assert flips == {True, False}
