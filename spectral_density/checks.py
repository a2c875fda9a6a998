"""Argument checks shared by the public functions.

Each raises a `TypeError` (wrong kind of value) or `ValueError` (right kind,
impossible value) whose message starts with the argument's name, so that a
bad input never surfaces as a traceback from inside numpy, scan or XLA.
"""

import numbers

import numpy as np


def positive_int(name, value, minimum=1):
  """`value` as an int ``>= minimum``; bools and non-integers are refused."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (numbers.Integral, np.integer)):
    raise TypeError(f'{name}: must be an int >= {minimum}, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name}: must be >= {minimum}, got {value}.')
  return int(value)


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
