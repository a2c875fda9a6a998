"""Deflated spectral sums and the CDF band of Chen, Trogdon & Ubaru (2021),
against matrices with known spectra (dense eigendecompositions)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
from spectral_density import cdf_band


def _matrix(n, seed=0, outliers=(2., 3., 4., 6., 9.)):
  """``(eigenvalues, eigenvectors, matvec)``: a bulk near 0 and outliers."""
  rng = np.random.default_rng(seed)
  ev = np.sort(np.r_[rng.normal(0, 0.3, n - len(outliers)), outliers])
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  mat = jnp.asarray((q * ev) @ q.T)
  return ev, q, (lambda v: mat @ v)


def _groups(res, size):
  """Consecutive groups of `size` draws of one run, as `SpectrumResult`s."""
  return [sd.SpectrumResult(res.tridiag[i:i + size], res.nodes[i:i + size],
                            res.weights[i:i + size],
                            res.num_steps[i:i + size], res.dim)
          for i in range(0, res.num_draws - size + 1, size)]


def test_deflated_spectral_sums_beat_plain_quadrature():
  """With kept bases, the outliers' Ritz pairs are summed exactly: over 10
  seeds the error of tr(A^2) and tr(A) drops by > 10x against the plain
  quadrature of the same run, tr log(1 + A) does not get worse, and the
  standard error covers the error."""
  with jax.enable_x64(True):
    n = 300
    rng = np.random.default_rng(0)
    bulk = np.abs(rng.normal(0, 0.02, n - 8)) * rng.choice([-0.3, 1], n - 8)
    ev = np.sort(np.r_[bulk, rng.uniform(1, 5, 8)])
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    mat = jnp.asarray((q * ev) @ q.T)
    fns = {'square': np.square, 'identity': lambda x: x,
           'log1p': lambda x: np.log1p(np.maximum(x, -0.5))}
    errors = {name: ([], []) for name in fns}
    z = []
    matvec = lambda v: mat @ v
    for seed in range(10):
      res = sd.slq(matvec, n, order=20, num_draws=5,
                   rng_key=jax.random.key(seed), precision='float64',
                   keep_vecs=True)
      plain = dataclasses.replace(res, vecs=None)
      for name, fn in fns.items():
        exact = np.sum(fn(ev))
        errors[name][0].append(abs(res.spectral_sum(fn) - exact))
        errors[name][1].append(abs(plain.spectral_sum(fn) - exact))
        z.append((res.spectral_sum(fn) - exact) / res.spectral_sum_stderr(fn))
  deflated, plain = (np.mean(e, axis=1) for e in zip(*errors.values()))
  assert deflated[0] < plain[0] / 100   # tr(A^2): 0.002 against 22
  assert deflated[1] < plain[1] / 10    # tr(A): 0.1 against 6.5
  assert deflated[2] <= plain[2]
  # t with 4 degrees of freedom: |z| < 2.78 in 95% of the estimates.
  assert np.mean(np.abs(z) < 2.78) >= 0.85
  # the deflated identity is the deflated trace's estimand, within its error
  assert abs(res.spectral_sum(lambda x: x) - res.trace) < 4 * res.trace_stderr


def test_gauss_quadrature_interlacing_bounds_each_draw():
  """Each draw's weighted CDF v^T 1[A <= x] v (exact, from the eigenvectors
  and the start vector) lies between its rule's CDF shifted one node each
  way, at every point, eigenvalues included; the bounds are not vacuous."""
  with jax.enable_x64(True):
    n = 80
    ev, q, matvec = _matrix(n, seed=1)
    res = sd.slq(matvec, n, order=8, num_draws=6, rng_key=jax.random.key(2),
                 precision='float64', keep_vecs=True)
  grid = np.sort(np.r_[np.linspace(-1.5, 10, 500), ev, ev - 1e-9])
  cdf, lower, upper = cdf_band.draw_bounds(res.nodes, res.weights,
                                           res.num_steps, n, grid)
  for d in range(res.num_draws):
    coef = (q.T @ np.asarray(res.vecs[d, 0])) ** 2      # |q_i . u|^2
    psi = np.array([coef[ev <= x].sum() for x in grid])
    assert np.all(lower[d] <= psi + 1e-10)
    assert np.all(psi <= upper[d] + 1e-10)
    assert np.all((lower[d] <= cdf[d]) & (cdf[d] <= upper[d]))
  assert np.mean(upper - lower) < 0.25


@pytest.mark.parametrize('order, draws, seeds', [(60, 2, 300), (6, 4, 150)])
def test_cdf_band_covers_the_exact_cdf_at_the_claimed_rate(order, draws,
                                                           seeds):
  """Over many seeds, the exact CDF #{lambda <= x} / n lies in the 90% band
  at each point in >= 90% of the seeds, and in the uniform band at every
  point at once in >= 90% of the seeds. With order = n the rules are exact
  and the band is the sample-average term alone: a third of it covers far
  less than 90%; at order 6 the band without the interlacing shift does
  too. Measured: the worst point is covered in 98% (order n) and 100% of
  the seeds, the uniform band in 100%."""
  n = 60
  with jax.enable_x64(True):
    ev, _, matvec = _matrix(n, seed=3)
    run = sd.slq(matvec, n, order=order, num_draws=draws * seeds,
                 rng_key=jax.random.key(order), precision='float64')
  grid = np.sort(np.r_[np.linspace(-1.5, 10, 300), ev])
  exact = np.searchsorted(ev, grid, side='right') / n
  inside, inside_all, width, narrow = [], [], [], []
  t = cdf_band.sampling_halfwidth(draws, n, 0.9)
  for res in _groups(run, draws):
    band = res.cdf_band(0.9, grid)
    inside.append((band.lower <= exact) & (exact <= band.upper))
    width.append(np.mean(band.upper - band.lower))
    interior = (band.cdf > t) & (band.cdf < 1 - t)
    if order == n:  # exact rules: the band is cdf -/+ t where not clipped
      np.testing.assert_allclose((band.upper - band.lower)[interior], 2 * t)
    uniform = res.cdf_band(0.9, grid, uniform=True)
    inside_all.append(np.all((uniform.lower <= exact) &
                             (exact <= uniform.upper)))
    # without one of the two terms: a third of t, or no interlacing shift
    narrow.append(np.abs(band.cdf - exact) <= (t / 3 if order == n else t))
  coverage = np.mean(inside, axis=0)                     # per grid point
  assert coverage.min() >= 0.9
  assert np.mean(inside_all) >= 0.9
  assert np.mean(width) < 0.5                            # says something
  assert np.mean(narrow, axis=0).min() < 0.8   # measured: 0.5 / 0.03
  if order == n:
    assert np.all(run.num_steps == n)
  with pytest.raises(ValueError, match='level'):
    res.cdf_band(1.0)
  with pytest.raises(ValueError, match='grid'):
    res.cdf_band(0.9, np.zeros((2, 2)))
