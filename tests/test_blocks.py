"""Block spectra: each block's Ritz values are the eigenvalues of the dense
diagonal block H_bb, all blocks in one batched run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_density as sd
from spectral_density import blocks as blocks_lib
import toy_problems as tp


def _problem():
  """A 5-4-3 tanh MLP with layers as subtrees: 24 + 15 parameters."""
  flat = tp.mlp_params(5, 4, 3, seed=1)
  params = {'hidden': {'kernel': flat['w1'], 'bias': flat['b1']},
            'out': {'kernel': flat['w2'], 'bias': flat['b2']}}
  def loss(p, batch):
    return tp.mlp_loss({'w1': p['hidden']['kernel'], 'b1': p['hidden']['bias'],
                        'w2': p['out']['kernel'], 'b2': p['out']['bias']},
                       batch)
  data = tp.classification_data(64, 5, 3, seed=2)
  return loss, params, data


def test_block_ritz_values_are_the_eigenvalues_of_the_dense_blocks():
  with jax.enable_x64(True):
    loss, params, data = _problem()
    hessian = sd.full_hessian(loss, params, data)
    res = sd.block_spectra(loss, params, data, batch_size=16, order=24,
                           num_draws=2, rng_key=jax.random.key(3),
                           precision='float64', keep_vecs=True)
  assert list(res) == ['hidden', 'out']
  assert res.sizes == {'hidden': 24, 'out': 15}
  for name, block in [('hidden', slice(0, 24)), ('out', slice(24, 39))]:
    exact = np.linalg.eigvalsh(hessian[block, block])
    size = exact.size
    r = res[name]
    assert r.dim == size and r.vecs.shape == (2, 24, size)
    assert np.all(r.num_steps <= size)  # 'out' (15 < order) breaks down
    for d in range(2):
      k = r.num_steps[d]
      ritz = r.nodes[d, :k]
      # Lanczos finds each distinct eigenvalue once (the softmax leaves the
      # output layer's block a null space): every Ritz value is an eigenvalue
      # of H_bb, and every eigenvalue is a Ritz value.
      gap = np.abs(ritz[:, None] - exact[None, :])
      np.testing.assert_allclose(gap.min(axis=1), 0, atol=1e-9)
      np.testing.assert_allclose(gap.min(axis=0), 0, atol=1e-9)
      np.testing.assert_allclose(r.weights[d, k:], 0)
  assert np.sum(np.abs(np.linalg.eigvalsh(hessian[24:, 24:])) < 1e-12) == 5
  # The full Hessian's draws ran in the same batch.
  exact_full = np.linalg.eigvalsh(hessian)
  assert res.full.dim == 39
  assert res.full.lambda_max == pytest.approx(exact_full[-1], rel=1e-9)
  assert res.distance > 0


def test_wasserstein_of_the_union_is_the_closed_form():
  """With every eigenvalue as an equal-weight node, W1 between the full
  spectrum and the union of the blocks' is the mean gap of sorted values."""
  with jax.enable_x64(True):
    loss, params, data = _problem()
    hessian = sd.full_hessian(loss, params, data)
  exact_full = np.linalg.eigvalsh(hessian)
  parts = [np.linalg.eigvalsh(hessian[b, b])
           for b in (slice(0, 24), slice(24, 39))]
  as_result = lambda ev: sd.SpectrumResult(
      np.zeros((1, ev.size, ev.size)), ev[None], np.full((1, ev.size),
                                                          1 / ev.size),
      np.array([ev.size]), ev.size)
  distance = blocks_lib.wasserstein1(as_result(exact_full),
                                     [as_result(p) for p in parts], [24, 15])
  union = np.sort(np.concatenate(parts))
  assert distance == pytest.approx(np.mean(np.abs(exact_full - union)),
                                   rel=1e-10)


