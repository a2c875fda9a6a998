"""Test setup: 8 host CPU devices, so data-parallel code runs as on a pod;
faster XLA compilation; the hypothesis profiles.

XLA reads the flag when the backend starts, so it is set here, before any test
module imports jax (under pytest-xdist every worker loads this file before its
test modules, so the flag holds there too). x64 stays off globally: tests that
need float64 enable it locally with `jax.enable_x64(True)`.

Hypothesis profiles, chosen by $HYPOTHESIS_PROFILE: `ci` (the default) runs
the same examples on every run; `thorough` ten times as many, freshly drawn:

  HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties.py
"""

import os

DEVICES_FLAG = '--xla_force_host_platform_device_count=8'
if DEVICES_FLAG not in os.environ.get('XLA_FLAGS', '').split():
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' ' + DEVICES_FLAG).strip()

# Compiling, not running, is most of this suite's time on a 2-core CPU.
# `jax_disable_most_optimizations` (XLA's CPU backend at LLVM level 0 and
# without its expensive passes) compiles faster while the arithmetic of every
# operation stays the same. Measured with XLA_FLAGS level 0 on two workers:
# tests/test_{lanczos_checkpoint,operators,models}.py 308 s -> 197 s, but the
# tests that run long loops slow down (the your_model notebook 90 s -> 262 s,
# test_fashion_mnist_exact.py 70 s -> 146 s). So it is on for every test
# except those marked `optimized`, and for the subprocesses (the
# multi-process workers, the notebook kernels) through the environment.
# SPECTRAL_DENSITY_TEST_OPTIMIZE=all compiles everything as users do.
FAST_COMPILE = os.environ.get('SPECTRAL_DENSITY_TEST_OPTIMIZE') != 'all'
FAST_COMPILE_ENV = 'JAX_DISABLE_MOST_OPTIMIZATIONS'
if FAST_COMPILE:
  os.environ[FAST_COMPILE_ENV] = '1'

import pathlib  # pylint: disable=g-import-not-at-top

from hypothesis import settings  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent

# CI draws the same examples on every run (derandomize); `thorough` draws new
# ones, ten times as many. No deadline: an example's first run compiles.
settings.register_profile('ci', max_examples=60, deadline=None,
                          derandomize=True)
settings.register_profile('thorough', max_examples=600, deadline=None)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


def fashion_mnist_dir():
  """Where the real Fashion-MNIST IDX files are: $FASHION_MNIST_DIR or
  ../shared/data/fashion-mnist next to the repository."""
  return pathlib.Path(os.environ.get(
      'FASHION_MNIST_DIR', REPO.parent / 'shared' / 'data' / 'fashion-mnist'))


@pytest.fixture(scope='session')
def fashion_mnist_path():
  path = fashion_mnist_dir()
  if not (path / 'train-images-idx3-ubyte.gz').exists():
    pytest.skip(f'Fashion-MNIST IDX files not found in {path} (set '
                'FASHION_MNIST_DIR to run this test on real data).')
  return path


# The heavy files (minutes each: whole training runs, several processes,
# notebooks, dense Hessians of real data). `pytest -m "not slow"` leaves them
# out, for a few minutes' run of the library's tests; CI runs everything.
SLOW_FILES = frozenset((
    'test_block_heterogeneity.py', 'test_fashion_mnist_exact.py', 'test_main_multihost.py',
    'test_multihost.py', 'test_notebooks.py', 'test_reproduce.py',
    'test_train_resnet.py'))


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'optimized: compiled with all of XLA\'s optimisations (tests '
      'whose running time, not compilation, dominates)')
  config.addinivalue_line(
      'markers', 'slow: a heavy test, left out by `pytest -m "not slow"` '
      '(every test of the files in SLOW_FILES, and any test marked so)')
  # Deprecated JAX or Flax API fails the suite (issue 22). A warning raised
  # inside jax or flax, and one that jax or flax attributes to its caller
  # (their deprecations use stacklevel=2: the module is then ours) and that
  # names them.
  config.addinivalue_line('filterwarnings',
                          r'error::DeprecationWarning:(jax|flax)(\.|$)')
  config.addinivalue_line(
      'filterwarnings', r'error:.*(jax|flax|nnx|linen|mesh|pmap):'
      r'DeprecationWarning:(spectral_density|experiments|benchmarks|configs|'
      r'colab|test_|toy_problems|multihost_worker)')


def pytest_collection_modifyitems(items):
  for item in items:
    if item.path.name in SLOW_FILES:
      item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Before any fixture of `item` (module fixtures included) is set up."""
  jax.config.update('jax_disable_most_optimizations', FAST_COMPILE and
                    item.get_closest_marker('optimized') is None)
