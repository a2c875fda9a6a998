"""The notebooks of colab/ run top to bottom, in their reduced (smoke) mode.

Each notebook is written as a jupytext percent script, colab/NAME.py, paired
with the colab/NAME.ipynb that Colab and GitHub show; the pair must hold the
same cells. The script is executed by a Jupyter kernel with
SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1 (the same cells, small sizes), from the
repository root, and fails the test on any error. Each notebook ends with a
`summary` dict of its numbers; a cell appended here prints it as JSON, and the
tests check those numbers against what the notebook claims.

The kernel inherits this process's environment, so under tests/conftest.py it
sees 8 host CPU devices and the multi-device cells really use them.
"""

import ast
import importlib.util
import json
import os
import pathlib
import runpy

import numpy as np
from packaging import requirements
from packaging import utils as packaging_utils

import pytest

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')
jupytext = pytest.importorskip('jupytext')

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE_ENV = 'SPECTRAL_DENSITY_NOTEBOOK_SMOKE'
# The batchnorm_outliers training cell compiles and trains three ResNet-8s:
# its test took 858 s while other jobs loaded the 2 cores (load average 20).
CELL_TIMEOUT_S = 1800
FIGURE_TAG = 'readme-figure'
SUMMARY_MARKER = 'NOTEBOOK_SUMMARY '
NOTEBOOKS = ('quickstart', 'batchnorm_outliers', 'your_model',
             'blocks_error_bars_tracking', 'transformer_blocks',
             'sharded_transformer')
MAX_NOTEBOOK_BYTES = 1_000_000


def load_runner():
  """colab/run_notebooks.py as a module (colab/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      'run_notebooks', REPO / 'colab' / 'run_notebooks.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_notebook(name, monkeypatch, optimized=False):
  """Executes colab/NAME.py in smoke mode; returns (notebook, summary).

  The kernel compiles fast (tests/conftest.py) unless `optimized`: for the
  notebooks whose running time, not compilation, dominates.
  """
  notebook = jupytext.read(REPO / 'colab' / f'{name}.py')
  notebook.cells.append(nbformat.v4.new_code_cell(
      f'import json\nprint({SUMMARY_MARKER!r} + json.dumps(summary))'))
  monkeypatch.setenv(SMOKE_ENV, '1')
  if optimized:
    monkeypatch.delenv('JAX_DISABLE_MOST_OPTIMIZATIONS', raising=False)
  # The checkout's packages (configs/, experiments/) import even where the
  # installed copy predates them.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  # The kernel gets the devices a fresh runtime has (the notebooks ask for
  # more themselves where they show several), not the 8 host devices of this
  # test process: 8 devices on 2 cores once left a collective of the
  # training cell waiting for a device thread that never came.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  monkeypatch.setenv('XLA_FLAGS', ' '.join(
      flags + ['--xla_cpu_collective_call_terminate_timeout_seconds=600']))
  load_runner().execute(notebook, CELL_TIMEOUT_S)
  text = ''.join(out.get('text', '') for out in notebook.cells[-1].outputs
                 if out.get('output_type') == 'stream')
  line = next(l for l in text.splitlines() if l.startswith(SUMMARY_MARKER))
  return notebook, json.loads(line[len(SUMMARY_MARKER):])


def figure_pngs(notebook):
  """The PNG outputs of the cell tagged as the README figure."""
  cells = [c for c in notebook.cells
           if FIGURE_TAG in c.metadata.get('tags', ())]
  assert len(cells) == 1, f'expected one cell tagged {FIGURE_TAG}'
  return [o['data']['image/png'] for o in cells[0].outputs
          if 'image/png' in o.get('data', {})]


def cells(notebook):
  """What a pair must share: each cell's type, source and tags."""
  return [(c.cell_type, c.source, tuple(c.metadata.get('tags', ())))
          for c in notebook.cells]


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_is_its_script_with_outputs(name):
  script_path = REPO / 'colab' / f'{name}.py'
  notebook_path = REPO / 'colab' / f'{name}.ipynb'
  ast.parse(script_path.read_text())   # the script is plain Python
  script = jupytext.read(script_path)
  committed = nbformat.read(notebook_path, as_version=4)
  nbformat.validate(committed)
  assert committed.metadata['jupytext']['formats'] == 'ipynb,py:percent'
  assert cells(committed) == cells(script), (
      f'colab/{name}.ipynb is stale: run jupytext --sync colab/{name}.py')
  runner = load_runner()
  assert runner.NOTEBOOKS == NOTEBOOKS
  # The stored outputs are those of the default run of this very script.
  made = committed.metadata.get(runner.SOURCE_KEY, {})
  assert made.get('source_sha256') == runner.source_hash(name), (
      f'colab/{name}.ipynb holds outputs of an older colab/{name}.py: run '
      f'python colab/run_notebooks.py {name}')
  assert made['run'] == 'default sizes' and made['seconds'] > 0
  # One address, the runner's, in the badge and the install cell.
  repository = runner.REPOSITORY.removeprefix('https://github.com/')
  badge = (f'https://colab.research.google.com/github/{repository}/blob/main/'
           f'colab/{name}.ipynb')
  assert badge in committed.cells[0].source
  install = next(c for c in committed.cells if c.cell_type == 'code')
  assert f"'git+{runner.REPOSITORY}'" in install.source
  for text in (script_path.read_text(), notebook_path.read_text()):
    assert set(runner.addresses(text)) <= {
        f'github.com/{repository}', f'colab.research.google.com/github/'
        f'{repository}'}
    assert 'OWNER' not in text
  # It reads on GitHub before anyone runs it: the figure is stored.
  assert figure_pngs(committed)
  assert notebook_path.stat().st_size < MAX_NOTEBOOK_BYTES


