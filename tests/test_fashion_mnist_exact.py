"""SLQ against the exact spectrum of a trained MLP on real Fashion-MNIST.

The reduced version of `benchmarks/mlp_exact_check.py` (14x14 images, so
196-20-10 = 4,150 parameters, 2,000 examples), float64. The full-size numbers
(784-20-10, 10,000 examples) are in the README. Both tests compare with the
same dense Hessian's eigenvalues, computed once for the file. The L1
integrals use a grid of 50,001 points, a spacing of 1/5 of the narrowest
kernel, a quarter of the benchmark's kernel evaluations (4,150 eigenvalues
at each point). Measured at order 90: L1 0.07152 and 0.01303 at 1e-4 and
3e-4 x width; 0.07141 and 0.01303 on the benchmark's 200,001 points.
"""

import numpy as np
import pytest

from benchmarks import mlp_exact_check

# The dense Hessian and order-90 draws run long: compiled with every
# optimisation (tests/conftest.py); 70 s against 146 s without.
pytestmark = pytest.mark.optimized

GRID_LEN = 50001


@pytest.fixture(scope='module')
def reference(fashion_mnist_path):
  """The trained problem and its exact eigenvalues (the dense Hessian by
  `jax.hessian`'s composition, and `eigh`)."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setenv('FASHION_MNIST_DIR', str(fashion_mnist_path))
    return mlp_exact_check.exact_reference(num_examples=2000, pool=2)


def test_order_90_slq_matches_exact_spectrum(reference):
  out, exact, res = mlp_exact_check.compare(
      reference, order=90, num_draws=10, sigma_factors=(1e-4, 3e-4),
      grid_len=GRID_LEN)
  assert out['num_params'] == 4150
  assert out['lambda_max_rel_err'] < 1e-6
  np.testing.assert_allclose(res.top_eigenvalues(5), exact[::-1][:5],
                             rtol=1e-6)
  # Measured: 0.013 at 3e-4 x width; 0.071 at 1e-4 x width, where the order-90
  # quadrature cannot resolve the spike of near-zero eigenvalues (a bias: 80
  # draws still give 0.064).
  assert out['l1']['0.0003'] < 0.05
  assert out['l1']['0.0001'] < 0.1


def test_higher_order_resolves_the_spike_at_zero(reference):
  """The 1e-4 x width target needs more nodes at the spike: order 150
  (measured 0.019 here; 0.007 on the full problem)."""
  out, _, _ = mlp_exact_check.compare(reference, order=150, num_draws=10,
                                      sigma_factors=(1e-4,),
                                      grid_len=GRID_LEN)
  assert out['l1']['0.0001'] < 0.05
