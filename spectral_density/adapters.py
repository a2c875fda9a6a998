"""Models as the library takes them: ``loss(params, batch)`` and `params`.

Every function of this library differentiates a pure ``loss(params, batch)``
with respect to a pytree of arrays `params`. Flax NNX and Equinox models are
objects that hold their parameters next to other state (random-number
streams, batch statistics, static fields), and a linen model's variables hold
collections other than 'params'; each helper here separates the parameters
from the rest, fixes the rest, and returns ``(loss, params)``:

  loss, params = adapters.nnx_loss(model, loss_fn)
  op, _, _ = sd.get_hvp_fn(loss, params, dataset, batch_size=...)

`loss_fn(model, batch) -> []` is the user's loss of a callable model.

Two choices a Hessian needs and a training loop does not:

* Dropout is off by default (`deterministic=True`). Left on, the mask is
  drawn from a key fixed when the loss is built, so every product uses the
  same mask: the Hessian of one sub-network (for an MLP with dropout 0.5, H v
  43% off the dropout-free one), a fixed, symmetric operator that
  `check_operator` cannot tell from the right one. A loss whose mask changes
  between calls is not a fixed operator at all; `check_operator`'s
  repeatability check reports that.
* Batch norm: `batch_stats='batch'` (train mode) normalises each batch by
  its own statistics, and the Hessian is that of the per-batch-normalised
  loss (the statistics are functions of the parameters and are
  differentiated); 'running' (eval mode) normalises by the stored running
  averages, constants. The running averages are never updated.

Flax and Equinox are imported inside the helpers: the library itself needs
neither.
"""

import importlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

BATCH_STATS = ('batch', 'running')


def _require(module):
  try:
    return importlib.import_module(module)
  except ImportError as e:  # pragma: no cover (both are test dependencies)
    raise ImportError(f'{module} is needed for this adapter: pip install '
                      f'{module.split(".")[0]}') from e


def _check(loss_fn, batch_stats):
  if not callable(loss_fn):
    raise TypeError(f'loss_fn: must be callable (model, batch) -> scalar, '
                    f'got {type(loss_fn).__name__}')
  if batch_stats not in BATCH_STATS:
    raise ValueError(f'batch_stats: must be one of {BATCH_STATS}, got '
                     f'{batch_stats!r}')


def nnx_loss(model: Any, loss_fn: Callable[[Any, Any], Any], *,
             batch_stats: str = 'batch',
             deterministic: bool = True) -> tuple[Callable, Any]:
  """``(loss(params, batch), params)`` of a Flax NNX module.

  `params` is the `nnx.State` of the module's `nnx.Param` variables (a pytree
  of arrays). Everything else (batch statistics, random-number streams) is
  fixed at its current value: `nnx.split(model)` whole would put the
  random-number keys among the parameters ("Cannot determine dtype of
  key<fry>"). Each call rebuilds the module with `nnx.merge(..., copy=True)`,
  so batch norm in train mode may write its statistics inside the traced
  loss (without the copy it raises `TraceContextError`); the writes are
  dropped. The user's module is not modified (`nnx.view`).

  Args:
    model: an `nnx.Module`.
    loss_fn: ``loss_fn(model, batch) -> []``.
    batch_stats: 'batch' (train mode: `use_running_average=False`) or
      'running' (eval mode: True), on every module with that attribute.
    deterministic: dropout (every module with a `deterministic` attribute)
      off; False keeps the module's setting (see the module docstring).

  Returns:
    ``(loss, params)``: ``loss(params, batch) -> []`` and the `nnx.State`
    of the module's `nnx.Param` variables.

  Raises:
    TypeError: `model` not an `nnx.Module`, `loss_fn` not callable.
    ValueError: `batch_stats` not 'batch' or 'running'.
    ImportError: Flax not installed.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import spectral_density as sd
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> loss_fn = lambda m, batch: jnp.mean((m(batch[0]) - batch[1]) ** 2)
    >>> loss, params = sd.nnx_loss(model, loss_fn)
    >>> [x.shape for x in jax.tree.leaves(params)]        # bias, kernel
    [(1,), (2, 1)]
    >>> batch = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
    >>> bool(loss(params, batch) == loss_fn(model, batch))
    True
  """
  nnx = _require('flax.nnx')
  _check(loss_fn, batch_stats)
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model: must be an nnx.Module, got '
                    f'{type(model).__name__}')
  attributes = {'use_running_average': batch_stats == 'running'}
  if deterministic:
    attributes['deterministic'] = True
  model = nnx.view(model, raise_if_not_found=False, **attributes)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Batch statistics are float32 in `nnx.BatchNorm` whatever the parameters'
  # dtype; float64 parameters would write float64 statistics into them in
  # train mode (a JAX FutureWarning). Widened exactly, never narrowed.
  widest = jnp.result_type(*[x.dtype for x in jax.tree.leaves(params)
                             if jnp.issubdtype(x.dtype, jnp.floating)] or
                           [jnp.float32])
  rest = jax.tree.map(
      lambda x: (x.astype(jnp.promote_types(x.dtype, widest))
                 if jnp.issubdtype(x.dtype, jnp.floating) else x), rest)

  def loss(params, batch):
    return loss_fn(nnx.merge(graphdef, params, rest, copy=True), batch)
  return loss, params


