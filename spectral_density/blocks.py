"""Spectra of the diagonal blocks of the Hessian (per layer), in one run.

Draw ``d`` of block ``b`` runs Lanczos on ``P_b H P_b`` (`lanczos_draws`'s
`projection_masks`): its start vector lies in the block's coordinates and
every product is masked, so its Krylov space never leaves the block and its
Ritz values are those of ``H_bb``; when the order exceeds the block's size the
run ends by breakdown. All blocks and draws, and the draws of the full
Hessian, are rows of one batch of vectors: every pass over the data serves
all of them. The rows go draw by draw (``[draws, blocks]``), and a dataset
operator computes each block's rows as the product of the loss restricted to
the block's parameters (`block_products`): a block's rows cost what its
parameters' tangents and gradients cost, not a whole product.

The block-diagonal approximation ``diag(H_11, ..., H_BB)`` has the union of
the block spectra as its spectrum (each block weighted by its size). Its
Wasserstein-1 distance to the full spectrum measures what block-diagonal
curvature methods (K-FAC, Shampoo, per-layer learning rates) assume small.
"""

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats

from spectral_density import density
from spectral_density import lanczos
from spectral_density import operators
from spectral_density import spectrum

FULL = 'full'


def _path_name(path):
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def parameter_paths(params):
  """``[(name, size)]`` of the leaves in `ravel_pytree` order, names like
  ``'Dense_0/kernel'``."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(_path_name(path), int(np.size(leaf))) for path, leaf in leaves]


def block_masks(params, blocks=None, depth=1):
  """0/1 masks ``{name: [num_params]}`` of the blocks, in insertion order.

  Args:
    params: the parameter pytree.
    blocks: None (one block per subtree at `depth`: top-level subtrees, i.e.
      layers, for ``depth=1``; kernels and biases apart for ``depth=2``), a
      dict ``name -> predicate(path_name)``, or a list of path prefixes (each
      its own block, matched component by component).
    depth: path components that name a block when `blocks` is None.

  Returns:
    dict of float64 arrays; raises `ValueError` for an empty block or a
    parameter in two blocks.
  """
  paths = parameter_paths(params)
  offsets = np.cumsum([0] + [size for _, size in paths])
  num_params = int(offsets[-1])
  if blocks is None:
    if int(depth) < 1:
      raise ValueError(f'depth: must be >= 1, got {depth}.')
    blocks = {}
    for name, _ in paths:
      prefix = '/'.join(name.split('/')[:int(depth)])
      blocks.setdefault(prefix, _prefix_predicate(prefix))
  elif isinstance(blocks, (list, tuple)):
    blocks = {prefix: _prefix_predicate(prefix) for prefix in blocks}
  elif not isinstance(blocks, dict):
    raise TypeError('blocks: expected None, a dict of name -> predicate or a '
                    f'list of path prefixes, got {type(blocks).__name__}.')
  masks = {}
  covered = np.zeros(num_params, bool)
  for name, predicate in blocks.items():
    mask = np.zeros(num_params)
    for i, (path, _) in enumerate(paths):
      if predicate(path):
        mask[offsets[i]:offsets[i + 1]] = 1
    if not mask.any():
      raise ValueError(f'blocks: block {name!r} matches no parameter (paths: '
                       f'{[p for p, _ in paths]}).')
    if np.any(covered & (mask > 0)):
      raise ValueError(f'blocks: block {name!r} overlaps an earlier block.')
    covered |= mask > 0
    masks[name] = mask
  return masks


def block_leaves(params, mask):
  """Indices of the leaves (`jax.tree.flatten` order) a block's 0/1 `mask`
  covers; the blocks of `block_masks` are unions of whole leaves."""
  sizes = [size for _, size in parameter_paths(params)]
  offsets = np.cumsum([0] + sizes)
  return tuple(i for i in range(len(sizes))
               if mask[offsets[i]:offsets[i + 1]].any())


def _prefix_predicate(prefix):
  parts = prefix.strip('/').split('/')
  return lambda path: path.split('/')[:len(parts)] == parts


def wasserstein1(a, b_list, b_sizes):
  """W1 between the quadrature measure of `a` and the mixture of those of
  `b_list` weighted by `b_sizes` (all `SpectrumResult`s)."""
  b_nodes, b_weights = density.weighted_nodes(
      np.concatenate([r.nodes.ravel() for r in b_list]),
      np.concatenate([r.weights.ravel() * size / r.num_draws
                      for r, size in zip(b_list, b_sizes)]))
  a_nodes, a_weights = density.weighted_nodes(a.nodes, a.weights)
  return float(stats.wasserstein_distance(a_nodes, b_nodes, a_weights,
                                          b_weights))


class BlockSpectra(dict):
  """``{block name: SpectrumResult}`` of the diagonal blocks ``H_bb``.

  Attributes:
    full: `SpectrumResult` of the whole Hessian from the same run, or None.
    sizes: ``{block name: number of parameters}``.
    distance: Wasserstein-1 distance between the full spectrum and the union
      of the block spectra (weighted by size), or None without `full`. SLQ
      estimates of one spectrum from different draws are themselves about
      ``width / (order x sqrt(num_draws))`` apart, a floor for this number.
  """
  full = None
  sizes = None
  distance = None


def block_spectra(loss, params, dataset, *, blocks=None, depth=1,
                  batch_size=None, order=90, num_draws=1, rng_key=None,
                  curvature='hessian', devices=None, include_full=True,
                  **kwargs):
  """Spectra of the diagonal Hessian blocks (and the full one) in one run.

  Args:
    loss, params, dataset, batch_size, curvature, devices: as `get_hvp_fn`.
    blocks, depth: which blocks; see `block_masks` (default: one per layer).
    order: Lanczos steps per draw; a block smaller than `order` stops at its
      size (breakdown).
    num_draws: draws per block (and for the full Hessian).
    rng_key: PRNG key; default ``jax.random.key(0)``.
    include_full: also run `num_draws` draws of the full Hessian in the same
      batch, for `BlockSpectra.full` and `BlockSpectra.distance`.
    **kwargs: Lanczos options (`precision`, `keep_vecs`, ...), as `slq`;
      `draws_per_pass` counts the draws of each block (and of the full
      Hessian) per pass.

  Returns:
    `BlockSpectra`. With `keep_vecs`, each block's `vecs` hold only the
    block's coordinates (``[num_draws, order, block size]``).
  """
  hvp_fn, _, num_params = operators.get_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      devices=devices)
  return block_spectra_of(hvp_fn, params, blocks=blocks, depth=depth,
                          order=order, num_draws=num_draws, rng_key=rng_key,
                          include_full=include_full, **kwargs)


def block_spectra_of(matvec, params, *, blocks=None, depth=1, order=90,
                     num_draws=1, rng_key=None, include_full=True, **kwargs):
  """`block_spectra` of an operator on ``ravel_pytree(params)`` vectors."""
  num_draws = int(num_draws)
  if num_draws < 1:
    raise ValueError(f'num_draws: must be >= 1, got {num_draws}.')
  masks = block_masks(params, blocks, depth)
  num_params = ravel_pytree(params)[0].size
  names = ([FULL] if include_full else []) + list(masks)
  rows = np.stack([np.ones(num_params) if name == FULL else masks[name]
                   for name in names])
  projection = np.tile(rows, (num_draws, 1))   # [draws x names, n]
  if isinstance(matvec, operators.Operator):
    matvec = matvec.restrict_rows(
        [None if name == FULL else block_leaves(params, masks[name])
         for name in names])
  if kwargs.get('draws_per_pass'):  # whole patterns per pass
    kwargs['draws_per_pass'] = len(names) * int(kwargs['draws_per_pass'])
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  run = lanczos.lanczos_draws(matvec, num_params, order, rng_key,
                              num_draws=len(names) * num_draws,
                              projection_masks=projection, **kwargs)
  out = BlockSpectra()
  out.sizes = {name: int(masks[name].sum()) for name in masks}
  for i, name in enumerate(names):
    draws = lanczos.select_draws(run, slice(i, None, len(names)))
    result = spectrum.block_result(draws, rows[i])
    if name == FULL:
      out.full = result
    else:
      out[name] = result
  if out.full is not None:
    out.distance = wasserstein1(out.full, list(out.values()),
                                list(out.sizes.values()))
  return out
