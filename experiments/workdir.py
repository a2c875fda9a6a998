"""The layout of a run's work directory, in one place.

`experiments.train` writes it (process 0 only), `experiments.plots` and
`experiments.compare` read it back:

  config.json                     the config of the latest run.
  checkpoints/                    orbax, the latest `max_checkpoints_to_keep`.
  lanczos/step_XXXXXXX/           Lanczos state during a snapshot, if configured.
  train_metrics.jsonl             {'step', 'loss', 'accuracy', 'learning_rate'}.
  eval_metrics.jsonl              {'step', 'accuracy', 'loss'} on the test split.
  spectra/step_XXXXXXX.npz        `SpectrumResult.save` (without the basis).
  spectra/step_XXXXXXX_exact.npy  exact eigenvalues [n] (hessian.exact).
  spectra/metrics.jsonl           one line per snapshot (`experiments.probe`).
  plots/*.png, summary.md         at the end (`experiments.plots`).

Each .jsonl file is rewritten whole through a temporary file and `os.replace`
(`JsonLines`), so it is never half written.
"""

import json
import os
import re

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
LANCZOS_DIR = 'lanczos'
TRAIN_LOG = 'train_metrics.jsonl'
EVAL_LOG = 'eval_metrics.jsonl'
SPECTRA_DIR = 'spectra'
SNAPSHOT_LOG = os.path.join(SPECTRA_DIR, 'metrics.jsonl')
PLOTS_DIR = 'plots'
SUMMARY_FILE = 'summary.md'
EXACT_SUFFIX = '_exact.npy'
_SNAPSHOT = re.compile(r'step_(\d{7})\.npz$')


def _step_name(step: int) -> str:
  return f'step_{step:07d}'


def snapshot_path(workdir: str, step: int, suffix: str = '.npz') -> str:
  """WORKDIR/spectra/step_XXXXXXX{suffix}."""
  return os.path.join(workdir, SPECTRA_DIR, _step_name(step) + suffix)


def exact_path(workdir: str, step: int) -> str:
  """WORKDIR/spectra/step_XXXXXXX_exact.npy."""
  return snapshot_path(workdir, step, EXACT_SUFFIX)


def lanczos_dir(workdir: str, step: int) -> str:
  """WORKDIR/lanczos/step_XXXXXXX."""
  return os.path.join(workdir, LANCZOS_DIR, _step_name(step))


def plot_path(workdir: str, name: str) -> str:
  """WORKDIR/plots/NAME."""
  return os.path.join(workdir, PLOTS_DIR, name)


def density_plot_name(step: int) -> str:
  """The file name of one snapshot's density figure."""
  return f'density_{_step_name(step)}.png'


def snapshot_steps(workdir: str) -> list[int]:
  """The steps of the spectra saved in WORKDIR, increasing."""
  spectra_dir = os.path.join(workdir, SPECTRA_DIR)
  if not os.path.isdir(spectra_dir):
    return []
  matches = (_SNAPSHOT.match(name) for name in os.listdir(spectra_dir))
  return sorted(int(m.group(1)) for m in matches if m)


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file; [] if it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class JsonLines:
  """Records with a 'step', kept in memory and in a JSON-lines file.

  Every change rewrites the whole file through a temporary file and
  `os.replace`, so a reader (or a kill) never sees a half-written file.
  Non-writing processes keep the records in memory only.
  """

  def __init__(self, path: str, write: bool):
    self.path = path
    self.write = write
    self.records = read_jsonl(path)

  def keep(self, predicate):
    """Drops the records for which predicate(record) is false."""
    kept = [r for r in self.records if predicate(r)]
    if len(kept) != len(self.records):
      self.records = kept
      self._flush()

  def append(self, record: dict):
    self.records.append(record)
    self._flush()

  def _flush(self):
    if not self.write:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = f'{self.path}.tmp'
    with open(tmp, 'w') as f:
      for record in self.records:
        f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