# What a fresh Colab runtime ships, of the packages the install cell needs
# (googlecolab/backend-info, pip-freeze.gpu.txt, June 2026; Python 3.12).
COLAB_VERSIONS = {
    'jax': '0.7.2', 'flax': '0.11.2', 'optax': '0.2.8',
    'orbax-checkpoint': '0.12.0', 'grain': '0.2.17', 'numpy': '2.0.2',
    'scipy': '1.16.3', 'matplotlib': '3.10.0', 'absl-py': '1.4.0',
    'pillow': '11.3.0', 'tqdm': '4.67.3',
}


def test_the_colab_install_keeps_the_runtime_packages(monkeypatch):
  import setuptools
  setup = {}
  monkeypatch.setattr(setuptools, 'setup', lambda **kw: setup.update(kw))
  monkeypatch.chdir(REPO)
  runpy.run_path(str(REPO / 'setup.py'))
  needed = setup['install_requires'] + setup['extras_require']['experiments']
  for requirement in map(requirements.Requirement, needed):
    name = packaging_utils.canonicalize_name(requirement.name)
    if name in COLAB_VERSIONS:   # pip must not need to upgrade it there
      assert requirement.specifier.contains(COLAB_VERSIONS[name]), (
          requirement, COLAB_VERSIONS[name])
  for name in NOTEBOOKS:
    install = next(c for c in jupytext.read(REPO / 'colab' / f'{name}.py')
                   .cells if c.cell_type == 'code').source
    # Every installed distribution goes to pip as a constraint.
    assert "'-c', pins.name" in install and 'distributions()' in install
    assert "'spectral_density[experiments] @ '" in install


def test_quickstart_slq_matches_the_exact_spectrum(monkeypatch):
  notebook, summary = run_notebook('quickstart', monkeypatch)
  assert figure_pngs(notebook)
  exact, slq = summary['exact_top5'], summary['slq_top5']
  assert summary['slq_lambda_max'] == pytest.approx(
      summary['exact_lambda_max'], rel=1e-4)
  assert slq == pytest.approx(exact, rel=1e-4)
  assert summary['slq_lambda_min'] == pytest.approx(
      summary['exact_lambda_min'], rel=1e-3)
  # The printed trace is the deflated one, within 3 standard errors (and
  # 1%) of the exact trace.
  error = abs(summary['slq_trace'] - summary['exact_trace'])
  assert error < 3 * summary['slq_trace_stderr']
  assert error < 1e-2 * summary['exact_trace']
  l1 = summary['l1']
  # A higher order and a wider kernel bring the estimate closer to the truth.
  assert l1['order 90'] < l1['order 10']
  assert l1['sigma 0.01'] < l1['sigma 0.0001']


