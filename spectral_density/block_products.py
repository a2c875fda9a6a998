"""Curvature products restricted to parameter blocks, one block per row.

`block_spectra` runs Lanczos on the diagonal blocks ``H_bb``: a row of the
batch of Lanczos vectors is zero outside its block, and only the block's part
of the product is kept. Through the full product, such a row still pays for
the tangents and gradients of every parameter; here the product of a block's
rows is `jvp` of `grad` of the loss as a function of the block's leaves only,
so the output layer's block no longer pays for the input layer's weight
gradient. Every block's rows share one forward pass of that restricted loss.

The rows of a ``[k, n]`` batch repeat the pattern `row_blocks`: row ``i``
belongs to ``row_blocks[i % len(row_blocks)]``, a tuple of leaf indices (in
`jax.tree.flatten` order, the `ravel_pytree` order) or None for the whole
parameter vector. A batch whose size is not a multiple of the pattern (a
single probe vector, say) gets the full product, which is what the restricted
one equals on a block's rows after the Lanczos projection.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spectral_density import batch_functions
from spectral_density import function_keys
from spectral_density import hessian
from spectral_density import precision


def _restricted_product(curvature, loss, leaves, treedef, leaf_ids):
  """``product(sub_params, batch, sub_v)`` of the curvature of the loss as a
  function of the leaves `leaf_ids` (the others fixed at `leaves`)."""
  def merge(sub):
    full = list(leaves)
    for i, x in zip(leaf_ids, sub):
      full[i] = x
    return jax.tree.unflatten(treedef, full)
  if curvature == 'ggn':
    model_fn, output_loss = loss
    return functools.partial(hessian.ggn_vp,
                             lambda s, b: model_fn(merge(s), b), output_loss)
  product = hessian.hvp if curvature == 'hessian' else hessian.fisher_vp
  return functools.partial(product, lambda s, b: loss(merge(s), b))


@functools.lru_cache(maxsize=function_keys.MAX_BATCH_FNS)
def batch_function(curvature, loss, row_blocks, compute_dtype=None,
                   matmul_precision=precision.DEFAULT_MATMUL_PRECISION):
  """``f(params, batch, v [k, n]) -> [k, n]``, cached (one compiled program
  per loss and pattern); see the module doc.

  Args:
    curvature: ``'hessian'``, ``'ggn'`` or ``'fisher'``.
    loss: as `hessian.curvature_fns`.
    row_blocks: tuple over the pattern's rows of a tuple of leaf indices, or
      None (the full product).
    compute_dtype, matmul_precision: as `batch_functions.batch_function`.
  """
  full = batch_functions.batch_function(curvature, loss, 'product',
                                        matmul_precision=matmul_precision)

  def product(params, batch, v):
    params = batch_functions.cast_floating(params, compute_dtype)
    batch = batch_functions.cast_floating(batch, compute_dtype)
    k, n = v.shape
    period = len(row_blocks)
    if k % period:
      return full(params, batch, v)
    leaves, treedef = jax.tree.flatten(params)
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    dtype = jnp.result_type(*leaves)
    rows = v.reshape(k // period, period, n)
    outs = []
    for b, leaf_ids in enumerate(row_blocks):
      x = rows[:, b]                                      # [k / period, n]
      if leaf_ids is None:
        outs.append(full(params, batch, x))
        continue
      fn = _restricted_product(curvature, loss, leaves, treedef, leaf_ids)
      sub = [leaves[i] for i in leaf_ids]
      sub_v = [x[:, offsets[i]:offsets[i + 1]].reshape(
          (-1,) + leaves[i].shape).astype(leaves[i].dtype) for i in leaf_ids]
      prods = jax.vmap(lambda u: fn(sub, batch, u))(sub_v)
      by_leaf = dict(zip(leaf_ids, prods))
      outs.append(jnp.concatenate([
          by_leaf[i].reshape(x.shape[0], -1).astype(dtype) if i in by_leaf
          else jnp.zeros((x.shape[0], leaves[i].size), dtype)
          for i in range(len(leaves))], axis=1))
    return jnp.stack(outs, axis=1).reshape(k, n)

  return precision.traced_under(product, matmul_precision, compute_dtype)
