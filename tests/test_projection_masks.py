"""`projection_masks`: each draw runs Lanczos on its diagonal block P A P."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
import toy_problems as tp

N, BLOCK = 30, 8


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _blocks(num_draws=2, seed=0):
  """0/1 masks ``[num_draws, N]`` of BLOCK random indices each."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((num_draws, N))
  for mask in masks:
    mask[rng.choice(N, BLOCK, replace=False)] = 1
  return masks


@pytest.mark.parametrize('basis', ['device', 'sharded', 'host', 'none'])
def test_each_draw_gives_the_eigenvalues_of_its_block(basis):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(N, N))
  a = (x + x.T) / 2
  mat = jnp.asarray(a)
  masks = _blocks()
  result = sd.lanczos_draws(lambda v: mat @ v, N, BLOCK, jax.random.key(0),
                            num_draws=2, projection_masks=masks, basis=basis,
                            keep_vecs=basis != 'none', precision='float64')
  for d in range(2):
    idx = np.flatnonzero(masks[d])
    block = np.linalg.eigvalsh(a[np.ix_(idx, idx)])
    np.testing.assert_allclose(np.linalg.eigvalsh(result.tridiag[d]), block,
                               atol=1e-9)
    if basis != 'none':  # the basis lives in the block's coordinates
      assert np.all(result.vecs[d][:, masks[d] == 0] == 0)


@pytest.mark.optimized  # 13 s compiled with every optimisation, 25 s without
def test_masks_with_a_dataset_operator_and_chunked_draws():
  params = tp.mlp_params(3, 3, 2)
  data = tp.classification_data(30, 3, 2)
  hvp_fn, _, n = sd.get_hvp_fn(tp.mlp_loss, params, data, batch_size=10)
  h = tp.dense_hessian(tp.mlp_loss, params, data)
  masks = np.zeros((3, n))
  masks[0, :12] = masks[1, 12:] = masks[2, 5:10] = 1  # layer-like blocks
  result = sd.lanczos_draws(hvp_fn, n, 5, jax.random.key(0), num_draws=3,
                            draws_per_pass=2, projection_masks=masks)
  idx = np.flatnonzero(masks[2])  # a block of 5: order 5 is exact
  np.testing.assert_allclose(np.linalg.eigvalsh(result.tridiag[2]),
                             np.linalg.eigvalsh(h[np.ix_(idx, idx)]),
                             atol=1e-10)
  for d in range(2):  # larger blocks: the extreme Ritz values lie inside
    idx = np.flatnonzero(masks[d])
    block = np.linalg.eigvalsh(h[np.ix_(idx, idx)])
    ritz = np.linalg.eigvalsh(result.tridiag[d])
    assert block[0] - 1e-10 <= ritz[0] and ritz[-1] <= block[-1] + 1e-10
