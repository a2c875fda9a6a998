"""Matplotlib figures of spectral densities, in the paper's style.

Densities are drawn on a log scale with a floor (1e-7, as in the paper's
figures) so that outliers many orders of magnitude below the bulk stay
visible. Every function takes an optional `ax` and returns it, so figures
compose in notebooks and scripts alike.

What a reader needs to trust a density figure is on it: both axes labelled;
a caption in the axes (`density_caption`) with the kernel width and, where
known, the Lanczos order, the number of draws and of examples; exact curves
black and dashed, estimates solid or in distinct line styles (legible in
black and white); new figures at `DPI` (150) dots per inch.
"""

import collections.abc

import matplotlib.pyplot as plt
import numpy as np

from spectral_density import arguments
from spectral_density import density as density_lib

LOG_FLOOR = 1e-7
DPI = 150                     # new figures; print needs >= 150
CAPTION_GID = 'density-caption'
# Estimates one after another: distinct in print, not by colour alone; none
# is dashed, which means exact (`EXACT_STYLE`).
LINE_STYLES = ('-', '-.', ':', (0, (3, 1, 1, 1, 1, 1)))
EXACT_STYLE = {'color': 'black', 'linestyle': (0, (5, 2)), 'linewidth': 1}


def _axes(ax):
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
  return ax


def density_caption(sigma, *, order=None, num_draws=None, num_examples=None):
  """What a density figure must state, as one line of text.

  Args:
    sigma: Gaussian kernel standard deviation (eigenvalue units), or None
      where the figure's legend gives each curve's.
    order: Lanczos steps per draw, or None.
    num_draws: number of start vectors, or None.
    num_examples: examples the curvature is over, or None.

  Returns:
    e.g. ``'kernel sigma 0.0031 · order 90 · 10 draws · 3,000 examples'``.
  """
  parts = []
  if sigma is not None:
    sigma = arguments.positive_float('sigma', sigma)
    parts.append(f'kernel sigma {sigma:.2g}')
  if order is not None:
    parts.append(f'order {arguments.positive_int("order", order)}')
  if num_draws is not None:
    num_draws = arguments.positive_int('num_draws', num_draws)
    parts.append(f'{num_draws} draw{"s" * (num_draws > 1)}')
  if num_examples is not None:
    num_examples = arguments.positive_int('num_examples', num_examples)
    parts.append(f'{num_examples:,} examples')
  return ' · '.join(parts)


def annotate_density(ax, sigma, *, order=None, num_draws=None,
                     num_examples=None):
  """Writes `density_caption` under the axes' x label (replacing one written
  before), where no curve or legend can cover it; returns the text artist
  (its gid is `CAPTION_GID`).

  Example:
    >>> ax = plot_density(grid, density)                  # doctest: +SKIP
    >>> annotate_density(ax, 0.01, order=90, num_draws=10,
    ...                  num_examples=3000)               # doctest: +SKIP
  """
  caption = density_caption(sigma, order=order, num_draws=num_draws,
                            num_examples=num_examples)
  for text in ax.texts:
    if text.get_gid() == CAPTION_GID:
      text.remove()
  # Placed relative to the x label's box, resolved when drawn: it stays
  # under the label whatever the label says by then.
  return ax.annotate(caption, xy=(0.5, 0), xycoords=ax.xaxis.label,
                     xytext=(0, -2), textcoords='offset points', ha='center',
                     va='top', fontsize=8, gid=CAPTION_GID)


def _result_sigma(result):
  """The kernel width `result.density` uses when given none."""
  nodes, _ = density_lib.weighted_nodes(result.nodes, result.weights)
  nodes = nodes if nodes.size else np.ravel(result.nodes)
  return density_lib.kernel_sigma(float(nodes.min()), float(nodes.max()))


def _is_result(value):
  return callable(getattr(value, 'density', None)) and hasattr(value,
                                                               'nodes')


