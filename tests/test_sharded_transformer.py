"""The GPT of experiments/transformer.py through the sharded-parameter path.

A tiny pre-LN GPT (width 8, one block, 16-byte sequences) in float64 on 32
sequences of the Python standard library's source (`corpus`: some padded),
with its token-weighted loss; each layout batches the sequences differently,
which leaves the loss as it is. The bytes are renumbered by rank among those
that occur (about 56 symbols with Python 3.11), so that the model's 1,700 or
so parameters have a dense Hessian that `jax.hessian` builds in seconds. The
parameters are fully sharded over the 8 CPU devices (FSDP 8) and over a 4 x 2
('fsdp', 'data') mesh; every leaf has a dimension that 8 divides, so both
layouts split every leaf. Then:

* each product is the dense Hessian of the whole set's mean per-token loss
  (`jax.hessian`, summed over chunks of sequences) times the vector;
* `sharded_lanczos`'s tridiagonals are those of the replicated computation:
  a plain numpy Lanczos on that dense Hessian from the same start vectors
  (tests/test_sharded.py compares the sharded layouts with the replicated
  layout of the same path; this reference shares no code with it);
* no device holds a whole parameter leaf, nor a whole leaf of a product.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import spectral_density as sd
from experiments import datasets
from experiments import transformer
from spectral_density import tree_recurrence

SEQ_LEN, NUM_SEQS, CHUNK = 16, 32, 8
# Sequences per batch: the per-token weighting makes the loss independent
# of the batching, so each layout gets its own.
BATCH = {'fsdp8': 8, 'fsdp4xdata2': 4}
ORDER, DRAWS = 20, 2
LAYOUTS = ('fsdp8', 'fsdp4xdata2')


def corpus():
  """The first and the last piece of each of the first ``NUM_SEQS / 2``
  files of the 'stdlib' corpus (`datasets.byte_sequences`): the last pieces
  are padded, so the loss's token weighting matters."""
  pieces = [datasets.byte_sequences([path.read_bytes()], SEQ_LEN)
            for path in datasets.stdlib_files()[:NUM_SEQS // 2]]
  return {k: np.concatenate([p[k][[0, -1]] for p in pieces])
          for k in ('tokens', 'mask')}


def compact_bytes(dataset, multiple=8):
  """`dataset` with its tokens renumbered by rank among the byte values that
  occur (the padding byte 0 among them), and the vocabulary size: their
  number rounded up to `multiple`."""
  values, ranks = np.unique(dataset['tokens'], return_inverse=True)
  tokens = ranks.reshape(dataset['tokens'].shape).astype(np.int32)
  return {'tokens': tokens, 'mask': dataset['mask']}, -(-values.size //
                                                        multiple) * multiple


def problem():
  """(model, float64 params as numpy, data, the whole set's loss)."""
  data, vocab = compact_bytes(corpus())
  model = transformer.GPT(vocab_size=vocab, max_len=SEQ_LEN, width=8,
                          num_layers=1, num_heads=2, mlp_dim=16,
                          param_dtype=jnp.float64)
  with jax.enable_x64(True):
    params = transformer.init_params(model, jax.random.key(0), SEQ_LEN)
    # Away from the initialisation's exact ones and zeros (the norms).
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten([np.asarray(
        x + 0.1 * jax.random.normal(k, x.shape, x.dtype))
                                for x, k in zip(leaves, keys)])
  loss = transformer.make_loss_fn(model, transformer.tokens_per_example(data))
  return model, params, data, loss


def whole_set_hessian(gpt):
  """``[n, n]``: `jax.hessian` of the mean per-token loss over all real
  tokens of the set (written here, not `make_loss_fn`'s weighting), as a sum
  over chunks of sequences."""
  model, params, data, _ = gpt
  with jax.enable_x64(True):
    flat, unravel = ravel_pytree(params)

    def token_loss_sum(flat, chunk):
      tokens = chunk['tokens']
      logits = model.apply({'params': unravel(flat)}, tokens[:, :-1])
      losses = optax.softmax_cross_entropy_with_integer_labels(
          logits, tokens[:, 1:])
      return jnp.sum(chunk['mask'].astype(losses.dtype) * losses)

    hessian = jax.jit(jax.hessian(token_loss_sum))
    total = sum(np.asarray(hessian(flat, {k: v[i:i + CHUNK]
                                          for k, v in data.items()}))
                for i in range(0, NUM_SEQS, CHUNK))
    return total / data['mask'].astype(np.float64).sum()


@pytest.fixture(scope='module')
def gpt():
  return problem()


@pytest.fixture(scope='module')
def dense_hessian(gpt):
  return whole_set_hessian(gpt)


def _operator(layout, gpt):
  _, params, data, loss = gpt
  shape, names = ((8,), ('fsdp',)) if layout == 'fsdp8' else (
      (4, 2), ('fsdp', 'data'))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(shape), names)
  params = jax.device_put(params, sd.fsdp_shardings(params, mesh))
  return sd.sharded_hvp_fn(loss, params, data, batch_size=BATCH[layout])


def _split_everywhere(tree, shardings):
  """Every leaf of `tree` is split by its layout, and each device holds only
  its slice: ``leaf.size / (devices the leaf is split over)`` entries."""
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    axes = [a for entry in s.spec if entry is not None
            for a in (entry if isinstance(entry, tuple) else (entry,))]
    split = int(np.prod([s.mesh.shape[a] for a in axes]))
    assert split > 1, (x.shape, s.spec)
    assert len(x.addressable_shards) == 8
    for shard in x.addressable_shards:
      assert shard.data.size * split == x.size, (x.shape, shard.data.shape)


def _numpy_lanczos(h, start, order):
  """``[order, order]``: Lanczos on the dense `h` from the unit `start`, with
  two Gram-Schmidt passes against the whole basis at every step."""
  basis = np.zeros((order + 1, start.size))
  basis[0] = start
  alphas, betas = np.zeros(order), np.zeros(order)
  for j in range(order):
    w = h @ basis[j]
    alphas[j] = basis[j] @ w
    w = w - alphas[j] * basis[j] - (betas[j - 1] * basis[j - 1] if j else 0)
    for _ in range(2):
      w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
    betas[j] = np.linalg.norm(w)
    basis[j + 1] = w / betas[j]
  return np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_products_are_the_dense_hessian_and_no_device_holds_a_leaf(
    gpt, dense_hessian, layout):
  _, params, _, _ = gpt
  with jax.enable_x64(True):
    op = _operator(layout, gpt)
    _split_everywhere(op.params, op.shardings)
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(2)
    for _ in range(2):
      v = rng.normal(size=flat.size)
      hv = op(jax.device_put(unravel(v), op.shardings))
      _split_everywhere(hv, op.shardings)
      want = dense_hessian @ v
      got = np.asarray(ravel_pytree(hv)[0])
      assert np.max(np.abs(got - want)) <= 1e-10 * np.max(np.abs(want))


# Two compilations of the sharded Lanczos loop: 72 s of this file's 144 s
# with the 2 cores shared four ways (the products' tests: the rest).
@pytest.mark.slow
def test_sharded_lanczos_is_the_replicated_dense_run(gpt, dense_hessian):
  # The replicated reference: Lanczos on the whole dense Hessian, held on
  # one device, from the start vectors that `sharded_lanczos` documents.
  _, params, _, _ = gpt
  key = jax.random.key(7)
  with jax.enable_x64(True):
    runs = {layout: sd.sharded_lanczos(_operator(layout, gpt), ORDER, key,
                                       num_draws=DRAWS).tridiag
            for layout in LAYOUTS}
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
    starts = [np.asarray(ravel_pytree(tree_recurrence.start_vector(
        k, like, jnp.float64, 'gaussian'))[0])
              for k in jax.random.split(key, DRAWS)]
  dense = np.stack([_numpy_lanczos(dense_hessian, s, ORDER) for s in starts])
  scale = np.max(np.abs(dense))
  for layout, tridiag in runs.items():
    assert tridiag.shape == (DRAWS, ORDER, ORDER)
    assert np.max(np.abs(tridiag - dense)) <= 1e-10 * scale, layout
  # The top Ritz value has converged to the largest eigenvalue (eigh).
  top = np.linalg.eigvalsh(dense_hessian)[-1]
  ritz = np.linalg.eigvalsh(runs['fsdp4xdata2'])[:, -1]
  np.testing.assert_allclose(ritz, top, rtol=1e-6)
