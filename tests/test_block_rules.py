"""Block rules (per layer, per role, regular expressions, functions of the
path), block densities of a tiny transformer against the dense diagonal
blocks of its `jax.hessian`, Jensen-Shannon distances against closed forms,
and the preconditioned operator P^-1/2 A P^-1/2 against the dense matrix."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy.spatial import distance as scipy_distance

import spectral_density as sd
from spectral_density import blocks as blocks_lib
from spectral_density import density as density_lib
from spectral_density import preconditioning
from experiments import datasets
from experiments import transformer
import toy_problems as tp


def _tiny_gpt(seed=0):
  model = transformer.GPT(vocab_size=16, max_len=6, width=4, num_layers=1,
                          num_heads=2, mlp_dim=8, param_dtype=jnp.float64)
  params = transformer.init_params(model, jax.random.key(seed), 6)
  # Ragged documents: padded sequences, so the token weighting matters.
  rng = np.random.default_rng(seed)
  texts = [bytes(rng.integers(0, 16, n).astype(np.uint8)) for n in
           (9, 4, 14, 7)]
  data = datasets.byte_sequences(texts, 6)
  return model, params, data


@functools.lru_cache(maxsize=1)
def _whole_set_hessian():
  """jax.hessian of the mean per-token loss over the whole set, written
  directly (all real tokens at once), float64: the reference."""
  with jax.enable_x64(True):
    model, params, data = _tiny_gpt()
    flat, unravel = ravel_pytree(params)

    def mean_token_loss(f):
      tokens = jnp.asarray(data['tokens'])
      logits = model.apply({'params': unravel(f)}, tokens[:, :-1])
      logp = jax.nn.log_softmax(logits)
      nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
      return jnp.sum(nll * data['mask']) / jnp.sum(data['mask'])

    return np.asarray(jax.jit(jax.hessian(mean_token_loss))(flat))


def test_lm_hessian_is_the_per_token_mean_whatever_the_batching():
  """Padded sequences weighted by their real tokens: H v of the operator is
  the whole set's mean per-token loss's, for two batchings on 1 and on 8
  devices and for streamed batches of unequal sizes."""
  hessian = _whole_set_hessian()
  with jax.enable_x64(True):
    model, params, data = _tiny_gpt()
    assert data['mask'].shape == (7, 6) and data['mask'].min() == 0
    loss = transformer.make_loss_fn(model,
                                    transformer.tokens_per_example(data))
    v = np.random.default_rng(0).standard_normal((2, hessian.shape[0]))
    expected = v @ hessian
    products = []
    for batch_size, devices in ((3, jax.devices()[:1]), (4, jax.devices())):
      op, _, _ = sd.get_hvp_fn(loss, params, data, batch_size=batch_size,
                               devices=devices)
      products.append(np.asarray(op(v)))
    streamed, _, _ = sd.get_hvp_fn(
        loss, params, [jax.tree.map(lambda x: x[:2], data),
                       jax.tree.map(lambda x: x[2:], data)])
    products.append(np.asarray(streamed(v)))
  for product in products:
    np.testing.assert_allclose(product, expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())


def test_built_in_rules_name_the_blocks_of_a_transformer():
  _, params, _ = _tiny_gpt()
  sizes = lambda rule: {k: int(v.sum()) for k, v in
                        sd.block_masks(params, rule).items()}
  assert sizes('per_role') == {
      'embedding': 64 + 24, 'query': 20, 'key': 20, 'value': 20,
      'attention_output': 20, 'mlp_in': 40, 'mlp_out': 36, 'norm': 24,
      'head': 80}
  per_layer = sizes('per_layer')
  assert per_layer['block_0/attn/query'] == 20 and per_layer['wte'] == 64
  assert per_layer == sizes(None) and len(per_layer) == 12
  assert sizes('layer_role')['block_0/norm'] == 16
  assert len(sizes('per_leaf')) == 22
  # Regular expressions and functions of the path, written once.
  assert sizes({'attention': r'/attn/', 'rest': r'^(?!.*/attn/)'}) == {
      'attention': 80, 'rest': 268}
  assert sizes(lambda p: 'kernels' if p.endswith('kernel') else None) == {
      'kernels': 16 * 4 + 32 * 2 + 64}
  with pytest.raises(ValueError, match='unknown rule'):
    sd.block_masks(params, 'per_stage')
  with pytest.raises(ValueError, match='regular expression'):
    sd.block_masks(params, {'bad': '('})
  with pytest.raises(TypeError, match='block name'):
    sd.block_masks(params, lambda p: 3)


def test_attribute_paths_name_layers_not_the_top_module():
  """An Equinox-style model (attributes, lists) gets one block per layer by
  default, named without dots or brackets; no depth to guess."""
  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Linear:
    weight: jax.Array
    bias: jax.Array

  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Model:
    mlp: list

  model = Model(mlp=[Linear(jnp.ones((3, 2)), jnp.ones(3)),
                     Linear(jnp.ones((1, 3)), jnp.ones(1))])
  assert [p for p, _ in sd.parameter_paths(model)] == [
      'mlp/0/weight', 'mlp/0/bias', 'mlp/1/weight', 'mlp/1/bias']
  assert {k: int(v.sum()) for k, v in sd.block_masks(model).items()} == {
      'mlp/0': 9, 'mlp/1': 4}


def test_block_densities_are_those_of_the_dense_diagonal_blocks():
  """Each block's SLQ density is the Gaussian-smoothed Gauss quadrature of
  the spectral measure of the dense block H_bb of jax.hessian seen from the
  start vector v_0: its k nodes match the moments v_0' H_bb^p v_0 for
  p < 2k, and a block no larger than the order (the norms' 24) gets exactly
  the eigenvalues of H_bb with weights (u_i . v_0)^2."""
  with jax.enable_x64(True):
    model, params, data = _tiny_gpt()
    loss = transformer.make_loss_fn(model,
                                    transformer.tokens_per_example(data))
    hessian = _whole_set_hessian()
    # Three blocks of the roles Zhang et al. contrast (the rules' names are
    # tested above; each block compiles a product of its own).
    rule = {'query_key': r'/attn/(query|key)/', 'mlp_out': r'mlp/fc_out',
            'norm': r'(^|/)ln_'}
    res = sd.block_spectra(loss, params, data, batch_size=3, blocks=rule,
                           order=24, num_draws=1, rng_key=jax.random.key(1),
                           precision='float64', keep_vecs=True,
                           include_full=False)
  masks = sd.block_masks(params, rule)
  assert {k: int(m.sum()) for k, m in masks.items()} == {
      'query_key': 40, 'mlp_out': 36, 'norm': 24}
  grid, sigma = blocks_lib.common_grid(res, sigma=0.05, grid_len=400)
  densities, _, _ = blocks_lib.block_densities(res, grid, sigma)
  for name, mask in masks.items():
    idx = np.flatnonzero(mask)
    h = hessian[np.ix_(idx, idx)]
    eigenvalues, vectors = np.linalg.eigh(h)
    start = res[name].vecs[0, 0]
    weights = (vectors.T @ start) ** 2
    k = int(res[name].num_steps[0])
    nodes, w = res[name].nodes[0, :k], res[name].weights[0, :k]
    scale = np.abs(eigenvalues).max()
    for p in range(2 * min(k, 6)):
      np.testing.assert_allclose(np.sum(w * (nodes / scale) ** p),
                                 np.sum(weights * (eigenvalues / scale) ** p),
                                 atol=1e-9, err_msg=f'{name}: moment {p}')
    if idx.size <= 24:
      expected, _ = density_lib.eigv_to_density(
          eigenvalues[None], weights[None], grid, sigma=sigma)
      np.testing.assert_allclose(densities[name], expected, atol=1e-8,
                                 rtol=1e-6, err_msg=name)


def test_js_distance_closed_forms():
  """Far-apart Gaussians on a grid: disjoint -> sqrt(ln 2); a point mass
  against the half-half mixture of itself and another -> sqrt(3/4 ln 4/3);
  equal -> 0; and the matrix equals the definition through KL."""
  as_result = lambda nodes, weights: sd.SpectrumResult(
      np.zeros((1, len(nodes), len(nodes))), np.array([nodes], float),
      np.array([weights], float), np.array([len(nodes)]), 10)
  spectra = {'a': as_result([0.0], [1.0]), 'b': as_result([10.0], [1.0]),
             'ab': as_result([0.0, 10.0], [0.5, 0.5]),
             'a2': as_result([0.0], [1.0])}
  matrix, names = sd.js_distances(spectra, sigma=0.1)
  assert names == ['a', 'b', 'ab', 'a2']
  js = dict(zip(names, matrix))
  assert js['a'][1] == pytest.approx(np.sqrt(np.log(2)), rel=1e-9)
  assert js['a'][2] == pytest.approx(np.sqrt(0.75 * np.log(4 / 3)), rel=1e-6)
  assert js['a'][3] == pytest.approx(0, abs=1e-12)
  np.testing.assert_allclose(matrix, matrix.T)
  divergence, _ = sd.js_distances(spectra, sigma=0.1, divergence=True)
  np.testing.assert_allclose(divergence, matrix ** 2)
  # Overlapping densities: the definition, term by term.
  spectra = {'p': as_result([0.0, 1.0], [0.3, 0.7]),
             'q': as_result([0.5, 1.2], [0.6, 0.4])}
  (m, _), (densities, _, _) = (sd.js_distances(spectra, sigma=0.3),
                               blocks_lib.block_densities(spectra, sigma=0.3))
  p, q = (d / d.sum() for d in densities.values())
  mid = (p + q) / 2
  kl = lambda a, b: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) /
                                                      b), 0))
  assert m[0, 1] == pytest.approx(np.sqrt(kl(p, mid) / 2 + kl(q, mid) / 2),
                                  rel=1e-9)
  assert m[0, 1] == pytest.approx(scipy_distance.jensenshannon(p, q))
  assert sd.mean_js_distance(np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]])) == 2
  # A kernel relative to the common span: scaling the operator changes
  # nothing (the default absolute kernel is not scale invariant).
  scaled = {k: sd.SpectrumResult(r.tridiag, 100 * r.nodes, r.weights,
                                 r.num_steps, r.dim)
            for k, r in spectra.items()}
  relative, _ = sd.js_distances(spectra, relative_sigma=0.05)
  np.testing.assert_allclose(
      sd.js_distances(scaled, relative_sigma=0.05)[0], relative, rtol=1e-9)
  close = {'p': as_result([0.0, 0.01], [0.3, 0.7]),
           'q': as_result([0.005, 0.012], [0.6, 0.4])}
  far = {k: sd.SpectrumResult(r.tridiag, 100 * r.nodes, r.weights,
                              r.num_steps, r.dim) for k, r in close.items()}
  assert sd.js_distances(close)[0][0, 1] < 0.5 < sd.js_distances(far)[0][0, 1]


def _mlp_problem():
  flat = tp.mlp_params(5, 4, 3, seed=1)
  params = {'hidden': {'kernel': flat['w1'], 'bias': flat['b1']},
            'out': {'kernel': flat['w2'], 'bias': flat['b2']}}
  as_flat = lambda p: {'w1': p['hidden']['kernel'], 'b1': p['hidden']['bias'],
                       'w2': p['out']['kernel'], 'b2': p['out']['bias']}
  data = tp.classification_data(64, 5, 3, seed=2)
  forms = {
      'hessian': lambda p, b: tp.mlp_loss(as_flat(p), b),
      'ggn': (lambda p, b: tp.mlp_logits(as_flat(p), b), tp.output_loss),
      'fisher': lambda p, b: tp.mlp_per_example_loss(as_flat(p), b),
  }
  return params, data, forms


def _adam_state(params, data, loss):
  """An optax Adam state after three steps: the preconditioner's source."""
  tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.01, b2=0.99,
                                                             eps=1e-3))
  state = tx.init(params)
  for _ in range(3):
    grads = jax.grad(loss)(params, data)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return state


