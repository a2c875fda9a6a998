"""The paper's batch-norm effects, as `experiments.reproduce` measures them.

Seed 0 of the reduced reproduction (README, "The paper's findings at a
reduced scale"), at its own size: ResNet-8 trained 300 steps on the 3,000
embedded images, the Hessian over the first 256 at order 30. The networks are
trained and the Hessians computed here (no committed number is read), so
each assertion can fail; the margins of every seed are in the comments. Only
directions that held for every seed of the reproduction (0-5) are asserted.

Why not smaller: on 1,000 images for 200 steps population BN diverged for two
of seven seeds (4 and 5, at steps 30-40; they train on the 3,000 images), and
at 100 steps the outlier ratio lost its direction for two of five seeds.
Population BN takes no Hessian snapshot here (the outliers' return with it is
the reproduction's, not asserted).
"""

import numpy as np
import pytest

from experiments import reproduce

# Training and the Hessian run long here: compiled with every optimisation
# (tests/conftest.py), 168 s against 213 s with the fast compilation.
pytestmark = pytest.mark.optimized

STEPS = reproduce.REDUCED_STEPS


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Seed 0, learning rate 0.03 for all three: a Hessian snapshot at the end
  of mini-batch BN and of no BN; population BN trained only."""
  workdir = tmp_path_factory.mktemp('reproduce')
  snapshots = {'batch': None, 'none': None, 'population': ()}
  return {norm: reproduce.run_one(
      reproduce.reduced_config(norm, 0, snapshot_steps=steps),
      str(workdir / norm)) for norm, steps in snapshots.items()}


def _last_snapshot(run):
  snap = run['snapshots'][-1]
  assert snap['step'] == STEPS and snap['k'] == 10
  return snap


def test_outliers_are_larger_without_batch_norm(runs):
  # lambda_1 / lambda_10 of the top Ritz values, no BN over mini-batch BN;
  # log10 of the quotient, seeds 0-5: +0.287, +0.130, +0.294, +0.220,
  # +0.205, +0.172. Seed 0: 4.97 against 2.57.
  batch, none = _last_snapshot(runs['batch']), _last_snapshot(runs['none'])
  assert none['lambda_ratio'] > batch['lambda_ratio'], (none, batch)


@pytest.mark.parametrize('norm', ['batch', 'none'])
def test_gradient_concentrates_in_the_top_10_eigenspace(runs, norm):
  # The share of the full-batch gradient in the top-10 Ritz space against
  # 10 / n, a random direction's share; log10 of that quotient, seeds 0-5:
  # 3.49 to 3.76 (mini-batch BN), 3.73 to 3.83 (no BN). The bound 300
  # (log10 2.48) leaves a factor of 10 or more.
  snap = _last_snapshot(runs[norm])
  chance = 10 / snap['num_params']
  assert snap['gradient_concentration'] > 300 * chance, snap


def test_population_bn_trains_slower_than_mini_batch_bn(runs):
  # The same learning rate, seed and batches. Mean training loss over the
  # last 50 steps, population BN minus mini-batch BN, seeds 0-5: +0.157,
  # +0.172, +0.155, +0.167, +0.132, +0.139 (seed 0: 0.719 against 0.562).
  late = {norm: float(np.mean([r['loss'] for r in runs[norm]['train'][-5:]]))
          for norm in ('batch', 'population')}
  assert runs['population']['train'][-1]['step'] == STEPS
  assert late['population'] > late['batch'] + 0.05, late


def test_reduced_config_rejects_a_norm_it_does_not_compare():
  with pytest.raises(ValueError, match='norm'):
    reproduce.reduced_config('skipinit', 0)
  with pytest.raises(ValueError, match='order'):
    reproduce.reduced_config('batch', 0, order=5)
