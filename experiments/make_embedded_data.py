"""Builds the Fashion-MNIST subset shipped in experiments/data.

Draws a class-balanced random subset of the IDX files (seeded), stores it as a
compressed .npz of uint8 images together with the indices of its examples in the
original splits, and copies the dataset's licence beside it.

  python -m experiments.make_embedded_data [--fashion_mnist_dir DIR]

DIR defaults to $FASHION_MNIST_DIR, else /work/shared/data/fashion-mnist.
"""

import argparse
import os
import pathlib
import shutil

import numpy as np

from experiments import datasets

DEFAULT_SOURCE = '/work/shared/data/fashion-mnist'
OUTPUT = datasets.EMBEDDED_FASHION_MNIST


def balanced_indices(labels: np.ndarray, per_class: int,
                     rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of per_class random examples of every class.

  Args:
    labels: [N] int.
    per_class: examples drawn of each class, without replacement.
    rng: draws them.

  Returns:
    [num_classes * per_class] indices into labels, ascending.
  """
  return np.sort(np.concatenate([
      rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
      for c in np.unique(labels)]))


def build_subset(source_dir: str | pathlib.Path, train_per_class: int,
                 test_per_class: int, seed: int) -> dict[str, np.ndarray]:
  """The arrays of the subset file.

  Args:
    source_dir: directory of the four Fashion-MNIST IDX .gz files.
    train_per_class: training examples per class.
    test_per_class: test examples per class.
    seed: seed of the draw.

  Returns:
    {'<split>_image': uint8 [N, 28, 28, 1], '<split>_label': int32 [N],
    '<split>_index': int32 [N] positions in the original split} for split in
    train, test.
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, per_class in (('train', train_per_class),
                           ('test', test_per_class)):
    data = datasets.read_idx_dataset(source_dir, split)
    indices = balanced_indices(data['label'], per_class, rng)
    arrays[f'{split}_image'] = data['image'][indices]
    arrays[f'{split}_label'] = data['label'][indices]
    arrays[f'{split}_index'] = indices.astype(np.int32)
  return arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--fashion_mnist_dir',
                      default=os.environ.get('FASHION_MNIST_DIR',
                                             DEFAULT_SOURCE))
  parser.add_argument('--output_dir', default=str(OUTPUT.parent))
  # 4,000 examples of about 440 compressed bytes each keep the file under 2 MB.
  parser.add_argument('--train_per_class', type=int, default=300)
  parser.add_argument('--test_per_class', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  output_dir = pathlib.Path(args.output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  arrays = build_subset(args.fashion_mnist_dir, args.train_per_class,
                        args.test_per_class, args.seed)
  np.savez_compressed(output_dir / OUTPUT.name, **arrays)
  shutil.copyfile(pathlib.Path(args.fashion_mnist_dir) / 'COPYRIGHT',
                  output_dir / 'FASHION_MNIST_COPYRIGHT')


if __name__ == '__main__':
  main()
