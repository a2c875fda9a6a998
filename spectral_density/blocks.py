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

import re

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats
from scipy.spatial import distance as scipy_distance

from spectral_density import density
from spectral_density import lanczos
from spectral_density import mesh_layout
from spectral_density import operators
from spectral_density import sharded
from spectral_density import spectrum

FULL = 'full'


def _key_name(key):
  """One path component's plain name: a dict key, a sequence index, an
  attribute name (Equinox modules, dataclasses) or a flattened index."""
  for attr in ('key', 'idx', 'name'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path):
  """The name of a `jax.tree_util` key path: its components' plain names
  joined by ``'/'`` (``'Dense_0/kernel'``, ``'layers/0/weight'``)."""
  return '/'.join(_key_name(k) for k in path)


def parameter_paths(params):
  """``[(name, size)]`` of the leaves in `ravel_pytree` order.

  A name joins the plain names of the leaf's path components with ``'/'``:
  dict keys (Flax: ``'Block_0/attn/query/kernel'``), sequence indices and
  attribute names (Equinox: ``'layers/0/weight'``, no dots or brackets).
  These are the strings that rules, regular expressions and prefixes match.

  Args:
    params: a parameter pytree (dicts, lists, Flax or Equinox modules).

  Returns:
    list of ``(name, size)``: a leaf's path name and number of entries, in
    the order of `jax.flatten_util.ravel_pytree`.

  Raises:
    Exception: only what flattening `params` raises (a custom pytree node
      whose flatten fails); any pytree of arrays is accepted, an empty one
      gives ``[]``.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> params = {'dense_0': {'w': np.ones((3, 2)), 'b': np.ones(2)},
    ...           'dense_1': {'w': np.ones((2, 1)), 'b': np.ones(1)}}
    >>> sd.parameter_paths(params)
    [('dense_0/b', 2), ('dense_0/w', 6), ('dense_1/b', 1), ('dense_1/w', 2)]
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(path_name(path), int(np.size(leaf))) for path, leaf in leaves]


# --- Rules: a function of a parameter's path name giving its block's name. ---

def per_leaf(path):
  """Rule: every parameter array its own block (``'Block_0/attn/query/kernel'``
  and ``'.../bias'`` apart), as Zhang et al. (2024) cut their blocks."""
  return path


def per_layer(path):
  """Rule: one block per layer, the module that owns the leaf: the path
  without its last component (``'Block_0/attn/query/kernel'`` ->
  ``'Block_0/attn/query'``, kernel and bias together; ``'layers/0/weight'`` ->
  ``'layers/0'``). A top-level leaf is a block of its own. The default.

  Args:
    path: a parameter's path name (`parameter_paths`).

  Returns:
    str: the block's name.

  Raises:
    TypeError: `path` not a string (every string has a block).

  Example:
    >>> import spectral_density as sd
    >>> sd.per_layer('Block_0/attn/query/kernel'), sd.per_layer('scale')
    ('Block_0/attn/query', 'scale')
  """
  parent = path.rsplit('/', 1)[0] if '/' in path else path
  return parent


# Roles of transformer parameters, checked in this order against the path
# name (case-insensitive `re.search`); the first match names the role. The
# names cover this project's GPT (experiments/transformer.py), Flax's
# `MultiHeadDotProductAttention` (query/key/value/out), nanoGPT / GPT-2
# (wte, wpe, ln_1, c_fc, c_proj) and Llama-style (q_proj, up_proj, down_proj).
_COMPONENT = r'(?:^|/)(?:{})(?:/|$)'
ROLE_PATTERNS = (
    ('norm', _COMPONENT.format(
        r'ln\w*|\w*norm\w*')),
    ('embedding', _COMPONENT.format(
        r'wte|wpe|embed\w*|\w*_embed\w*|\w*embedding\w*')),
    ('head', _COMPONENT.format(r'head|lm_head|logits|classifier')),
    ('query', _COMPONENT.format(r'query|q_proj|wq')),
    ('key', _COMPONENT.format(r'key|k_proj|wk')),
    ('value', _COMPONENT.format(r'value|v_proj|wv')),
    ('attention_output',
     r'(?:attn|attention)[^/]*/(?:out|proj|c_proj|out_proj|o_proj|dense)'
     r'(?:/|$)|' + _COMPONENT.format(r'o_proj|out_proj|attn_out|wo_attn')),
    ('mlp_in',
     r'(?:mlp|ffn|feed_forward)[^/]*/(?:fc_in|c_fc|fc1|wi|up_proj|gate_proj|'
     r'Dense_0)(?:/|$)|' + _COMPONENT.format(r'fc_in|c_fc|fc1|up_proj|'
                                             r'gate_proj')),
    ('mlp_out',
     r'(?:mlp|ffn|feed_forward)[^/]*/(?:fc_out|c_proj|fc2|wo|down_proj|'
     r'Dense_1)(?:/|$)|' + _COMPONENT.format(r'fc_out|fc2|down_proj')),
)
# The roles in the order of a forward pass (the blocks' order of `per_role`).
ROLES = ('embedding', 'query', 'key', 'value', 'attention_output', 'mlp_in',
         'mlp_out', 'norm', 'head', 'other')
_ROLE_RES = tuple((role, re.compile(pattern, re.IGNORECASE))
                  for role, pattern in ROLE_PATTERNS)


def per_role(path):
  """Rule: one block per role, pooled over layers: ``'embedding'``,
  ``'query'``, ``'key'``, ``'value'``, ``'attention_output'``, ``'mlp_in'``,
  ``'mlp_out'``, ``'norm'``, ``'head'``, else ``'other'`` (`ROLES`; the
  patterns are `ROLE_PATTERNS`). With `per_layer` and `per_leaf`, Zhang et
  al.'s (NeurIPS 2024) blocks of a transformer.

  Args:
    path: a parameter's path name (`parameter_paths`).

  Returns:
    str: one of `ROLES`.

  Raises:
    TypeError: `path` not a string (an unmatched one is ``'other'``).

  Example:
    >>> import spectral_density as sd
    >>> paths = ('Block_0/attn/query/kernel', 'Block_0/mlp/fc_in/kernel',
    ...          'wte', 'lm_head/kernel', 'conv/kernel')
    >>> roles = [sd.per_role(p) for p in paths]
    >>> roles
    ['query', 'mlp_in', 'embedding', 'head', 'other']
  """
  for role, pattern in _ROLE_RES:
    if pattern.search(path):
      return role
  return 'other'


def layer_role(path):
  """Rule: `per_role` within each layer: ``'<layer>/<role>'``, the layer
  being the first path component with a number (``'Block_3'``, ``'h_3'``,
  ``'layers/3'``), else the role alone (``'embedding'``, ``'head'``)."""
  parts = path.split('/')
  for i, part in enumerate(parts):
    if re.search(r'\d', part):
      return '/'.join(parts[:i + 1]) + '/' + per_role(path)
  return per_role(path)


RULES = {'per_layer': per_layer, 'per_role': per_role, 'per_leaf': per_leaf,
         'layer_role': layer_role}


def _regex_predicate(name, pattern):
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(f'blocks: block {name!r} has a bad regular expression '
                     f'{pattern!r}: {e}.') from e
  return lambda path: compiled.search(path) is not None


def _rule_blocks(paths, rule):
  """``{name: predicate}`` of a rule, blocks in order of first appearance;
  a rule returning None leaves the parameter out of every block."""
  names = {}
  for path, _ in paths:
    name = rule(path)
    if name is not None and not isinstance(name, str):
      raise TypeError(f'blocks: the rule gave {name!r} for {path!r}; a rule '
                      'returns a block name (str) or None.')
    if name is not None:
      names.setdefault(name, [])
      names[name].append(path)
  return {name: (lambda members: lambda p: p in members)(frozenset(members))
          for name, members in names.items()}


def block_masks(params, blocks=None, depth=None):
  """0/1 masks ``{name: [num_params]}`` of the blocks, in insertion order.

  Args:
    params: the parameter pytree; its leaves' path names are those of
      `parameter_paths`.
    blocks: which blocks, written once:
      * None: `per_layer` (one block per module owning parameters), or the
        subtrees at `depth` when `depth` is given;
      * a rule: a function ``path name -> block name`` (None: in no block),
        or the name of a built-in one: ``'per_layer'``, ``'per_role'``,
        ``'layer_role'``, ``'per_leaf'`` (`RULES`);
      * a dict ``block name -> regular expression`` (`re.search` on the path
        name) or ``-> predicate(path name) -> bool``;
      * a list of path prefixes, each its own block (matched component by
        component).
    depth: with ``blocks=None``, the number of leading path components that
      name a block (1: top-level subtrees; 2: one level down).

  Returns:
    dict ``{block name: [num_params]}`` of float64 0/1 arrays, in the
    `ravel_pytree` order of `params`.

  Raises:
    ValueError: a block that matches no parameter, a parameter in two
      blocks, an unknown rule name, `depth` not an int >= 1 or given with
      `blocks`.
    TypeError: `blocks` of another type, or a dict entry that is neither a
      regular expression nor a predicate.

  Example:
    A 2-layer model, one block per layer (the default) and by prefix:

    >>> import numpy as np
    >>> import spectral_density as sd
    >>> params = {'dense_0': {'w': np.ones((3, 2)), 'b': np.ones(2)},
    ...           'dense_1': {'w': np.ones((2, 1)), 'b': np.ones(1)}}
    >>> masks = sd.block_masks(params)
    >>> {name: int(mask.sum()) for name, mask in masks.items()}
    {'dense_0': 8, 'dense_1': 3}
    >>> masks['dense_1']
    array([0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 1.])
    >>> list(sd.block_masks(params, {'weights': r'/w$'}))
    ['weights']
    >>> sd.block_masks(params, ['dense_2'])
    Traceback (most recent call last):
    ...
    ValueError: blocks: block 'dense_2' matches no parameter ...
  """
  paths = parameter_paths(params)
  offsets = np.cumsum([0] + [size for _, size in paths])
  masks = {}
  for name, leaves in block_leaf_ids(params, blocks, depth).items():
    mask = np.zeros(int(offsets[-1]))
    for i in leaves:
      mask[offsets[i]:offsets[i + 1]] = 1
    masks[name] = mask
  return masks


def block_leaf_ids(params, blocks=None, depth=None):
  """``{block name: leaf indices}`` (`jax.tree.leaves` order) of the blocks
  of `block_masks` (same arguments, same checks): every block is a union of
  whole leaves, since rules see only path names."""
  paths = parameter_paths(params)
  if blocks is None and depth is not None:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or (
        int(depth) < 1):
      raise ValueError(f'depth: must be an integer >= 1, got {depth!r}.')
    blocks = {}
    for name, _ in paths:
      prefix = '/'.join(name.split('/')[:int(depth)])
      blocks.setdefault(prefix, _prefix_predicate(prefix))
  elif depth is not None:
    raise ValueError('depth: applies only with blocks=None (got both).')
  else:
    if blocks is None:
      blocks = per_layer
    if isinstance(blocks, str):
      if blocks not in RULES:
        raise ValueError(f'blocks: unknown rule {blocks!r}; the built-in '
                         f'rules are {sorted(RULES)}.')
      blocks = RULES[blocks]
    if callable(blocks) and not isinstance(blocks, dict):
      rule, blocks = blocks, _rule_blocks(paths, blocks)
      if rule is per_role:  # the roles in their canonical order
        blocks = {k: blocks[k] for k in ROLES if k in blocks}
    elif isinstance(blocks, (list, tuple)):
      blocks = {prefix: _prefix_predicate(prefix) for prefix in blocks}
    elif isinstance(blocks, dict):
      blocks = {name: (_regex_predicate(name, rule) if isinstance(rule, str)
                       else rule) for name, rule in blocks.items()}
    else:
      raise TypeError('blocks: expected None, a rule (function or name), a '
                      'dict of name -> regular expression or predicate, or a '
                      f'list of path prefixes, got {type(blocks).__name__}.')
  ids = {}
  covered = set()
  for name, predicate in blocks.items():
    if not callable(predicate):
      raise TypeError(f'blocks: block {name!r} needs a regular expression or '
                      f'a predicate, got {type(predicate).__name__}.')
    leaves = tuple(i for i, (path, size) in enumerate(paths)
                   if size and predicate(path))
    if not leaves:
      raise ValueError(f'blocks: block {name!r} matches no parameter (paths: '
                       f'{[p for p, _ in paths]}).')
    if covered & set(leaves):
      raise ValueError(f'blocks: block {name!r} overlaps an earlier block.')
    covered.update(leaves)
    ids[name] = leaves
  return ids


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


def common_grid(spectra, sigma=None, grid_len=4000, relative_sigma=None):
  """``(grid [grid_len], sigma)`` spanning the weighted nodes of every result
  in `spectra` (a dict or list of `SpectrumResult`s), `density.KERNEL_MARGIN`
  kernel widths beyond them; `sigma` defaults to the original's width over
  that span (``sqrt(1e-5 max(1, width))``: Zhang et al.'s ``sqrt(1e-5)``
  for spectra narrower than 1), or `relative_sigma` times the span (then the
  densities, and JS distances, do not change when the operator is scaled)."""
  results = list(spectra.values()) if isinstance(spectra, dict) else list(
      spectra)
  if not results:
    raise ValueError('spectra: empty.')
  nodes = np.concatenate([density.weighted_nodes(r.nodes, r.weights)[0]
                          for r in results])
  low, high = float(nodes.min()), float(nodes.max())
  if relative_sigma is not None:
    if sigma is not None or not relative_sigma > 0:
      raise ValueError('relative_sigma: must be > 0, and not given with '
                       f'sigma (got {relative_sigma}, sigma={sigma}).')
    sigma = relative_sigma * max(high - low, np.finfo(np.float64).tiny)
  elif sigma is None:
    sigma = density.kernel_sigma(low, high)
  elif not sigma > 0:
    raise ValueError(f'sigma: must be > 0, got {sigma}.')
  margin = density.KERNEL_MARGIN * sigma
  return np.linspace(low - margin, high + margin, int(grid_len)), float(sigma)


def block_densities(spectra, grid=None, sigma=None, relative_sigma=None):
  """``(densities {name: [grid_len]}, grid, sigma)``: every block's smoothed
  density (mean over draws, integral 1 over the grid) on one common grid
  (`common_grid` unless given; `relative_sigma` as there).

  Args:
    spectra: dict ``name -> SpectrumResult`` (a `BlockSpectra`).
    grid: ``[grid_len]`` evaluation points; default `common_grid`'s.
    sigma: kernel standard deviation in eigenvalue units (required with a
      `grid`; default `common_grid`'s).
    relative_sigma: the width as a fraction of the common span instead.

  Returns:
    ``(densities {name: [grid_len]}, grid [grid_len], sigma)``.

  Raises:
    TypeError: `spectra` not a non-empty dict.
    ValueError: a `grid` without `sigma`; `sigma` or `relative_sigma` not
      > 0, or both given.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> def spectrum(eigs):    # one draw with these nodes, equal weights
    ...   t = np.diag(eigs)[None]
    ...   return sd.SpectrumResult(t, t[:, range(len(eigs)), range(len(eigs))],
    ...                            np.full((1, len(eigs)), 1 / len(eigs)),
    ...                            np.array([len(eigs)]), len(eigs))
    >>> spectra = {'a': spectrum([1., 2.]), 'b': spectrum([1., 2.]),
    ...            'c': spectrum([5., 6.])}
    >>> densities, grid, sigma = sd.block_densities(spectra, sigma=0.1)
    >>> list(densities), grid.shape
    (['a', 'b', 'c'], (4000,))
    >>> round(float(np.trapezoid(densities['c'], grid)), 4)
    1.0
  """
  if not isinstance(spectra, dict) or not spectra:
    raise TypeError('spectra: expected a non-empty dict name -> '
                    f'SpectrumResult (a BlockSpectra), got {type(spectra)}.')
  if grid is None:
    grid, sigma = common_grid(spectra, sigma, relative_sigma=relative_sigma)
  elif sigma is None:
    raise ValueError('sigma: give it with a grid.')
  out = {name: r.density(grid, sigma=sigma)[0] for name, r in spectra.items()}
  return out, np.asarray(grid), float(sigma)


def js_distances(spectra, grid=None, sigma=None, divergence=False,
                 relative_sigma=None):
  """Jensen-Shannon distances between every pair of block densities.

  As Zhang et al. (NeurIPS 2024, "Why Transformers Need Adam: A Hessian
  Perspective") compare blocks: each block's SLQ density is smoothed by a
  Gaussian of the same width on one common grid (`block_densities`),
  normalised to a probability vector over the grid, and each pair compared
  by ``JS(p, q) = sqrt(KL(p || m) / 2 + KL(q || m) / 2)``, ``m = (p + q) / 2``,
  natural logarithms (`scipy.spatial.distance.jensenshannon`): 0 for equal
  densities, ``sqrt(ln 2)`` for disjoint ones. Their summary of a model is
  the mean over pairs (`mean_js_distance`).

  Args:
    spectra: dict ``name -> SpectrumResult`` (a `BlockSpectra`).
    grid, sigma, relative_sigma: as `block_densities`. The distances depend
      on the kernel width relative to the blocks' spreads: the default
      (Zhang et al.'s absolute width) makes a wider spectrum look more
      heterogeneous; `relative_sigma` (a fraction of the common span) makes
      them invariant to scaling the operator, for comparing operators of
      different scales (a model against another, H against P^-1/2 H P^-1/2).
    divergence: return the divergence (the square) instead of the distance.

  Returns:
    ``(matrix [B, B], names [B])``, symmetric with a zero diagonal.

  Raises:
    TypeError, ValueError: as `block_densities`; ValueError also for a block
      with no density on the grid.

  Example:
    Equal spectra are at distance 0, disjoint ones at ``sqrt(ln 2)``:

    >>> import numpy as np
    >>> import spectral_density as sd
    >>> def spectrum(eigs):    # one draw with these nodes, equal weights
    ...   t = np.diag(eigs)[None]
    ...   return sd.SpectrumResult(t, t[:, range(len(eigs)), range(len(eigs))],
    ...                            np.full((1, len(eigs)), 1 / len(eigs)),
    ...                            np.array([len(eigs)]), len(eigs))
    >>> spectra = {'a': spectrum([1., 2.]), 'b': spectrum([1., 2.]),
    ...            'c': spectrum([5., 6.])}
    >>> matrix, names = sd.js_distances(spectra)
    >>> names, matrix.round(4)
    (['a', 'b', 'c'], array([[0.    , 0.    , 0.8326],
           [0.    , 0.    , 0.8326],
           [0.8326, 0.8326, 0.    ]]))
  """
  densities, _, _ = block_densities(spectra, grid, sigma, relative_sigma)
  names = list(densities)
  probs = []
  for name in names:
    d = np.maximum(densities[name], 0.0)
    if not d.sum() > 0:
      raise ValueError(f'spectra: block {name!r} has no density on the grid.')
    d = d / d.sum()
    # Subnormal tails would halve to 0 in the mixture (an infinite KL term).
    probs.append(np.where(d < np.finfo(np.float64).tiny, 0.0, d))
  matrix = np.zeros((len(names), len(names)))
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      matrix[i, j] = matrix[j, i] = scipy_distance.jensenshannon(
          probs[i], probs[j])
  return (matrix ** 2 if divergence else matrix), names


def mean_js_distance(matrix):
  """Mean of the off-diagonal entries of a `js_distances` matrix ``[B, B]``
  (Zhang et al.'s average over pairs of blocks).

  Args:
    matrix: ``[B, B]`` distances, ``B >= 2``.

  Returns:
    float.

  Raises:
    ValueError: `matrix` not square ``[B, B]`` with ``B >= 2``.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> round(sd.mean_js_distance(np.array([[0., 0.2, 0.4],
    ...                                     [0.2, 0., 0.6],
    ...                                     [0.4, 0.6, 0.]])), 6)
    0.4
  """
  matrix = np.asarray(matrix, np.float64)
  b = matrix.shape[0]
  if matrix.ndim != 2 or matrix.shape != (b, b) or b < 2:
    raise ValueError(f'matrix: expected [B, B] with B >= 2, got '
                     f'{matrix.shape}.')
  return float(matrix[~np.eye(b, dtype=bool)].mean())


class BlockSpectra(dict):
  """``{block name: SpectrumResult}`` of the diagonal blocks ``H_bb``.

  Attributes:
    full: `SpectrumResult` of the whole Hessian from the same run, or None.
    sizes: ``{block name: number of parameters}``.
    distance: Wasserstein-1 distance between the full spectrum and the union
      of the block spectra (weighted by size), or None without `full`. SLQ
      estimates of one spectrum from different draws are themselves about
      ``width / (order x sqrt(num_draws))`` apart, a floor for this number.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> def loss(p, batch):                  # two "layers", H = diag(2, 2, 4, 4, 4)
    ...   return jnp.sum(p['a'] ** 2) + 2 * jnp.sum(p['b'] ** 2) + 0 * batch.sum()
    >>> params = {'a': jnp.ones(2), 'b': jnp.ones(3)}
    >>> blocks = sd.block_spectra(loss, params, np.zeros((4, 1)), batch_size=4,
    ...                           order=2)
    >>> sorted(blocks), blocks.sizes
    (['a', 'b'], {'a': 2, 'b': 3})
    >>> round(blocks['a'].lambda_max, 4), round(blocks['b'].lambda_max, 4)
    (2.0, 4.0)
  """
  full = None
  sizes = None
  distance = None


def block_spectra(loss, params, dataset, *, blocks=None, depth=None,
                  batch_size=None, order=90, num_draws=1, rng_key=None,
                  curvature='hessian', devices=None, include_full=True,
                  restricted_products=True, **kwargs):
  """Spectra of the diagonal Hessian blocks (and the full one) in one run.

  On parameters split over a mesh (`mesh_layout.is_sharded`) the run is
  `sharded_lanczos`'s: a block is a group of whole leaves, so its projection
  is a 0/1 per leaf; each block's draws start in its leaves and every
  product is masked leaf by leaf (`sharded.LeafMaskedOperator`), all blocks
  and the full Hessian in one batch of draws, vectors and bases laid out
  like the parameters. The products are full ones (`restricted_products`
  does not apply there).

  Args:
    loss, params, dataset, batch_size, curvature, devices: as `get_hvp_fn`
      (sharded `params` included).
    blocks, depth: which blocks, as `block_masks`: a rule (``'per_layer'``,
      the default; ``'per_role'``, ``'layer_role'``, ``'per_leaf'``; or a
      function of the path name), a dict of regular expressions, or prefixes.
    order: Lanczos steps per draw; a block smaller than `order` stops at its
      size (breakdown).
    num_draws: draws per block (and for the full Hessian).
    rng_key: PRNG key; default ``jax.random.key(0)``.
    restricted_products: see `block_spectra_of`.
    include_full: also run `num_draws` draws of the full Hessian in the same
      batch, for `BlockSpectra.full` and `BlockSpectra.distance`.
    **kwargs: Lanczos options (`precision`, `keep_vecs`, ...), as `slq`;
      `draws_per_pass` counts the draws of each block (and of the full
      Hessian) per pass. On sharded parameters, the options `slq` takes
      for a sharded operator except `checkpoint_dir` and
      `checkpoint_every`.

  Returns:
    `BlockSpectra`. With `keep_vecs`, each block's `vecs` hold only the
    block's coordinates (``[num_draws, order, block size]``); on sharded
    parameters its `sharded_vecs` are parameter pytrees, zero outside the
    block.

  Raises:
    ValueError, TypeError: a bad argument, as `get_hvp_fn` and
      `lanczos_draws` (named in the message), or `num_draws` below 1; on
      sharded parameters also the options `slq` refuses there, and
      `checkpoint_dir`.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> def loss(p, batch):                  # H = diag(2, 2, 4, 4, 4)
    ...   return jnp.sum(p['a'] ** 2) + 2 * jnp.sum(p['b'] ** 2) + 0 * batch.sum()
    >>> params = {'a': jnp.ones(2), 'b': jnp.ones(3)}
    >>> blocks = sd.block_spectra(loss, params, np.zeros((4, 1)), batch_size=4,
    ...                           order=2, num_draws=2)
    >>> round(blocks.full.lambda_max, 4), round(blocks['a'].lambda_min, 4)
    (4.0, 2.0)
  """
  if mesh_layout.is_sharded(params):
    return _sharded_block_spectra(
        loss, params, dataset, blocks=blocks, depth=depth,
        batch_size=batch_size, order=order, num_draws=num_draws,
        rng_key=rng_key, curvature=curvature, devices=devices,
        include_full=include_full, **kwargs)
  hvp_fn, _, num_params = operators.get_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      devices=devices)
  return block_spectra_of(hvp_fn, params, blocks=blocks, depth=depth,
                          order=order, num_draws=num_draws, rng_key=rng_key,
                          include_full=include_full,
                          restricted_products=restricted_products, **kwargs)


def block_spectra_of(matvec, params, *, blocks=None, depth=None, order=90,
                     num_draws=1, rng_key=None, include_full=True,
                     restricted_products=True, **kwargs):
  """`block_spectra` of an operator on ``ravel_pytree(params)`` vectors.

  `restricted_products=False` keeps the operator's full products on the
  masked rows (one compiled product for all blocks instead of one per block:
  for many blocks of a small model, compiling costs more than the products).
  """
  num_draws = int(num_draws)
  if num_draws < 1:
    raise ValueError(f'num_draws: must be >= 1, got {num_draws}.')
  masks = block_masks(params, blocks, depth)
  num_params = ravel_pytree(params)[0].size
  names = ([FULL] if include_full else []) + list(masks)
  rows = np.stack([np.ones(num_params) if name == FULL else masks[name]
                   for name in names])
  projection = np.tile(rows, (num_draws, 1))   # [draws x names, n]
  if restricted_products and hasattr(matvec, 'restrict_rows'):
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


def _sharded_block_spectra(loss, params, dataset, *, blocks, depth,
                           batch_size, order, num_draws, rng_key, curvature,
                           devices, include_full, precision=None,
                           start='gaussian', basis='device', reorth_passes=2,
                           keep_vecs=False, tol=None, matmul_precision=None,
                           **refused):
  """`block_spectra` on sharded parameters: one `sharded.run_lanczos` whose
  draw ``d x len(names) + i`` runs on block ``i`` (start vector and every
  product masked leaf by leaf, `sharded.LeafMaskedOperator`)."""
  num_draws = int(num_draws)
  if num_draws < 1:
    raise ValueError(f'num_draws: must be >= 1, got {num_draws}.')
  for name in ('checkpoint_dir', 'checkpoint_every'):
    if refused.get(name) is not None:
      raise ValueError(f'{name}: not available for block spectra on sharded '
                       'parameters (use hessian_spectrum per block run).')
    refused.pop(name, None)
  reorth_passes = spectrum.sharded_options(basis, reorth_passes, keep_vecs,
                                           refused)
  ids = block_leaf_ids(params, blocks, depth)
  op, _, num_params = operators.get_hvp_fn(
      loss, params, dataset, batch_size=batch_size, curvature=curvature,
      devices=devices, matmul_precision=matmul_precision)
  sizes = [int(np.size(x)) for x in jax.tree.leaves(params)]
  names = ([FULL] if include_full else []) + list(ids)
  rows = np.array([[1.0] * len(sizes) if name == FULL else
                   [float(i in ids[name]) for i in range(len(sizes))]
                   for name in names])
  rng_key = jax.random.key(0) if rng_key is None else rng_key
  run = sharded.run_lanczos(
      op, order, rng_key, num_draws=len(names) * num_draws,
      precision=precision, start=start, reorth_passes=reorth_passes, tol=tol,
      keep_vecs=keep_vecs, gram=num_draws >= 2,
      leaf_masks=np.tile(rows, (num_draws, 1)))
  params_like = spectrum.sharded_params_like(op.params)
  out = BlockSpectra()
  out.sizes = {name: sum(sizes[i] for i in ids[name]) for name in ids}
  for i, name in enumerate(names):
    draws = slice(i, None, len(names))
    picked = lanczos.select_draws(
        lanczos.LanczosResult(run.tridiag, None, run.num_steps, run.gram),
        draws)
    basis = (None if run.basis is None else
             jax.tree.map(lambda b: b[draws], run.basis))  # pylint: disable=cell-var-from-loop
    result = spectrum.sharded_result(
        run._replace(tridiag=picked.tridiag, num_steps=picked.num_steps,
                     gram=picked.gram, basis=basis),
        num_params if name == FULL else out.sizes[name], params_like)
    if name == FULL:
      out.full = result
    else:
      out[name] = result
  if out.full is not None:
    out.distance = wasserstein1(out.full, list(out.values()),
                                list(out.sizes.values()))
  return out
