"""XLA's count of floating-point operations in the programs of a Hessian run.

The count is XLA's HLO cost analysis of the lowered (not yet optimised)
program, from shapes alone: no data, no device time, the same number on every
backend. `benchmarks.accelerator` prints it next to its times, and
`--flops_only` prints only it. A multiply-add counts 2.
"""

import functools

import jax

import spectral_density as sd
from benchmarks import fashion_mlp


def _shapes(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _flops(fn, *args) -> float:
  """XLA's count of floating-point operations in jit(fn)(*args)."""
  cost = jax.jit(fn).lower(*_shapes(args)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def flop_counts(train_loss, train_batch, hessian_loss, hessian_batch, params,
                draws) -> dict:
  """FLOPs per example of one batch's programs.

  Args:
    train_loss, train_batch: the training loss and one batch of it
      (arrays or `jax.ShapeDtypeStruct`s; only shapes are used).
    hessian_loss, hessian_batch: the same for the Hessian's products.
    params: the parameters (arrays or shapes).
    draws: vectors of the block product (1: not counted).

  Returns:
    {'train_step', 'gradient', 'hv', 'hv_per_draw'}: FLOPs per example of
    an SGD-momentum step, of `grad` and of `sd.hvp` (`jvp` of `grad`) on the
    Hessian batch, and of `vmap(sd.hvp)` over `draws` vectors divided by
    `draws` (None for one draw).
  """
  tx, step = fashion_mlp.sgd_momentum_step(train_loss)
  opt_state = jax.eval_shape(tx.init, _shapes(params))
  n_train = len(jax.tree.leaves(train_batch)[0])
  n_hessian = len(jax.tree.leaves(hessian_batch)[0])
  product = functools.partial(sd.hvp, hessian_loss)
  out = {
      'train_step': _flops(step, params, opt_state, train_batch) / n_train,
      'gradient': _flops(jax.grad(hessian_loss), params,
                         hessian_batch) / n_hessian,
      'hv': _flops(product, params, hessian_batch, params) / n_hessian,
      'hv_per_draw': None}
  if draws > 1:
    block = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((draws, *x.shape), x.dtype), params)
    out['hv_per_draw'] = _flops(
        jax.vmap(product, in_axes=(None, None, 0)), params, hessian_batch,
        block) / n_hessian / draws
  return out
