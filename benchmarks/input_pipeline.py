"""Throughput of the input pipeline on synthetic JPEG records; prints tables.

  python -m benchmarks.input_pipeline [--workers=0,1,2] [--seconds=6]

Rows:
  * training images/s of `input_pipeline.train_batches` (read, decode, augment,
    normalise, batch) for 0, 1 and 2 grain worker processes, on JPEG records
    of ImageNet size (random-resized crop to 224) and of CIFAR size (pad-4
    crop to 32 and flip); 0 workers reads with threads in the main process.
  * the Hessian set: the seconds to decode and crop it once
    (`prepare_hessian_set`), then the input seconds of each product (one pass
    over the prepared uint8 arrays, normalised), against decoding every
    product again (the stream before issue 11).
The records are `image_sources.JpegSource` images (smooth noise, JPEG quality
90) behind `image_sources.TfdsSource`, the path of a real `tfds.data_source`.
"""

import argparse
import time

import numpy as np

from experiments import datasets
from experiments import image_sources
from experiments import input_pipeline

# ImageNet's typical decoded sizes (the mean image is about 400 x 350).
IMAGENET_SHAPES = [(375, 500, 3), (500, 375, 3), (333, 500, 3), (400, 400, 3)]


def imagenet_like(num_examples: int) -> tuple[image_sources.TfdsSource,
                                              datasets.DatasetInfo]:
  """JPEG records of ImageNet size, stored at 256, model input 224."""
  source = image_sources.TfdsSource(
      image_sources.JpegSource(num_examples, IMAGENET_SHAPES, num_distinct=32),
      256, 3, fixed_shape=False)
  mean, std = datasets.NORMALIZATION['imagenet2012']
  return source, datasets.DatasetInfo(
      'synthetic_imagenet_jpeg', 1000, (224, 224, 3), mean, std, 'imagenet',
      num_examples, 0)


def cifar_like(num_examples: int) -> tuple[image_sources.TfdsSource,
                                           datasets.DatasetInfo]:
  """JPEG records of CIFAR size (32 x 32 x 3)."""
  source = image_sources.TfdsSource(
      image_sources.JpegSource(num_examples, [(32, 32, 3)], num_distinct=256,
                          num_classes=10), 32, 3, fixed_shape=True)
  mean, std = datasets.NORMALIZATION['cifar10']
  return source, datasets.DatasetInfo(
      'synthetic_cifar_jpeg', 10, (32, 32, 3), mean, std, 'cifar',
      num_examples, 0)


def images_per_second(data, info, batch_size: int, num_workers: int,
                      seconds: float) -> float:
  """Training images/s after the first two batches (worker start-up)."""
  batches = input_pipeline.train_batches(
      data, info, batch_size, seed=0, process_index=0, process_count=1,
      num_workers=num_workers)
  for _ in range(2):
    next(batches)
  start, count = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    count += len(next(batches)['label'])
  rate = count / (time.perf_counter() - start)
  if hasattr(batches, 'close'):
    batches.close()
  return rate


def hessian_rows(data, info, num_examples: int, batch_size: int) -> dict:
  """Seconds: prepare once, input per product prepared, and re-decoded."""
  start = time.perf_counter()
  prepared = input_pipeline.prepare_hessian_set(
      data, info, num_examples, batch_size, process_index=0, process_count=1)
  prepare = time.perf_counter() - start
  start = time.perf_counter()
  for _ in prepared():
    pass
  per_product = time.perf_counter() - start
  start = time.perf_counter()
  for first in range(0, num_examples, batch_size):
    indices = np.arange(first, min(first + batch_size, num_examples))
    input_pipeline.preprocess(input_pipeline.take(data, indices), info)
  redecoded = time.perf_counter() - start
  return {'prepare': prepare, 'per_product': per_product,
          'redecoded': redecoded}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--seconds', type=float, default=6.0,
                      help='measuring time of each throughput row')
  parser.add_argument('--hessian_examples', type=int, default=256)
  args = parser.parse_args()
  workers = [int(w) for w in args.workers.split(',')]
  cases = [('ImageNet-size JPEG -> 224 (random-resized crop)',
            imagenet_like(100_000), 64),
           ('CIFAR-size JPEG -> 32 (pad-4 crop, flip)', cifar_like(50_000),
            256)]
  print('Training input, images/s (batch of 64 ImageNet / 256 CIFAR):')
  print(f"{'records':50s}" + ''.join(f'{w:>4d} workers' for w in workers))
  for name, (data, info), batch in cases:
    rates = [images_per_second(data, info, batch, w, args.seconds)
             for w in workers]
    print(f'{name:50s}' + ''.join(f'{r:12.0f}' for r in rates))

  print(f'\nHessian set of {args.hessian_examples} examples, batches of 128:')
  print(f"{'records':50s}{'prepare s':>10s}{'input s/product':>17s}"
        f"{'re-decoded s/product':>22s}")
  for name, (data, info), _ in cases:
    rows = hessian_rows(data, info, args.hessian_examples, 128)
    print(f"{name:50s}{rows['prepare']:10.2f}{rows['per_product']:17.4f}"
          f"{rows['redecoded']:22.2f}")


if __name__ == '__main__':
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.run('input_pipeline', main)
