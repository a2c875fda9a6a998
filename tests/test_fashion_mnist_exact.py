"""SLQ against the exact spectrum of a trained MLP on real Fashion-MNIST.

The reduced version of `benchmarks/mlp_exact_check.py` (14x14 images, so
196-20-10 = 4,150 parameters, 2,000 examples), float64. The full-size numbers
(784-20-10, 10,000 examples) are in the README.
"""

import numpy as np

from benchmarks import mlp_exact_check


def test_order_90_slq_matches_exact_spectrum(fashion_mnist_path, monkeypatch):
  monkeypatch.setenv('FASHION_MNIST_DIR', str(fashion_mnist_path))
  out, exact, res = mlp_exact_check.run(
      num_examples=2000, pool=2, order=90, num_draws=10,
      sigma_factors=(1e-4, 3e-4))
  assert out['num_params'] == 4150
  assert out['lambda_max_rel_err'] < 1e-6
  np.testing.assert_allclose(res.top_eigenvalues(5), exact[::-1][:5],
                             rtol=1e-6)
  # Measured: 0.013 at 3e-4 x width; 0.071 at 1e-4 x width, where the order-90
  # quadrature cannot resolve the spike of near-zero eigenvalues (a bias: 80
  # draws still give 0.064).
  assert out['l1']['0.0003'] < 0.05
  assert out['l1']['0.0001'] < 0.1


def test_higher_order_resolves_the_spike_at_zero(fashion_mnist_path,
                                                 monkeypatch):
  """The 1e-4 x width target needs more nodes at the spike: order 150
  (measured 0.019 here; 0.007 on the full problem)."""
  monkeypatch.setenv('FASHION_MNIST_DIR', str(fashion_mnist_path))
  out, _, _ = mlp_exact_check.run(num_examples=2000, pool=2, order=150,
                                  num_draws=10, sigma_factors=(1e-4,))
  assert out['l1']['0.0001'] < 0.05
