"""Matplotlib figures of spectral densities, in the paper's style.

Densities are drawn on a log scale with a floor (1e-7, as in the paper's
figures) so that outliers many orders of magnitude below the bulk stay
visible. Every function takes an optional `ax` and returns it, so figures
compose in notebooks and scripts alike.
"""

import collections.abc

import matplotlib.pyplot as plt
import numpy as np

from spectral_density import arguments
from spectral_density import density as density_lib

LOG_FLOOR = 1e-7


def _axes(ax):
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 4))
  return ax


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


def plot_densities(curves, *, ax=None, log=True, floor=LOG_FLOOR):
  """Several densities overlaid.

  Args:
    curves: mapping ``label -> (grid, density)``.
    ax, log, floor: as `plot_density`.

  Returns:
    The axes.
  """
  if not isinstance(curves, collections.abc.Mapping):
    raise TypeError('curves: must be a mapping label -> (grid, density), got '
                    f'{type(curves).__name__}.')
  ax = _axes(ax)
  for label, (grid, dens) in curves.items():
    plot_density(grid, dens, ax=ax, label=label, log=log, floor=floor)
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
               color='black', linestyle='--', linewidth=1)
  if rug:
    ev = np.sort(np.asarray(eigenvalues))
    outliers = ev[-max(1, ev.size // 100):]
    ax.plot(outliers, np.full(outliers.shape, floor if log else 0), '|',
            color='black', markersize=12)
  return ax


def plot_spectrum(result, *, grid=None, sigma=None, exact=None, ax=None,
                  label='SLQ', log=True, floor=LOG_FLOOR):
  """A `SpectrumResult`'s density, optionally against the exact eigenvalues.

  Args:
    result: `SpectrumResult`.
    grid, sigma: passed to `result.density`.
    exact: ``[n]`` exact eigenvalues to overlay, or None.
    ax, label, log, floor: as `plot_density`.

  Returns:
    The axes.
  """
  if not callable(getattr(result, 'density', None)):
    raise TypeError('result: must be a SpectrumResult, got '
                    f'{type(result).__name__}.')
  if exact is not None and sigma is None:
    raise ValueError('sigma: give the kernel width to overlay the exact '
                     'density with the same smoothing.')
  dens, grid = result.density(grid, sigma)
  ax = _axes(ax)
  plot_density(grid, dens, ax=ax, label=label, log=log, floor=floor)
  if exact is not None:
    plot_exact_eigenvalues(exact, grid, sigma, ax=ax, log=log, floor=floor)
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