def test_batchnorm_outliers_tracks_the_three_networks(monkeypatch):
  notebook, summary = run_notebook('batchnorm_outliers', monkeypatch)
  assert figure_pngs(notebook)
  assert not summary['full_size']
  for norm in ('none', 'batch', 'population'):
    records = summary['records'][norm]
    assert [r['step'] for r in records] == summary['snapshot_steps']
    for record in records:
      assert 0 < record['lambda_max'] < 1e4
      assert 0 <= record['gradient_concentration'] <= 1
    top = summary['top_eigenvalues'][norm]
    assert top == sorted(top, reverse=True)
    assert top[0] == pytest.approx(records[-1]['lambda_max'])
    assert 0 <= summary['test_accuracy'][norm] <= 1


def test_your_model_paths_agree(monkeypatch):
  notebook, summary = run_notebook('your_model', monkeypatch,
                                   optimized=True)  # 90 s, 262 s if not
  assert figure_pngs(notebook)
  assert summary['num_devices'] >= 2
  # Streaming the batches and using one device change only the order of
  # float32 sums.
  assert summary['stream_difference'] < 1e-4
  assert summary['devices_difference'] < 1e-4
  assert summary['sharded_difference'] < 1e-4
  lambda_max, lambda_min = summary['lambda_max'], summary['lambda_min']
  for name in ('Gauss-Newton', 'empirical Fisher'):
    assert lambda_min[name] > -1e-4 * lambda_max[name]  # positive semi-definite
  assert lambda_min['Hessian'] < -1e-3 * lambda_max['Hessian']
  assert summary['ritz_residuals'][0] < 1e-2
  assert 0 <= summary['gradient_fraction'] <= 1


def test_blocks_error_bars_tracking(monkeypatch):
  notebook, summary = run_notebook('blocks_error_bars_tracking', monkeypatch)
  assert figure_pngs(notebook)
  assert summary['resnet'] == 'resnet8'       # the reduced run
  for norm in ('none', 'batch'):
    # the five blocks partition the parameters
    assert sum(summary['block_sizes'][norm].values()) == (
        summary['num_params'][norm])
    assert len(summary['block_lambda_max'][norm]) == 5
  assert summary['cdf_band_inside']
  assert 0 < summary['cdf_band_width'] < 1
  assert summary['mlp_trace_stderr'] > 0
  tracking = summary['tracking']
  assert tracking[0]['overlap'] is None
  for record in tracking[1:]:
    assert 0 <= record['overlap'] <= 1 + 1e-9
    assert 0 <= record['gradient_fraction_previous'] <= 1 + 1e-9


def test_sharded_transformer_layouts_agree(monkeypatch):
  notebook, summary = run_notebook('sharded_transformer', monkeypatch)
  assert figure_pngs(notebook)
  assert summary['num_devices'] == 8
  # Every leaf of the small GPT has a dimension that 8 divides: each device
  # holds exactly its share of the parameters.
  whole = summary['param_bytes_whole']
  held = summary['param_bytes_per_device']
  assert held == {'replicated': whole, 'FSDP 8': whole // 8,
                  'FSDP 4 x data 2': whole // 4}
  program = summary['lanczos_bytes_per_device']
  assert program['FSDP 8'] < program['FSDP 4 x data 2'] < (
      program['replicated'])
  # The same start vectors, exact products: float32 rounding apart, the
  # layouts give the replicated run's tridiagonals and Ritz values.
  for name in ('FSDP 8', 'FSDP 4 x data 2'):
    assert summary['tridiag_difference'][name] < 1e-4
    np.testing.assert_allclose(summary['top_ritz'][name],
                               summary['top_ritz']['replicated'], rtol=1e-4)
  assert summary['final_loss'] < summary['initial_loss']