def plot_density(grid, density, *, ax=None, label=None, log=True,
                 floor=LOG_FLOOR, **line_kwargs):
  """One density curve.

  Args:
    grid: ``[grid_len]`` eigenvalue axis.
    density: ``[grid_len]`` values.
    ax: axes to draw on; a new figure when None.
    label: legend label.
    log: log-scale y axis, values floored at `floor`.
    floor: smallest value shown on the log scale.
    **line_kwargs: passed to `ax.plot`.

  Returns:
    The axes.
  """
  grid = arguments.real_array('grid', grid, (1,))
  density = arguments.real_array('density', density, (1,))
  if density.shape != grid.shape:
    raise ValueError(f'density: shape {density.shape} differs from grid\'s '
                     f'{grid.shape}.')
  log = arguments.boolean('log', log)
  floor = arguments.positive_float('floor', floor)
  ax = _axes(ax)
  if log:
    density = np.maximum(density, floor)
    ax.set_yscale('log')
    ax.set_ylim(bottom=floor)
  ax.plot(grid, density, label=label, **line_kwargs)
  ax.set_xlabel('eigenvalue')
  ax.set_ylabel('density')
  if label is not None:
    ax.legend()
  return ax


def plot_densities(curves, *, ax=None, log=True, floor=LOG_FLOOR,
                   sigma=None, grid=None, num_examples=None):
  """Several densities overlaid, each in its own line style.

  Args:
    curves: mapping ``label -> (grid, density)`` (prepared curves) or
      ``label -> SpectrumResult`` (smoothed here with `sigma` on `grid`);
      the two kinds may mix.
    ax, log, floor: as `plot_density`.
    sigma: kernel width for the `SpectrumResult`s; default the original
      rule (`density.kernel_sigma`) over all their nodes. Stated in the
      caption.
    grid: ``[grid_len]`` points for the `SpectrumResult`s; default one grid
      covering all of them.
    num_examples: examples the curvature is over, for the caption.

  Returns:
    The axes.

  Example:
    >>> plot_densities({'step 0': result_0, 'step 100': result_100},
    ...                sigma=0.01)  # doctest: +SKIP
  """
  if not isinstance(curves, collections.abc.Mapping):
    raise TypeError('curves: must be a mapping label -> (grid, density) or '
                    f'label -> SpectrumResult, got {type(curves).__name__}.')
  results = {k: v for k, v in curves.items() if _is_result(v)}
  if results:
    nodes = np.concatenate([density_lib.weighted_nodes(r.nodes, r.weights)[0]
                            for r in results.values()])
    if sigma is None:
      sigma = density_lib.kernel_sigma(float(nodes.min()), float(nodes.max()))
    sigma = arguments.positive_float('sigma', sigma)
    if grid is None:
      margin = density_lib.KERNEL_MARGIN * sigma
      grid = np.linspace(nodes.min() - margin, nodes.max() + margin, 10000)
  ax = _axes(ax)
  for i, (label, curve) in enumerate(curves.items()):
    if label in results:
      dens, curve_grid = curve.density(grid, sigma)
    else:
      curve_grid, dens = curve
    plot_density(curve_grid, dens, ax=ax, label=label, log=log, floor=floor,
                 linestyle=LINE_STYLES[i % len(LINE_STYLES)])
  if results:
    orders = {r.order for r in results.values()}
    draws = {r.num_draws for r in results.values()}
    annotate_density(ax, sigma,
                     order=orders.pop() if len(orders) == 1 else None,
                     num_draws=draws.pop() if len(draws) == 1 else None,
                     num_examples=num_examples)
  return ax


