"""Test setup: 8 host CPU devices, so data-parallel code runs as on a pod.

XLA reads the flag when the backend starts, so it is set here, before any test
module imports jax. x64 stays off globally: tests that need float64 enable it
locally with `jax.enable_x64(True)`.
"""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    ' --xla_force_host_platform_device_count=8').strip()

import pathlib  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent


def fashion_mnist_dir():
  """Where the real Fashion-MNIST IDX files are: $FASHION_MNIST_DIR or
  ../shared/data/fashion-mnist next to the repository."""
  return pathlib.Path(os.environ.get(
      'FASHION_MNIST_DIR', REPO.parent / 'shared' / 'data' / 'fashion-mnist'))


@pytest.fixture
def fashion_mnist_path():
  path = fashion_mnist_dir()
  if not (path / 'train-images-idx3-ubyte.gz').exists():
    pytest.skip(f'Fashion-MNIST IDX files not found in {path} (set '
                'FASHION_MNIST_DIR to run this test on real data).')
  return path
