"""Per-batch functions of a loss, flat and cached: products, gradient, loss.

`batch_function(curvature, loss, kind)` is ``f(params, batch, v) -> flat``:
the curvature product of a batch of vectors ``v [k, n]`` (vmapped, so the
draws share the forward pass), the flat gradient, or the mean loss. It is
cached on its arguments (the loss by identity, as `jax.jit`), so that every
operator of the same loss object shares one function object, hence one
compiled program (see `function_keys`).
"""

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from spectral_density import function_keys
from spectral_density import hessian
from spectral_density import precision


def _flat_fn(fn, kind):
  """Wraps a per-batch pytree function into ``f(params, batch, v) -> flat``.

  `v` is ``[k, n]`` (a batch of vectors, vmapped so the forward pass over the
  data is shared) or None for the gradient and the loss.
  """
  if kind == 'product':
    def product(params, batch, v):
      flat, unravel = ravel_pytree(params)
      one = lambda u: ravel_pytree(fn(params, batch, unravel(u.astype(flat.dtype))))[0]
      return jax.vmap(one)(v)
    return product
  if kind == 'gradient':
    return lambda params, batch, v: ravel_pytree(jax.grad(fn)(params, batch))[0]
  return lambda params, batch, v: fn(params, batch)


# Compiled programs are cached per batch function: a bounded number of losses
# (see `function_keys`), each with its three kinds and two dtypes.
@functools.lru_cache(maxsize=function_keys.MAX_BATCH_FNS)
def batch_function(curvature, loss, kind, compute_dtype=None,
                   matmul_precision=precision.DEFAULT_MATMUL_PRECISION):
  """``f(params, batch, v)`` for `kind` in product/gradient/loss, cached.

  `compute_dtype` (a dtype name, or None for the model's own): floating
  params and batch entries are cast to it inside, so that ``precision=
  'float64'`` computes the products in float64 without a second copy of the
  data on the devices. `matmul_precision`: the loss, its gradient and its
  products are traced under it (see `precision`).
  """
  product, mean_loss = hessian.curvature_fns(curvature, loss)
  fn = _flat_fn(product if kind == 'product' else mean_loss, kind)
  if compute_dtype is not None:
    inner = fn
    fn = lambda params, batch, v: inner(cast_floating(params, compute_dtype),
                                        cast_floating(batch, compute_dtype), v)
  # The computation's dtype is the parameters' (after the cast).
  return precision.traced_under(
      lambda params, batch, v: fn(params, batch, v), matmul_precision,
      compute_dtype)


def cast_floating(params, dtype):
  """Floating leaves of `params` (or of a batch) cast to `dtype`."""
  if dtype is None:
    return params
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      params)


@functools.lru_cache(maxsize=function_keys.MAX_BATCH_FNS)
def stream_single_fn(batch_fn, accum_dtype):
  """One streamed batch, weighted, compiled per (batch function, dtype)."""
  return jax.jit(lambda p, b, w, v: w * batch_fn(p, b, v).astype(accum_dtype))
