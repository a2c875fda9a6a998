"""Checks that an operator is fit for Lanczos: symmetric, deterministic, finite.

SLQ silently returns a wrong spectrum when ``H v`` is not a fixed symmetric
linear map: dropout or data augmentation inside the loss makes two calls
differ, a loss that is not twice differentiable (or a bug in a custom product)
breaks symmetry. A few probe products find both before a long run.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import arguments


class OperatorReport(NamedTuple):
  """Result of `check_operator`.

  Attributes:
    asymmetry: max over probe pairs of ``|u.Hw - w.Hu| / (|u| |Hw|)``.
    repeat_difference: max relative difference ``|H v - H' v| / |H v|`` of
      two calls on the same probes (0 for a deterministic operator).
    dtype: the dtype the products are computed in (a string): an operator's
      `dtype` (a float32 model's, even when it returns its sums in float64),
      else the dtype a plain function returns.
    finite: whether every product was finite.
    tolerance: the bound `ok` applies (100 x eps of `dtype` by default).

  The verdicts `symmetric`, `repeatable` (each measure within `tolerance`)
  and `ok` (both, and finite) are properties; `as_dict()` gives all of it,
  JSON-ready.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> report = sd.check_operator(lambda v: 2 * v, 10)
    >>> report.asymmetry < report.tolerance, report.repeat_difference
    (True, 0.0)
    >>> sorted(report.as_dict())
    ['asymmetry', 'dtype', 'finite', 'ok', 'repeat_difference', 'repeatable',
     'symmetric', 'tolerance']
  """
  asymmetry: float
  repeat_difference: float
  dtype: str
  finite: bool
  tolerance: float

  @property
  def symmetric(self):
    return self.asymmetry <= self.tolerance

  @property
  def repeatable(self):
    return self.repeat_difference <= self.tolerance

  @property
  def ok(self):
    return self.finite and self.symmetric and self.repeatable

  def as_dict(self):
    """JSON-ready, with the three verdicts."""
    return {**self._asdict(), 'symmetric': self.symmetric,
            'repeatable': self.repeatable, 'ok': self.ok}


def check_operator(matvec, dim=None, *, num_probes=3, rng_key=None,
                   tolerance=None):
  """Probes `matvec` for symmetry, repeatability and finiteness.

  Args:
    matvec: ``[dim] -> [dim]`` (function or `get_hvp_fn` operator).
    dim: operator size; default ``matvec.num_params`` (dataset operators).
    num_probes: probe pairs ``(u, w)``, Gaussian (``2 x num_probes`` products,
      twice).
    rng_key: PRNG key; default ``jax.random.key(0)``.
    tolerance: bound on both relative measures for `OperatorReport.ok`;
      default 100 x eps of the dtype the products are computed in (products
      sum many batches), not of the wider dtype they may be returned in.

  Returns:
    `OperatorReport`.

  Raises:
    ValueError: `dim` missing for a plain function, or `dim` or `num_probes`
      below 1.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> d = jnp.arange(1., 11.)              # the operator diag(1, ..., 10)
    >>> report = sd.check_operator(lambda v: d * v, 10)
    >>> report.ok, report.symmetric, report.dtype
    (True, True, 'float32')
    >>> sd.check_operator(jnp.cumsum, 10).symmetric   # a triangular matrix
    False
  """
  if dim is None:
    dim = getattr(matvec, 'num_params', None)
    if dim is None:
      raise ValueError('dim: required for a plain function.')
  dim, num_probes = int(dim), int(num_probes)
  if dim < 1:
    raise ValueError(f'dim: must be >= 1, got {dim}.')
  if num_probes < 1:
    raise ValueError(f'num_probes: must be >= 1, got {num_probes}.')
  rng_key = (jax.random.key(0) if rng_key is None
             else arguments.check_rng_key(rng_key))
  dtype = getattr(matvec, 'dtype', None) or jnp.result_type(float)
  probes = jax.random.normal(rng_key, (2 * num_probes, dim), dtype)
  if getattr(matvec, 'accepts_batches', False):
    apply = matvec
  else:
    apply = jax.vmap(matvec)
  first = apply(probes)
  # Accuracy is that of the dtype the products are computed in: a dataset
  # operator of a float32 model returns float64 sums under x64, accurate to
  # float32's eps only.
  out_dtype = jnp.dtype(getattr(matvec, 'dtype', None) or first.dtype)
  first = np.asarray(first, np.float64)
  second = np.asarray(apply(probes), np.float64)
  v = np.asarray(probes, np.float64)
  u, w = v[:num_probes], v[num_probes:]
  hu, hw = first[:num_probes], first[num_probes:]
  finite = bool(np.all(np.isfinite(first)) and np.all(np.isfinite(second)))
  scale = np.linalg.norm(u, axis=1) * np.linalg.norm(hw, axis=1)
  asym = np.abs(np.sum(u * hw, 1) - np.sum(w * hu, 1)) / np.maximum(scale,
                                                                   1e-300)
  norms = np.maximum(np.linalg.norm(first, axis=1), 1e-300)
  repeat = np.linalg.norm(first - second, axis=1) / norms
  if tolerance is None:
    tolerance = 100 * float(jnp.finfo(out_dtype).eps)
  return OperatorReport(float(np.max(asym)), float(np.max(repeat)),
                        out_dtype.name, finite, float(tolerance))
