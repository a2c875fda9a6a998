"""Runs the notebooks of colab/ and stores them with their outputs.

Each notebook is written as a jupytext percent script, colab/NAME.py (review
and edit that), paired with colab/NAME.ipynb (what Colab and GitHub show):

  jupytext --sync colab/NAME.py        # the .ipynb's cells from the script
  SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1 python colab/run_notebooks.py [NAME ...]
      # runs them from the repository root, reduced, and stores the outputs
      # in colab/NAME.ipynb (how the committed notebooks were made)
  python colab/run_notebooks.py --figures NAME
      # full size; also saves the figure of the cell tagged `readme-figure`
      # as docs/figures/NAME.png (the README's)
"""

import argparse
import base64
import os
import pathlib
import time

import jupytext
import nbclient

COLAB_DIR = pathlib.Path(__file__).resolve().parent
REPO = COLAB_DIR.parent
FIGURE_DIR = REPO / 'docs' / 'figures'
FIGURE_TAG = 'readme-figure'
NOTEBOOKS = ('quickstart', 'batchnorm_outliers', 'your_model', 'beyond_peers',
             'transformer_blocks')


def execute(notebook, timeout_s):
  """Runs a notebook in place, from the repository root, on a fresh kernel."""
  nbclient.NotebookClient(notebook, timeout=timeout_s, kernel_name='python3',
                          record_timing=False,
                          resources={'metadata': {'path': str(REPO)}}
                          ).execute()
  return notebook


def tidy(notebook):
  """Joins each cell's printed text; keeps a progress bar's last state only.

  That is what a notebook shows of them; the stored notebook stays small.
  """
  for cell in notebook.cells:
    outputs = []
    for output in cell.get('outputs', ()):
      if (output.get('output_type') == 'stream' and outputs and
          outputs[-1].get('output_type') == 'stream' and
          outputs[-1]['name'] == output['name']):
        outputs[-1]['text'] += output['text']
      else:
        outputs.append(output)
    for output in outputs:
      if output.get('output_type') == 'stream':
        output['text'] = '\n'.join(line.split('\r')[-1]
                                   for line in output['text'].split('\n'))
    if cell.cell_type == 'code':
      cell.outputs = outputs
  return notebook


def figure_png(notebook):
  """The PNG bytes of the last image of the cell tagged FIGURE_TAG."""
  for cell in notebook.cells:
    if FIGURE_TAG in cell.metadata.get('tags', ()):
      pngs = [o['data']['image/png'] for o in cell.get('outputs', ())
              if 'image/png' in o.get('data', {})]
      return base64.b64decode(pngs[-1])
  raise ValueError(f'no cell tagged {FIGURE_TAG!r}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('names', nargs='*', default=list(NOTEBOOKS),
                      choices=NOTEBOOKS, metavar='NAME',
                      help=f'notebooks to run, of {NOTEBOOKS}')
  parser.add_argument('--figures', action='store_true',
                      help='also save docs/figures/NAME.png')
  parser.add_argument('--timeout_s', type=int, default=3600,
                      help='per-cell timeout')
  args = parser.parse_args()
  # The kernel imports this checkout's packages (configs/, experiments/).
  os.environ['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  for name in args.names:
    start = time.perf_counter()
    notebook = tidy(execute(jupytext.read(COLAB_DIR / f'{name}.py'),
                            args.timeout_s))
    jupytext.write(notebook, COLAB_DIR / f'{name}.ipynb')
    print(f'{name}: ran in {time.perf_counter() - start:.0f} s', flush=True)
    if args.figures:
      FIGURE_DIR.mkdir(parents=True, exist_ok=True)
      (FIGURE_DIR / f'{name}.png').write_bytes(figure_png(notebook))
      print('saved', FIGURE_DIR / f'{name}.png', flush=True)


if __name__ == '__main__':
  main()
