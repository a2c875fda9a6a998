"""Argument checks shared by the public functions.

A bad argument gets a `ValueError` or `TypeError` that names it, here, before
any tracing: never a traceback from inside XLA, a scan or numpy.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def positive_int(name, value, minimum=1):
  """`value` as an int ``>= minimum``; bools and non-integers are refused."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (numbers.Integral, np.integer)):
    raise TypeError(f'{name}: must be an int >= {minimum}, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name}: must be >= {minimum}, got {value}.')
  return int(value)


def optional_int(name, value):
  """None, or a positive int."""
  return None if value is None else positive_int(name, value)


def positive_float(name, value, allow_zero=False):
  """`value` as a finite float ``> 0`` (``>= 0`` with `allow_zero`)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (numbers.Real, np.floating, np.integer)):
    raise TypeError(f'{name}: must be a real number, got {value!r}.')
  value = float(value)
  if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    bound = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'{name}: must be finite and {bound}, got {value}.')
  return value


def boolean(name, value):
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f'{name}: must be True or False, got {value!r}.')
  return bool(value)


def real_array(name, value, ndims, dtype=np.float64):
  """`value` as a finite real numpy array with one of the ranks `ndims`.

  Args:
    name: the argument's name, for the message.
    value: anything `np.asarray` takes; ragged nesting is refused.
    ndims: allowed numbers of dimensions.
    dtype: dtype of the returned array; None keeps a floating dtype and
      makes integers float64.

  Returns:
    The numpy array.
  """
  try:
    array = np.asarray(value)
  except ValueError as e:  # ragged nesting: "inhomogeneous shape"
    raise ValueError(f'{name}: arrays of different shapes ({e}).') from None
  if array.dtype == object or not (np.issubdtype(array.dtype, np.floating) or
                                   np.issubdtype(array.dtype, np.integer)):
    raise TypeError(f'{name}: must be a real array, got dtype {array.dtype}.')
  if array.ndim not in ndims:
    raise ValueError(f'{name}: must have {" or ".join(map(str, ndims))} '
                     f'dimensions, got shape {array.shape}.')
  if array.size == 0:
    raise ValueError(f'{name}: is empty (shape {array.shape}).')
  if dtype is None:
    floating = np.issubdtype(array.dtype, np.floating)
    dtype = array.dtype if floating else np.float64
  array = array.astype(dtype, copy=False)
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name}: has non-finite values (NaN or inf).')
  return array


def check_sizes(matvec, dim, order, num_draws):
  """``(dim, order, num_draws)`` as ints; `dim` must match an operator."""
  dim = positive_int('dim', dim)
  if (isinstance(order, (bool, np.bool_)) or
      not isinstance(order, (int, np.integer))):
    raise TypeError(f'order: must be an int, got {order!r} '
                    f'({type(order).__name__}).')
  if order < 1:  # order > dim is fine: Lanczos breaks down by step dim
    raise ValueError(f'order: must be >= 1, got {order}.')
  num_params = getattr(matvec, 'num_params', None)
  if num_params is not None and num_params != dim:
    raise ValueError(f'dim: {dim} does not match the operator, which has '
                     f'num_params = {num_params}.')
  return dim, int(order), positive_int('num_draws', num_draws)


def check_matvec(matvec, dim, dtype):
  """A plain matvec must map a ``[dim]`` vector of `dtype` to a real
  floating ``[dim]`` vector (checked by tracing it once, no product)."""
  if not callable(matvec):
    raise TypeError(f'matvec: must be callable, got {type(matvec).__name__}.')
  try:
    out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((dim,), dtype))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'dim: matvec fails on a vector of shape [dim] = [{dim}] ({dtype}): '
        f'is dim the size of the operator? ({type(e).__name__}: {e})') from e
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise TypeError('matvec: must return one array [dim], got '
                    f'{jax.tree.structure(out)}.')
  if out.shape != (dim,):
    raise ValueError(f'matvec: must return shape [dim] = [{dim}], got '
                     f'{list(out.shape)}.')
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f'matvec: must return real floating values, got '
                    f'{out.dtype}.')


def check_tol(tol, matvec_dtype):
  """The breakdown tolerance: default ``10 x eps``; a float in ``[0, 1)``."""
  if tol is None:
    return 10 * float(jnp.finfo(matvec_dtype).eps)
  if (isinstance(tol, (bool, np.bool_)) or
      not isinstance(tol, (int, float, np.integer, np.floating))):
    raise TypeError(f'tol: must be a float in [0, 1), got {tol!r}.')
  if not 0 <= tol < 1:
    raise ValueError(f'tol: must be a float in [0, 1), got {tol}.')
  return float(tol)


def check_masks(masks, num_draws, dim, dtype):
  """`projection_masks`: None, or ``[num_draws, dim]`` of 0/1 with a one in
  every row (values are checked unless traced)."""
  if masks is None:
    return None
  if not isinstance(masks, jax.core.Tracer):
    masks = np.asarray(masks)
    if masks.dtype == object or not np.issubdtype(masks.dtype, np.number):
      raise TypeError('projection_masks: must be a numeric array, got '
                      f'{masks.dtype}.')
  if tuple(masks.shape) != (num_draws, dim):
    raise ValueError(
        'projection_masks: must have shape [num_draws, dim] = '
        f'[{num_draws}, {dim}], got {list(masks.shape)}.')
  if not isinstance(masks, jax.core.Tracer):
    if not np.all((masks == 0) | (masks == 1)):
      raise ValueError('projection_masks: entries must be 0 or 1.')
    empty = np.flatnonzero(~masks.any(axis=1))
    if empty.size:
      raise ValueError(f'projection_masks: row {int(empty[0])} has no 1: '
                       'its draw would start from the zero vector.')
  return jnp.asarray(masks, dtype)


def check_loss_form(curvature, loss):
  """Raises if `loss` is not the form `curvature` needs (see `hessian`)."""
  if curvature == 'ggn':
    if not (isinstance(loss, tuple) and len(loss) == 2 and
            all(callable(f) for f in loss)):
      raise ValueError(
          "loss: curvature='ggn' needs the pair loss=(model_fn, output_loss), "
          'with model_fn(params, batch) -> outputs and output_loss(outputs, '
          f'batch) -> scalar, got {type(loss).__name__}.')
  elif not callable(loss):
    hint = (" (a pair (model_fn, output_loss) goes with curvature='ggn')"
            if isinstance(loss, tuple) else '')
    raise TypeError(f"loss: curvature={curvature!r} needs a function "
                    f'loss(params, batch), got {type(loss).__name__}{hint}.')


def check_batch_size(batch_size):
  """None (streamed datasets), or a positive int."""
  if batch_size is None:
    return
  if (isinstance(batch_size, (bool, np.bool_)) or
      not isinstance(batch_size, (numbers.Integral, np.integer))):
    raise TypeError(f'batch_size: must be a positive int, got {batch_size!r}.')
  if batch_size < 1:
    raise ValueError(f'batch_size: must be a positive int, got {batch_size}.')


def _leaf_dtype(leaf):
  """The dtype of an array-like leaf, or None for anything else."""
  if isinstance(leaf, (jax.Array, np.ndarray, np.generic,
                       jax.ShapeDtypeStruct)):
    return np.dtype(leaf.dtype)
  if isinstance(leaf, (bool, int, float, complex)):
    return np.asarray(leaf).dtype
  return None


# Flax collections of model state, not parameters (batch-norm statistics...).
_FLAX_STATE = ('batch_stats', 'population_stats', 'cache', 'intermediates')


def check_params(params, name='params'):
  """Every leaf of `params` must be a floating array: each entry is a
  direction of the Hessian, so an integer leaf (a step counter), a function
  (an Equinox module's activation) or any other object is refused, with its
  path. Batch-norm statistics are floating but are not parameters: pass them
  through the loss (a closure, or the batch), not in `params`."""
  if (hasattr(params, 'keys') and 'params' in params and
      any(k in params for k in _FLAX_STATE)):
    state = sorted(k for k in params if k in _FLAX_STATE)
    raise TypeError(
        f'{name}: holds the Flax collections {["params"] + state}: only '
        f"variables['params'] are Hessian directions; close over "
        f'{", ".join(state)} in the loss (model.apply({{"params": p, '
        f'**state}}, ...)) and pass variables["params"].')
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path) or '(the root)'
    dtype = _leaf_dtype(leaf)
    if dtype is None:
      hint = (' An Equinox module mixes arrays and functions: pass params, '
              'static = eqx.partition(model, eqx.is_inexact_array) and a loss '
              'that calls eqx.combine(params, static).'
              if callable(leaf) else '')
      raise TypeError(
          f'{name}: leaf {where} is a {type(leaf).__name__}, not an array: '
          f'every leaf of {name} is a Hessian direction.{hint}')
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'{name}: leaf {where} has dtype {dtype.name}: only floating leaves '
          'are Hessian directions. Pass integer state (a step counter) and '
          'statistics that are not trained (batch-norm running averages) '
          f'through the loss (a closure, or the batch), not in {name}.')


def check_rng_key(rng_key, name='rng_key'):
  """A PRNG key: a typed key (`jax.random.key`) or a raw ``uint32[2]`` one
  (`jax.random.PRNGKey`); an int seed is refused (naming `name`)."""
  dtype = getattr(rng_key, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return rng_key
  if (dtype is not None and np.dtype(dtype) == np.uint32 and
      tuple(np.shape(rng_key))[-1:] == (2,)):
    return rng_key
  raise TypeError(
      f'{name}: must be a PRNG key, e.g. jax.random.key({rng_key!r}) for a '
      f'seed, got {type(rng_key).__name__} {rng_key!r}.'
      if isinstance(rng_key, (int, np.integer)) else
      f'{name}: must be a PRNG key (jax.random.key(seed)), got '
      f'{type(rng_key).__name__}'
      f'{"" if dtype is None else " of dtype " + str(dtype)}.')
