"""Compares finished runs (e.g. the batch-norm variants) on common figures.

  python -m experiments.compare --workdirs=runs/bn,runs/nobn,runs/popbn \
      --labels=BN,no-BN,population-BN --out=runs/compare

Writes OUT/training_loss.png (training loss of every run on one plot),
OUT/spectra.png (their spectra side by side at the last common snapshot step,
or --step) and OUT/comparison.md (a table, also printed).
"""

import os

from absl import app
from absl import flags

from experiments import plots
from experiments import workdir as wd

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Comma-separated workdirs.',
                              required=True)
_LABELS = flags.DEFINE_list('labels', None, 'Their labels (default: the '
                            'workdir names).')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Snapshot step of the spectra '
                             '(default: the last step all runs have).')


def compare(workdirs, labels, out, step=None):
  """Writes the comparison figures and table; returns the table."""
  labels = labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs.')
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise ValueError(f'workdir {workdir!r} does not exist.')
    if not os.path.exists(os.path.join(workdir, wd.TRAIN_LOG)):
      raise ValueError(f'workdir {workdir!r} has no {wd.TRAIN_LOG}: not the '
                       'work directory of a run.')
  os.makedirs(out, exist_ok=True)
  plots.plot_training_loss_variants(workdirs, labels,
                                    os.path.join(out, 'training_loss.png'))
  plots.plot_spectra_side_by_side(workdirs, labels,
                                  os.path.join(out, 'spectra.png'), step)
  table = plots.comparison_table(workdirs, labels)
  with open(os.path.join(out, 'comparison.md'), 'w') as f:
    f.write(table + '\n')
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(compare(_WORKDIRS.value, _LABELS.value, _OUT.value, _STEP.value))


if __name__ == '__main__':
  app.run(main)
