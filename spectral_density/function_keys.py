"""One function object per computation, so that compiled programs are reused.

Compiled programs are cached on the function objects they trace (losses,
matvecs). A training run that builds a new loss closure at every snapshot
would otherwise compile again each time and keep every closure, with its
programs, alive. `canonical(fn)` returns the first function seen that computes
the same thing: the same code, globals and defaults, and closure cells holding
the same objects (nested functions compared the same way, recursively). The
table is a bounded LRU, so it keeps at most `MAX_FUNCTIONS` of them alive.

A closure over new arrays is a new computation (the arrays are compiled in as
constants), so it gets its own entry; pass such values through the parameters
or the batch to reuse one program. A closure over a mutable container (a dict,
a list, a numpy array: unhashable) is never shared, since its contents may
have changed in place since a program was compiled from it.
"""

import collections
import functools
import types

import jax

MAX_FUNCTIONS = 32
# Caches of compiled pieces per batch function: each loss has three kinds
# (product, gradient, loss) in two dtypes (its own, float64).
MAX_BATCH_FNS = 6 * MAX_FUNCTIONS
_MAX_DEPTH = 8  # recursive closures stop here and compare by identity
_SCALARS = (bool, int, float, complex, str, bytes, type(None))

_table = collections.OrderedDict()


class _Unshared(Exception):
  """A closure over a tracer (valid only inside its own trace) or over a
  mutable container."""


def _value_key(x, depth):
  if isinstance(x, jax.core.Tracer):
    raise _Unshared()
  if isinstance(x, _SCALARS):
    return ('value', type(x), x)
  if isinstance(x, tuple):
    return ('tuple',) + tuple(_value_key(y, depth) for y in x)
  if depth < _MAX_DEPTH and isinstance(
      x, (types.FunctionType, functools.partial)):
    return function_key(x, depth + 1)
  if not isinstance(x, jax.Array):  # immutable, though unhashable
    try:
      hash(x)
    except TypeError as e:  # mutable: its contents may change in place
      raise _Unshared() from e
  return ('id', id(x))  # kept alive by the canonical function that holds it


def _cell_key(cell, depth):
  try:
    return _value_key(cell.cell_contents, depth)
  except ValueError:  # an empty cell (a name not yet bound)
    return ('empty',)


def function_key(fn, depth=0):
  """Hashable key of what `fn` computes (see module docstring)."""
  if isinstance(fn, functools.partial):
    return ('partial', _value_key(fn.func, depth), _value_key(fn.args, depth),
            tuple(sorted((k, _value_key(v, depth))
                         for k, v in fn.keywords.items())))
  if isinstance(fn, types.FunctionType):
    return ('function', fn.__code__, id(fn.__globals__),
            _value_key(fn.__defaults__, depth),
            _value_key(tuple(sorted((fn.__kwdefaults__ or {}).items())),
                       depth),
            tuple(_cell_key(c, depth) for c in fn.__closure__ or ()))
  if isinstance(fn, tuple):
    return ('tuple',) + tuple(function_key(f, depth) for f in fn)
  return ('id', id(fn))


def canonical(fn):
  """The first live function (or tuple of functions) with `fn`'s key."""
  try:
    key = function_key(fn)
  except _Unshared:
    return fn
  if key[0] == 'id':  # nothing to share: keep no reference
    return fn
  if key in _table:
    _table.move_to_end(key)
    return _table[key]
  _table[key] = fn
  if len(_table) > MAX_FUNCTIONS:
    _table.popitem(last=False)
  return fn