def plot_exact_eigenvalues(eigenvalues, grid, sigma, *, ax=None, log=True,
                           floor=LOG_FLOOR, label='exact', rug=True):
  """The exact smoothed density (and a rug of the largest eigenvalues).

  Args:
    eigenvalues: ``[n]`` known eigenvalues.
    grid: ``[grid_len]`` evaluation points.
    sigma: kernel standard deviation (use the one of the estimate).
    ax, log, floor, label: as `plot_density`.
    rug: mark the eigenvalues outside the bulk (top 1%) on the x axis.

  Returns:
    The axes.
  """
  dens = density_lib.exact_density(eigenvalues, grid, sigma)
  ax = _axes(ax)
  plot_density(grid, dens, ax=ax, label=label, log=log, floor=floor,
               **EXACT_STYLE)
  if rug:
    ev = np.sort(np.asarray(eigenvalues))
    outliers = ev[-max(1, ev.size // 100):]
    ax.plot(outliers, np.full(outliers.shape, floor if log else 0), '|',
            color='black', markersize=12)
  return ax


def plot_spectrum(result, *, grid=None, sigma=None, exact=None, ax=None,
                  label='SLQ', log=True, floor=LOG_FLOOR, num_examples=None,
                  caption=True):
  """A `SpectrumResult`'s density, optionally against the exact eigenvalues.

  The estimate is solid, the exact density black and dashed; the caption
  states the kernel width, the order and the number of draws.

  Args:
    result: `SpectrumResult`.
    grid, sigma: passed to `result.density`; `sigma` None: the original
      rule (`density.kernel_sigma`) over the result's nodes.
    exact: ``[n]`` exact eigenvalues to overlay, or None.
    ax, label, log, floor: as `plot_density`.
    num_examples: examples the curvature is over, for the caption.
    caption: write the caption (`annotate_density`).

  Returns:
    The axes.
  """
  if not _is_result(result):
    raise TypeError('result: must be a SpectrumResult, got '
                    f'{type(result).__name__}.')
  if exact is not None and sigma is None:
    raise ValueError('sigma: give the kernel width to overlay the exact '
                     'density with the same smoothing.')
  sigma = _result_sigma(result) if sigma is None else sigma
  dens, grid = result.density(grid, sigma)
  ax = _axes(ax)
  plot_density(grid, dens, ax=ax, label=label, log=log, floor=floor)
  if exact is not None:
    plot_exact_eigenvalues(exact, grid, sigma, ax=ax, log=log, floor=floor)
  if caption:
    annotate_density(ax, sigma, order=result.order,
                     num_draws=result.num_draws, num_examples=num_examples)
  return ax


def plot_js_heatmap(matrix, names, *, ax=None, title=None, vmax=None,
                    cmap='viridis'):
  """Heat map of the Jensen-Shannon distances between block densities.

  Args:
    matrix: ``[B, B]`` from `blocks.js_distances`.
    names: ``[B]`` block names (the axes' tick labels).
    ax: axes to draw on; a new figure when None.
    title: axes title.
    vmax: top of the colour scale (default ``sqrt(ln 2)``, the distance of
      disjoint densities), so that heat maps of different models compare.
    cmap: matplotlib colour map.

  Returns:
    The axes (its figure has the colour bar).

  Raises:
    ValueError: `matrix` not ``[B, B]`` for the ``B`` `names`, empty or not
      finite.
    TypeError: `matrix` not a real array.

  Example:
    >>> import numpy as np
    >>> import matplotlib.pyplot as plt
    >>> import spectral_density as sd
    >>> matrix = np.array([[0., 0.2], [0.2, 0.]])   # from js_distances
    >>> ax = sd.plot_js_heatmap(matrix, ['dense_0', 'dense_1'], title='JS')
    >>> labels = [label.get_text() for label in ax.get_yticklabels()]
    >>> labels
    ['dense_0', 'dense_1']
    >>> plt.close(ax.figure)
    >>> sd.plot_js_heatmap(matrix, ['dense_0'])
    Traceback (most recent call last):
    ...
    ValueError: matrix: shape (2, 2) does not match 1 names.
  """
  matrix = arguments.real_array('matrix', matrix, (2,))
  if matrix.shape != (len(names), len(names)):
    raise ValueError(f'matrix: shape {matrix.shape} does not match '
                     f'{len(names)} names.')
  if ax is None:
    size = max(4.0, 0.35 * len(names) + 2.5)
    _, ax = plt.subplots(figsize=(size + 1, size))
  vmax = float(np.sqrt(np.log(2.0))) if vmax is None else vmax
  image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax)
  ax.set_xticks(range(len(names)))
  ax.set_yticks(range(len(names)))
  ax.set_xticklabels(names, rotation=90, fontsize=7)
  ax.set_yticklabels(names, fontsize=7)
  ax.set_xlabel('block')
  ax.set_ylabel('block')
  ax.figure.colorbar(image, ax=ax, label='Jensen-Shannon distance')
  if title:
    ax.set_title(title)
  return ax