@pytest.mark.parametrize('curvature', ['hessian', 'ggn', 'fisher'])
def test_preconditioned_operator_is_the_dense_matrix(curvature):
  with jax.enable_x64(True):
    params, data, forms = _mlp_problem()
    state = _adam_state(params, data, forms['hessian'])
    diagonal = sd.adam_preconditioner(state, b2=0.99, eps=1e-3)
    nu = ravel_pytree(state[1][0].nu)[0]
    np.testing.assert_allclose(
        diagonal, np.sqrt(nu / (1 - 0.99 ** 3)) + 1e-3, rtol=1e-12)
    op, _, n = sd.get_hvp_fn(forms[curvature], params, data, batch_size=16,
                             curvature=curvature)
    dense = np.asarray(sd.dense_matrix(op, n, dtype=jnp.float64))
    s = 1 / np.sqrt(diagonal)
    expected = s[:, None] * dense * s[None, :]
    pre = sd.preconditioned(op, diagonal)
    np.testing.assert_allclose(
        np.asarray(sd.dense_matrix(pre, n, dtype=jnp.float64)), expected,
        atol=1e-12, rtol=1e-9)
    if curvature != 'hessian':
      return
    # Through Lanczos (the compiled program) and per block: the Ritz values
    # of each block are the eigenvalues of the preconditioned dense blocks.
    res = blocks_lib.block_spectra_of(pre, params, order=24, num_draws=1,
                              rng_key=jax.random.key(2), precision='float64')
    function_form = sd.preconditioned(lambda v: op(v), diagonal)
    np.testing.assert_allclose(
        np.asarray(function_form(np.eye(n)[0])), expected[:, 0], atol=1e-12)
  for name, block in [('hidden', slice(0, 24)), ('out', slice(24, 39))]:
    exact = np.linalg.eigvalsh(expected[block, block])
    k = res[name].num_steps[0]
    gap = np.abs(res[name].nodes[0, :k, None] - exact[None])
    np.testing.assert_allclose(gap.min(axis=1), 0, atol=1e-8)
  assert res.full.lambda_max == pytest.approx(np.linalg.eigvalsh(expected)[-1],
                                              rel=1e-9)
  with pytest.raises(ValueError, match='diagonal'):
    sd.preconditioned(op, -np.ones(n))
  with pytest.raises(ValueError, match='Adam'):
    preconditioning.adam_preconditioner(optax.sgd(0.1).init(params))
