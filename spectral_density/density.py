"""Gauss quadrature from Lanczos tridiagonals, and smoothed spectral densities.

For a unit start vector ``v`` and ``T`` the order-``m`` Lanczos tridiagonal of
``A``, Golub-Welsch gives ``v^T f(A) v ~ sum_i w_i f(theta_i)`` with nodes
``theta_i`` the eigenvalues of ``T`` and weights ``w_i`` the squared first
components of its eigenvectors. With ``f`` a Gaussian kernel of width
``sigma`` centred at ``t`` this estimates the smoothed spectral density
``phi_sigma(t) = (1/n) sum_j N(t; lambda_j, sigma^2)``; averaging over random
start vectors makes it unbiased (Ghorbani et al., 2019, section 3).

`tridiag_to_eigv` is one array program written for numpy and `jax.numpy`
alike: host-side numpy (float64) on concrete input, `jax.numpy` when traced,
so it composes with `jax.jit` and `jax.vmap`. The densities are host-side
numpy, as in the original code.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import arguments

# The default grid reaches this many kernel widths beyond the outermost nodes:
# the Gaussian mass beyond 6 sigma is 1e-9, so the normalisation on the grid
# rescales nothing. (A fixed margin of 1e-2, the original's, cuts off half of
# a wider kernel at the outermost nodes, and the normalisation then inflates
# the whole density: twice the true value at an outer node with sigma = 1.)
KERNEL_MARGIN = 6.0
DEFAULT_SIGMA_SQUARED = 1e-5
# The default kernel is at least this many grid spacings wide, so that the
# grid resolves it (the original's range-scaled width alone falls below the
# spacing of a 10,000-point grid for spectra wider than about 1,000).
MIN_SIGMA_SPACINGS = 2.0


def _traced(x):
  if isinstance(x, (list, tuple)):
    return any(isinstance(t, jax.core.Tracer) for t in x)
  return isinstance(x, jax.core.Tracer)


def _check_tridiag(value, name='tridiag_list'):
  """A concrete ``[num_draws, order, order]`` symmetric tridiagonal stack."""
  tridiag = arguments.real_array(name, value, (2, 3))
  tridiag = tridiag[None] if tridiag.ndim == 2 else tridiag
  if tridiag.shape[1] != tridiag.shape[2]:
    raise ValueError(f'{name}: each matrix must be square [order, order], '
                     f'got shape {tridiag.shape}.')
  scale = np.abs(tridiag).max()
  if np.abs(tridiag - tridiag.transpose(0, 2, 1)).max() > 1e-6 * scale:
    raise ValueError(f'{name}: must be symmetric.')
  band = np.abs(np.subtract.outer(*(2 * [np.arange(tridiag.shape[1])]))) > 1
  if np.any(tridiag[:, band] != 0):
    raise ValueError(f'{name}: must be tridiagonal (entries off the three '
                     'central diagonals are not zero).')
  return tridiag


def _check_traced_tridiag(value, name='tridiag_list'):
  tridiag = jnp.stack(value) if isinstance(value, (list, tuple)) else value
  tridiag = jnp.asarray(tridiag)
  if not jnp.issubdtype(tridiag.dtype, jnp.floating):
    tridiag = tridiag.astype(jnp.result_type(float))
  if tridiag.ndim not in (2, 3) or tridiag.shape[-1] != tridiag.shape[-2]:
    raise ValueError(f'{name}: must be [order, order] or [num_draws, order, '
                     f'order], got shape {tridiag.shape}.')
  return tridiag[None] if tridiag.ndim == 2 else tridiag


def _valid_steps(xp, tridiag):
  """``[num_draws]``: the first zero off-diagonal ends the Krylov space."""
  # A sentinel zero after the last off-diagonal: an order-1 tridiagonal has
  # no off-diagonal at all (argmax of an empty sequence), and a run without
  # breakdown ends at the sentinel, step `order`.
  off = xp.diagonal(tridiag, offset=1, axis1=1, axis2=2)
  zero = xp.concatenate([off == 0, xp.ones(off.shape[:1] + (1,), bool)],
                        axis=1)
  return zero.argmax(axis=1) + 1


def num_valid_steps(tridiag):
  """Size of the valid leading block of each tridiagonal.

  `lanczos_draws` writes exact zeros for ``beta`` from a breakdown on; the
  first zero off-diagonal ends the Krylov space.

  Args:
    tridiag: ``[order, order]`` or ``[num_draws, order, order]``.

  Returns:
    int array ``[num_draws]``.
  """
  return _valid_steps(np, _check_tridiag(tridiag, 'tridiag')).astype(np.int64)


def _golub_welsch(xp, tridiag):
  """Nodes, weights ``[d, m]`` and eigenvectors ``[d, m, m]`` of ``[d, m, m]``.

  After a breakdown at step ``k`` only the leading ``k x k`` block belongs to
  the Krylov space. With static shapes (under `jit`) it cannot be cut out, so
  the trailing block is replaced by a diagonal above the leading block's
  spectrum (Gershgorin: ``|theta| <= 3 max |T|``): one batched `eigh` then
  returns the leading block's nodes first, uncoupled from the rest, and the
  rest is masked to node 0, weight 0.
  """
  order = tridiag.shape[-1]
  idx = xp.arange(order)
  valid = idx[None, :] < _valid_steps(xp, tridiag)[:, None]          # [d, m]
  block = valid[:, :, None] & valid[:, None, :]                      # [d, m, m]
  bound = 3 * xp.abs(tridiag).max(axis=(1, 2)) + 1                   # [d]
  pad = xp.where(valid, 0, bound[:, None] * (2 + idx[None, :]))      # [d, m]
  shifted = xp.where(block, tridiag, 0) + pad[:, :, None] * xp.eye(order)
  vals, vecs = xp.linalg.eigh(shifted)
  nodes = xp.where(valid, vals, 0)
  weights = xp.where(valid, vecs[:, 0, :] ** 2, 0)
  return nodes, weights, xp.where(block, vecs, 0)


def tridiag_to_eigv(tridiag_list, *, return_vectors=False):
  """Gauss quadrature nodes and weights (Golub-Welsch).

  Same name as the original `density.tridiag_to_eigv`. After a breakdown only
  the valid leading block is used; the remaining slots get weight 0 and the
  node value 0. Works inside `jax.jit` and `jax.vmap` (then in the input's
  dtype, and without the finiteness and structure checks, which need values).

  Args:
    tridiag_list: ``[num_draws, order, order]``, one ``[order, order]``, or a
      list of ``[order, order]`` (the original's form).
    return_vectors: also return the eigenvectors of each tridiagonal.

  Returns:
    ``(nodes, weights)``, each ``[num_draws, order]``, nodes ascending within
    the valid block, weights summing to 1 per draw; with `return_vectors`,
    also ``[num_draws, order, order]`` eigenvector matrices (columns, zero
    outside the valid block). numpy float64 on concrete input, jax arrays
    when traced.

  Raises:
    ValueError: `tridiag_list` is ragged, not square, not symmetric, not
      tridiagonal, empty or not finite.
    TypeError: `tridiag_list` is not a real array.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> tridiag = np.array([[2., 1.], [1., 2.]])   # eigenvalues 1 and 3
    >>> nodes, weights = sd.tridiag_to_eigv(tridiag)
    >>> nodes, weights                            # [1, order] each
    (array([[1., 3.]]), array([[0.5, 0.5]]))
  """
  return_vectors = arguments.boolean('return_vectors', return_vectors)
  if _traced(tridiag_list):
    out = _golub_welsch(jnp, _check_traced_tridiag(tridiag_list))
  else:
    out = _golub_welsch(np, _check_tridiag(tridiag_list))
  return out if return_vectors else out[:2]


def gaussian_kernel(x, centers, sigma):
  """``N(x; centers, sigma^2)`` for all pairs: ``[len(x), len(centers)]``."""
  z = (x[:, None] - centers[None, :]) / sigma
  return np.exp(-0.5 * z ** 2) / (sigma * np.sqrt(2 * np.pi))


def weighted_nodes(nodes, weights):
  """The nodes that carry quadrature weight, and their weights, flat.

  A node of weight 0 stands for no eigenvalue (the trailing block after a
  breakdown, or a Ritz vector orthogonal to the start): every rule that looks
  at the nodes (ranges, smoothing, distances) uses only these.
  """
  nodes, weights = np.ravel(nodes), np.ravel(weights)
  keep = weights > 0
  return nodes[keep], weights[keep]


def kernel_sigma(low, high, sigma_squared=DEFAULT_SIGMA_SQUARED):
  """The original's kernel width for nodes over ``[low, high]``:
  ``sqrt(sigma_squared * max(1, high - low))``."""
  return float(np.sqrt(sigma_squared * max(1.0, high - low)))


def default_sigma(low, high, grid_len=10000):
  """The default kernel standard deviation (eigenvalue units) for weighted
  nodes over ``[low, high]`` on the default grid: the original's
  range-scaled width (`kernel_sigma`), but at least `MIN_SIGMA_SPACINGS`
  spacings of the grid (which itself reaches `KERNEL_MARGIN` kernel widths
  beyond the nodes), so it follows the spectrum's width at every scale."""
  spacings = MIN_SIGMA_SPACINGS
  resolved = spacings * (high - low) / max(
      grid_len - 1 - 2 * KERNEL_MARGIN * spacings, 1.0)
  return max(kernel_sigma(low, high), resolved)


def check_resolved(sigma, grids):
  """Warns when the kernel is narrower than the grid spacing: the density is
  then a row of spikes whose normalisation and L1 distances mean little."""
  spacing = float(np.max(np.diff(grids))) if grids.size > 1 else 0.0
  if sigma < spacing:
    warnings.warn(
        f'sigma: {sigma:.3g} (eigenvalue units) is below the grid spacing '
        f'{spacing:.3g}, so the density is spiky; pass a wider sigma, a '
        'denser grid (grid_len) or the default width.', UserWarning,
        stacklevel=3)


def _node_range(nodes, weights, per_draw_mean):
  """``(low, high)`` of the weighted nodes: over all draws, or (the original's
  convention) the mean over draws of each draw's extremes."""
  low = np.where(weights > 0, nodes, np.inf).min(axis=1)
  high = np.where(weights > 0, nodes, -np.inf).max(axis=1)
  if per_draw_mean:
    return float(low.mean()), float(high.mean())
  return float(low.min()), float(high.max())


def default_grid(nodes, weights, sigma, grid_len=10000):
  """``[grid_len]``: the weighted nodes' range (all draws) with
  `KERNEL_MARGIN` kernel widths on each side, so that the kernel's tails
  stay on the grid.

  Args:
    nodes, weights: ``[num_draws, order]``.
    sigma: kernel standard deviation.
    grid_len: number of grid points.
  """
  low, high = _node_range(np.atleast_2d(nodes), np.atleast_2d(weights),
                          per_draw_mean=False)
  margin = KERNEL_MARGIN * sigma
  return np.linspace(low - margin, high + margin, grid_len)


def _check_grids(grids, normalize):
  grids = arguments.real_array('grids', grids, (1,))
  if normalize and (grids.size < 2 or np.any(np.diff(grids) <= 0)):
    raise ValueError('grids: normalize=True needs at least 2 strictly '
                     'increasing points (the integral is taken over them).')
  return grids


def eigv_to_density(eig_vals, all_weights=None, grids=None, *, sigma=None,
                    sigma_squared=None, grid_len=10000, grid_expand=None,
                    normalize=True, chunk=2048):
  """Smoothed spectral density on a grid, averaged over draws.

  Same name and positional arguments as the original `eigv_to_density`.

  Width of the Gaussian kernel, one of:

  * `sigma`: its standard deviation, in eigenvalue units;
  * `sigma_squared`: the original code's convention, a variance scaled by the
    spread of the nodes: ``variance = sigma_squared * max(1, width)``;
  * neither: the original default ``sigma_squared = 1e-5``, widened to
    `MIN_SIGMA_SPACINGS` grid spacings where the grid is the default one and
    the spectrum so wide that the original's would not be resolved
    (`default_sigma`).

  A kernel narrower than the grid spacing warns (UserWarning).

  The default grid spans the weighted nodes plus `KERNEL_MARGIN` (6) kernel
  widths on each side, so that it holds the whole kernel of the outermost
  nodes. `grid_expand` gives the original's convention instead: the grid
  spans the mean over draws of each draw's smallest and largest node, minus
  and plus `grid_expand` (the original used 1e-2), and ``width`` is that
  grid's span; otherwise ``width`` is the spread of the nodes.

  Args:
    eig_vals: nodes ``[num_draws, order]`` (or ``[order]``).
    all_weights: weights ``[num_draws, order]``, non-negative with a positive
      sum per draw; default uniform.
    grids: evaluation points ``[grid_len]``; default as above.
    sigma: kernel standard deviation, in eigenvalue units.
    sigma_squared: range-scaled kernel variance (original convention).
    grid_len: grid size when `grids` is None.
    grid_expand: None, or the original's fixed grid margin (see above).
    normalize: rescale so that the trapezoid integral over the grid is 1 (as
      the original). Off, the density is exact and integrates to 1 over R.
    chunk: grid points evaluated at once (bounds memory).

  Returns:
    ``(density [grid_len], grids [grid_len])``.

  Raises:
    ValueError, TypeError: naming the bad argument.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> nodes = np.array([[0., 1.]])              # one draw, [1, order]
    >>> weights = np.array([[0.25, 0.75]])
    >>> density, grid = sd.eigv_to_density(nodes, weights, sigma=0.05)
    >>> round(float(np.trapezoid(density, grid)), 6)
    1.0
    >>> density, grid = sd.eigv_to_density(nodes, weights,
    ...                                   grids=np.array([0., 1.]), sigma=0.05,
    ...                                   normalize=False)
    >>> np.round(density * 0.05 * np.sqrt(2 * np.pi), 4)   # the weights
    array([0.25, 0.75])
  """
  nodes = np.atleast_2d(arguments.real_array('eig_vals', eig_vals, (1, 2)))
  if all_weights is None:
    weights = np.full(nodes.shape, 1.0 / nodes.shape[1])
  else:
    weights = np.atleast_2d(
        arguments.real_array('all_weights', all_weights, (1, 2)))
    if weights.shape != nodes.shape:
      raise ValueError(f'all_weights: shape {weights.shape} differs from '
                       f'eig_vals\' {nodes.shape}.')
    if np.any(weights < 0) or np.any(weights.sum(axis=1) <= 0):
      raise ValueError('all_weights: must be >= 0 with a positive sum for '
                       'every draw.')
  if sigma is not None and sigma_squared is not None:
    raise ValueError('sigma, sigma_squared: give one of them, not both.')
  grid_len = arguments.positive_int('grid_len', grid_len, minimum=2)
  chunk = arguments.positive_int('chunk', chunk)
  normalize = arguments.boolean('normalize', normalize)
  if grid_expand is not None:
    grid_expand = arguments.positive_float('grid_expand', grid_expand,
                                        allow_zero=True)
  low, high = _node_range(nodes, weights, per_draw_mean=grid_expand is not None)
  if grid_expand is not None:
    low, high = low - grid_expand, high + grid_expand
  if sigma is not None:
    sigma = arguments.positive_float('sigma', sigma)
  elif sigma_squared is None and grids is None and grid_expand is None:
    sigma = default_sigma(low, high, grid_len)
  else:
    sigma_squared = arguments.positive_float(
        'sigma_squared',
        DEFAULT_SIGMA_SQUARED if sigma_squared is None else sigma_squared)
    sigma = kernel_sigma(low, high, sigma_squared)
  if grids is None and grid_expand is not None:  # the original's grid
    grids = np.linspace(low, high, grid_len)
  elif grids is None:
    grids = default_grid(nodes, weights, sigma, grid_len)
  grids = _check_grids(grids, normalize)
  check_resolved(sigma, grids)
  flat_nodes, flat_weights = weighted_nodes(nodes, weights / nodes.shape[0])
  density = np.concatenate([
      gaussian_kernel(grids[i:i + chunk], flat_nodes, sigma) @ flat_weights
      for i in range(0, grids.size, chunk)])
  if normalize:
    total = np.trapezoid(density, grids)
    if not total > 0:
      raise ValueError('grids: the density is 0 on the whole grid (the grid '
                       'misses the nodes), so it cannot be normalised; pass '
                       'normalize=False or a grid over the nodes.')
    density = density / total
  return density, grids


def tridiag_to_density(tridiag_list, sigma_squared=DEFAULT_SIGMA_SQUARED,
                       grid_len=10000, *, sigma=None, grids=None,
                       grid_expand=None, normalize=True):
  """Density straight from tridiagonals (the original's one call).

  Args:
    tridiag_list: ``[num_draws, order, order]`` or a list of ``[order,
      order]``.
    sigma_squared: range-scaled variance (original convention); ignored when
      `sigma` is given.
    grid_len: grid size.
    sigma: kernel standard deviation in eigenvalue units (overrides
      `sigma_squared`).
    grids: evaluation points.
    grid_expand: None (a grid that holds the kernel), or the original's fixed
      margin; see `eigv_to_density`.
    normalize: see `eigv_to_density`.

  Returns:
    ``(density [grid_len], grids [grid_len])``.

  Raises:
    ValueError, TypeError: as `tridiag_to_eigv` for `tridiag_list`, as
      `eigv_to_density` for the other arguments.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> tridiag = np.array([[2., 1.], [1., 2.]])   # nodes 1 and 3, weights 1/2
    >>> density, grid = sd.tridiag_to_density([tridiag], sigma=0.1, grid_len=601)
    >>> density.shape, round(float(np.trapezoid(density, grid)), 6)
    ((601,), 1.0)
  """
  nodes, weights = tridiag_to_eigv(tridiag_list)
  return eigv_to_density(
      nodes, weights, grids, sigma=sigma,
      sigma_squared=None if sigma is not None else sigma_squared,
      grid_len=grid_len, grid_expand=grid_expand, normalize=normalize)


def exact_density(eigenvalues, grids, sigma):
  """The Gaussian-smoothed density of known eigenvalues ``[n]`` on a grid.

  The reference SLQ estimates: ``(1/n) sum_j N(t; lambda_j, sigma^2)``, not
  renormalised.

  Args:
    eigenvalues: ``[n]`` real, e.g. from `exact_eigenvalues`.
    grids: ``[grid_len]`` points where the density is evaluated.
    sigma: the kernel's standard deviation in eigenvalue units, > 0.

  Returns:
    numpy array ``[grid_len]``.

  Raises:
    ValueError: `eigenvalues` or `grids` not 1-D or not finite, or `sigma`
      not finite and > 0.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> grid = np.linspace(-1., 4., 5001)
    >>> density = sd.exact_density(np.array([1., 2., 2.]), grid, sigma=0.1)
    >>> round(float(np.trapezoid(density, grid)), 4)
    1.0
  """
  eigenvalues = arguments.real_array('eigenvalues', eigenvalues, (1,))
  grids = arguments.real_array('grids', grids, (1,))
  weights = np.full((1, eigenvalues.size), 1.0 / eigenvalues.size)
  return eigv_to_density(eigenvalues[None], weights, grids, sigma=sigma,
                         normalize=False)[0]