def equinox_loss(model: Any, loss_fn: Callable[..., Any], *,
                 state: Any = None, batch_stats: str = 'batch',
                 deterministic: bool = True) -> tuple[Callable, Any]:
  """``(loss(params, batch), params)`` of an Equinox module.

  `params` is the module's floating-point arrays (`eqx.partition` with
  `eqx.is_inexact_array`; the other leaves are None), the rest static; each
  call puts them back together with `eqx.combine`.

  Args:
    model: an `eqx.Module`.
    loss_fn: ``loss_fn(model, batch) -> []``, or with `state` given
      ``loss_fn(model, state, batch) -> []`` (Equinox's stateful layers, such
      as `eqx.nn.BatchNorm`, take and return an `eqx.nn.State`; the state
      returned is dropped).
    state: the `eqx.nn.State` of `eqx.nn.make_with_state`, or None.
    batch_stats: 'batch' (`eqx.nn.BatchNorm(inference=False)`: statistics of
      the batch, which `loss_fn` vmaps with the layer's `axis_name`) or
      'running' (inference=True).
    deterministic: `eqx.nn.Dropout` off (inference=True); False keeps each
      layer's setting.

  Returns:
    ``(loss, params)``: ``loss(params, batch) -> []`` and the module's
    floating-point arrays (a module of the same structure, None elsewhere).

  Raises:
    TypeError: `model` not an `eqx.Module`, `loss_fn` not callable.
    ValueError: `batch_stats` not 'batch' or 'running'.
    ImportError: Equinox not installed.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import equinox as eqx
    >>> import spectral_density as sd
    >>> model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    >>> loss_fn = lambda m, b: jnp.mean((jax.vmap(m)(b[0]) - b[1]) ** 2)
    >>> loss, params = sd.equinox_loss(model, loss_fn)
    >>> [x.shape for x in jax.tree.leaves(params)]        # weight, bias
    [(1, 2), (1,)]
    >>> batch = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
    >>> bool(loss(params, batch) == loss_fn(model, batch))
    True
  """
  eqx = _require('equinox')
  _check(loss_fn, batch_stats)
  if not isinstance(model, eqx.Module):
    raise TypeError(f'model: must be an eqx.Module, got '
                    f'{type(model).__name__}')
  model = _set_inference(eqx, model, eqx.nn.BatchNorm,
                         batch_stats == 'running')
  if deterministic:
    model = _set_inference(eqx, model, eqx.nn.Dropout, True)
  params, static = eqx.partition(model, eqx.is_inexact_array)

  if state is None:
    def loss(params, batch):
      return loss_fn(eqx.combine(params, static), batch)
  else:
    def loss(params, batch):
      return loss_fn(eqx.combine(params, static), state, batch)
  return loss, params


def _set_inference(eqx, model, layer_type, value):
  """`model` with `inference=value` on every layer of `layer_type`."""
  is_layer = lambda x: isinstance(x, layer_type)

  def layers(tree):
    return [x for x in jax.tree.leaves(tree, is_leaf=is_layer)
            if is_layer(x)]
  found = layers(model)
  if not found:
    return model
  return eqx.tree_at(layers, model, [
      eqx.tree_at(lambda l: l.inference, layer, value) for layer in found])


def linen_loss(module: Any, variables: Mapping[str, Any],
               loss_fn: Callable[[Any, Any], Any],
               **apply_kwargs) -> tuple[Callable, Any]:
  """``(loss(params, batch), params)`` of a linen module and its variables.

  `params` is ``variables['params']``; the other collections (batch
  statistics, ...) are fixed, and any the module writes (batch norm in
  training) are made mutable and the writes dropped.

  Args:
    module: a `flax.linen.Module`.
    variables: its variables, {'params': ..., other collections}.
    loss_fn: ``loss_fn(model, batch) -> []``, `model(*args, **kwargs)` being
      ``module.apply(variables, *args, **apply_kwargs, **kwargs)``.
    **apply_kwargs: passed to every apply: how the module is told train or
      eval mode (e.g. ``train=True``: statistics of the batch; ``train=False``:
      running averages), and that dropout is off (e.g.
      ``deterministic=True``); module-specific, so the helper cannot choose.

  Returns:
    ``(loss, params)``: ``loss(params, batch) -> []`` and
    ``variables['params']``.

  Raises:
    TypeError: `module` not a `flax.linen.Module`, `loss_fn` not callable.
    ValueError: `variables` without a 'params' collection.
    ImportError: Flax not installed.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import spectral_density as sd
    >>> module = nn.Dense(1)
    >>> variables = module.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> loss_fn = lambda model, b: jnp.mean((model(b[0]) - b[1]) ** 2)
    >>> loss, params = sd.linen_loss(module, variables, loss_fn)
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (1,), 'kernel': (2, 1)}
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> bool(loss(params, (x, y)) == jnp.mean(module.apply(variables, x) ** 2))
    True
  """
  nn = _require('flax.linen')
  if not isinstance(module, nn.Module):
    raise TypeError(f'module: must be a flax.linen.Module, got '
                    f'{type(module).__name__}')
  if not callable(loss_fn):
    raise TypeError(f'loss_fn: must be callable (model, batch) -> scalar, '
                    f'got {type(loss_fn).__name__}')
  if 'params' not in variables:
    raise ValueError(f'variables: no \'params\' collection (has '
                     f'{sorted(variables)})')
  rest = {k: v for k, v in variables.items() if k != 'params'}

  def loss(params, batch):
    def model(*args, **kwargs):
      out = module.apply({'params': params, **rest}, *args, **apply_kwargs,
                         **kwargs, mutable=list(rest))
      return out[0]
    return loss_fn(model, batch)
  return loss, variables['params']