def test_block_choices():
  with jax.enable_x64(True):
    _, params, _ = _problem()
  names = lambda **kw: {k: int(v.sum()) for k, v in
                        blocks_lib.block_masks(params, **kw).items()}
  assert names() == {'hidden': 24, 'out': 15}
  assert names(depth=2) == {'hidden/bias': 4, 'hidden/kernel': 20,
                            'out/bias': 3, 'out/kernel': 12}
  assert names(blocks=['out', 'hidden/kernel']) == {'out': 15,
                                                    'hidden/kernel': 20}
  assert names(blocks={'kernels': lambda p: p.endswith('kernel')}) == {
      'kernels': 32}
  mask = blocks_lib.block_masks(params, blocks=['hidden/bias'])['hidden/bias']
  # ravel_pytree order: hidden/bias, hidden/kernel, out/bias, out/kernel.
  np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(4))
  with pytest.raises(ValueError, match='overlaps'):
    blocks_lib.block_masks(params, blocks=['hidden', 'hidden/bias'])
  with pytest.raises(ValueError, match='matches no parameter'):
    blocks_lib.block_masks(params, blocks=['conv'])
  with pytest.raises(ValueError, match='unknown rule'):
    blocks_lib.block_masks(params, blocks='hidden')
  with pytest.raises(TypeError, match='blocks'):
    blocks_lib.block_masks(params, blocks=3)


def test_projection_masks_are_checked():
  with pytest.raises(ValueError, match='projection_masks'):
    sd.lanczos_draws(lambda v: v, 4, 2, jax.random.key(0), num_draws=2,
                     projection_masks=np.ones((1, 4)))
  with pytest.raises(ValueError, match='projection_masks'):
    sd.lanczos_draws(lambda v: v, 4, 2, jax.random.key(0),
                     projection_masks=np.zeros((1, 4)))


@pytest.mark.parametrize('curvature', ['hessian', 'ggn', 'fisher'])
def test_restricted_products_are_the_dense_diagonal_blocks(curvature):
  """Row i of the batch gets H_bb v_b for its block (the pattern repeats),
  against the dense curvature's diagonal blocks; a batch that is not a
  multiple of the pattern gets the full product."""
  with jax.enable_x64(True):
    loss, params, data = _problem()
    mlp = lambda p, b: tp.mlp_logits(
        {'w1': p['hidden']['kernel'], 'b1': p['hidden']['bias'],
         'w2': p['out']['kernel'], 'b2': p['out']['bias']}, b)
    if curvature == 'ggn':
      form = (mlp, tp.output_loss)
    elif curvature == 'fisher':
      form = lambda p, b: tp.cross_entropy(mlp(p, b), b['y'])
    else:
      form = loss
    op, _, n = sd.get_hvp_fn(form, params, data, batch_size=16,
                             curvature=curvature)
    dense = sd.dense_matrix(op, n, dtype=jnp.float64)
    masks = blocks_lib.block_masks(params, depth=2)   # 4 leaves
    names = list(masks)
    pattern = [None] + [blocks_lib.block_leaves(params, masks[k])
                        for k in names]
    restricted = op.restrict_rows(pattern)
    v = np.random.default_rng(0).standard_normal((2 * len(pattern), n))
    rows = np.stack([np.ones(n)] + [masks[k] for k in names])
    rows = np.tile(rows, (2, 1))
    out = np.asarray(restricted(v * rows))
    expected = np.stack([(dense @ (x * m)) * m for x, m in zip(v, rows)])
    np.testing.assert_allclose(out, expected, atol=1e-12, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(restricted(v[0])), dense @ v[0],
                               atol=1e-12, rtol=1e-9)


def test_draws_per_pass_keeps_the_blocks_apart():
  with jax.enable_x64(True):
    loss, params, data = _problem()
    kw = dict(batch_size=16, order=8, num_draws=2, rng_key=jax.random.key(5),
              precision='float64')
    one = sd.block_spectra(loss, params, data, **kw)
    two = sd.block_spectra(loss, params, data, draws_per_pass=1, **kw)
  for name in ['hidden', 'out']:
    np.testing.assert_allclose(one[name].tridiag, two[name].tridiag,
                               atol=1e-10)
  np.testing.assert_allclose(one.full.tridiag, two.full.tridiag, atol=1e-10)
