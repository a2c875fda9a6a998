"""Runs the notebooks of colab/ and stores them with their outputs.

Each notebook is written as a jupytext percent script, colab/NAME.py (review
and edit that), paired with colab/NAME.ipynb (what Colab and GitHub show):

  python colab/run_notebooks.py --address   # REPOSITORY into every badge
                                            # and install cell
  jupytext --sync colab/NAME.py        # the .ipynb's cells from the script
  python colab/run_notebooks.py [NAME ...]
      # runs them from the repository root at their default sizes and stores
      # the outputs in colab/NAME.ipynb (how the committed notebooks were
      # made), with the SHA-256 of colab/NAME.py and the run's wall time in
      # the notebook's metadata (`SOURCE_KEY`): tests/test_notebooks.py
      # fails when the stored outputs are older than the script
  python colab/run_notebooks.py --figures NAME
      # also saves the figure of the cell tagged `readme-figure` as
      # docs/figures/NAME.png (the README's)

The reduced (smoke) run, SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1, is the tests';
this script refuses to store its outputs.
"""

import argparse
import base64
import datetime
import hashlib
import io
import os
import pathlib
import platform
import re
import time

import jupytext
import nbclient
from PIL import Image

COLAB_DIR = pathlib.Path(__file__).resolve().parent
REPO = COLAB_DIR.parent
FIGURE_DIR = REPO / 'docs' / 'figures'
FIGURE_TAG = 'readme-figure'
NOTEBOOKS = ('quickstart', 'batchnorm_outliers', 'your_model',
             'blocks_error_bars_tracking', 'transformer_blocks',
             'sharded_transformer')
# The repository's address: the one place it is written. Every notebook's
# "Open in Colab" badge and install cell use it (`--address` writes it into
# them; tests/test_notebooks.py checks).
REPOSITORY = 'https://github.com/spectral-density/spectral_density'
SOURCE_KEY = 'spectral_density'    # notebook metadata: what made the outputs
SMOKE_ENV = 'SPECTRAL_DENSITY_NOTEBOOK_SMOKE'
# A GitHub repository address of this project, as badges and pip write it.
_ADDRESS = re.compile(r'(github\.com|colab\.research\.google\.com/github)/'
                      r'[\w.-]+/spectral_density')


def source_hash(name):
  """SHA-256 of colab/NAME.py: the source the stored outputs come from."""
  return hashlib.sha256((COLAB_DIR / f'{name}.py').read_bytes()).hexdigest()


def addresses(text):
  """Every ``.../OWNER/spectral_density`` address in `text`, as written."""
  return [m.group(0) for m in _ADDRESS.finditer(text)]


def with_address(text):
  """`text` with each project address pointing at `REPOSITORY`."""
  path = REPOSITORY.removeprefix('https://github.com/')
  return _ADDRESS.sub(lambda m: f'{m.group(1)}/{path}', text)


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


def compact_png(png_base64):
  """A stored figure re-encoded with a 256-colour palette, on white.

  Line plots lose nothing visible and shrink about 2.5x, which keeps the
  notebooks small at 150 dpi; the resolution (dpi) is kept.
  """
  image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
  if image.mode == 'P':
    return png_base64                          # already a palette image
  dpi = image.info.get('dpi')
  flat = Image.new('RGB', image.size, 'white')
  flat.paste(image, mask=image.getchannel('A') if 'A' in image.getbands()
             else None)
  out = io.BytesIO()
  flat.quantize(256).save(out, 'PNG', optimize=True,
                          **({'dpi': dpi} if dpi else {}))
  return base64.b64encode(out.getvalue()).decode('ascii')


def compact(notebook):
  """Every stored PNG of `notebook` through `compact_png`, in place."""
  for cell in notebook.cells:
    for output in cell.get('outputs', ()):
      data = output.get('data', {})
      if 'image/png' in data:
        data['image/png'] = compact_png(data['image/png'])
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
  parser.add_argument('names', nargs='*', metavar='NAME',
                      help=f'notebooks to run, of {NOTEBOOKS}')
  parser.add_argument('--figures', action='store_true',
                      help='also save docs/figures/NAME.png')
  parser.add_argument('--timeout_s', type=int, default=3600,
                      help='per-cell timeout')
  parser.add_argument('--address', action='store_true',
                      help=f'write {REPOSITORY} into every notebook script '
                      'and stop (then jupytext --sync them)')
  args = parser.parse_args()
  for name in args.names:
    if name not in NOTEBOOKS:
      parser.error(f'NAME: {name!r} is not one of {NOTEBOOKS}.')
  if args.address:
    for name in NOTEBOOKS:
      path = COLAB_DIR / f'{name}.py'
      path.write_text(with_address(path.read_text()))
    return
  if os.environ.get(SMOKE_ENV) == '1':
    parser.error(f'{SMOKE_ENV}=1: the stored outputs must come from the '
                 'default run, not the reduced one.')
  # The kernel imports this checkout's packages (configs/, experiments/).
  os.environ['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  for name in args.names or NOTEBOOKS:
    digest = source_hash(name)
    start = time.perf_counter()
    notebook = compact(tidy(execute(jupytext.read(COLAB_DIR / f'{name}.py'),
                                    args.timeout_s)))
    seconds = time.perf_counter() - start
    notebook.metadata[SOURCE_KEY] = {
        'source_sha256': digest,
        'run': 'default sizes',
        'seconds': round(seconds),
        'date': datetime.date.today().isoformat(),
        'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores',
    }
    if source_hash(name) != digest:
      raise RuntimeError(f'colab/{name}.py changed while it ran.')
    jupytext.write(notebook, COLAB_DIR / f'{name}.ipynb')
    print(f'{name}: ran in {seconds:.0f} s', flush=True)
    if args.figures:
      FIGURE_DIR.mkdir(parents=True, exist_ok=True)
      (FIGURE_DIR / f'{name}.png').write_bytes(figure_png(notebook))
      print('saved', FIGURE_DIR / f'{name}.png', flush=True)


if __name__ == '__main__':
  main()
