"""The optimiser's view of the curvature: ``P^-1/2 A P^-1/2`` for a diagonal
preconditioner ``P``.

A diagonal optimiser (Adam, RMSProp, Adagrad) steps along ``-P^-1 g``; in the
coordinates ``u = P^1/2 w`` that step is plain gradient descent on a loss of
curvature ``P^-1/2 A P^-1/2`` (``A``: Hessian, GGN or Fisher). Its spectrum,
not ``A``'s, sets the step sizes the optimiser can take. For Adam,
``P = sqrt(nu_hat) + eps`` with ``nu_hat`` the bias-corrected second-moment
estimate of the optax state (`adam_preconditioner`).

`preconditioned(op, p)` wraps any operator of this library (resident or
streamed, every curvature, block-restricted rows for `block_spectra`) or a
plain function; a diagonal commutes with the block projections, so the
diagonal blocks of the preconditioned matrix are ``P_b^-1/2 A_bb P_b^-1/2``.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from spectral_density import operators


def _find_adam_states(tree):
  """Nodes of an optimiser state with Adam's fields (``count``, ``mu``,
  ``nu``: optax's `ScaleByAdamState`), found without importing optax."""
  is_adam = lambda x: all(hasattr(x, f) for f in ('count', 'mu', 'nu'))
  return [x for x in jax.tree.leaves(tree, is_leaf=is_adam) if is_adam(x)]


def adam_preconditioner(opt_state, *, b2=0.999, eps=1e-8,
                        bias_correction=True):
  """Adam's diagonal ``P = sqrt(nu_hat) + eps`` as a flat vector.

  Args:
    opt_state: an optax state holding one `ScaleByAdamState` (from
      `optax.adam`, `optax.adamw`, or a chain containing them).
    b2: the second-moment decay the optimiser was built with (optax keeps it
      in the update function, not in the state).
    eps: the epsilon added to ``sqrt(nu_hat)`` (optax's ``eps``).
    bias_correction: divide ``nu`` by ``1 - b2^count`` as optax does.

  Returns:
    ``[num_params]`` float array in `ravel_pytree` order of the parameters.

  Raises:
    ValueError: no or several Adam states, a zero step count, `b2` outside
      ``(0, 1)``, a negative `eps`, or a non-positive diagonal.

  Example:
    After one step ``nu_hat = g^2``, so the diagonal is ``|g| + eps``:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import spectral_density as sd
    >>> params = {'w': jnp.array([1., 2.])}
    >>> opt = optax.adam(1e-3)
    >>> state = opt.init(params)
    >>> sd.adam_preconditioner(state)
    Traceback (most recent call last):
    ...
    ValueError: opt_state: Adam has taken no step (count = 0), ...
    >>> _, state = opt.update({'w': jnp.array([0.3, -4.])}, state)
    >>> sd.adam_preconditioner(state).round(6)
    array([0.3, 4. ])
  """
  states = _find_adam_states(opt_state)
  if len(states) != 1:
    raise ValueError(f'opt_state: expected one Adam state (count, mu, nu), '
                     f'found {len(states)}.')
  state = states[0]
  if not 0 < b2 < 1:
    raise ValueError(f'b2: must be in (0, 1), got {b2}.')
  if not eps >= 0:
    raise ValueError(f'eps: must be >= 0, got {eps}.')
  nu = np.asarray(ravel_pytree(state.nu)[0], np.float64)
  if bias_correction:
    count = int(np.asarray(state.count))
    if count < 1:
      raise ValueError('opt_state: Adam has taken no step (count = 0), so its '
                       'bias-corrected second moment is undefined.')
    nu = nu / (1.0 - b2 ** count)
  diagonal = np.sqrt(nu) + eps
  if not np.all(diagonal > 0):
    raise ValueError('opt_state: the preconditioner sqrt(nu_hat) + eps has '
                     'zero entries; pass eps > 0.')
  return diagonal


def _scale(diagonal, dim):
  diagonal = np.asarray(diagonal, np.float64)
  if diagonal.shape != (dim,):
    raise ValueError(f'diagonal: expected shape [{dim}], got '
                     f'{diagonal.shape}.')
  if not np.all(np.isfinite(diagonal)) or not np.all(diagonal > 0):
    raise ValueError('diagonal: must be finite and > 0.')
  return 1.0 / np.sqrt(diagonal)


class PreconditionedOperator:
  """``v -> s * A(s * v)``, ``s = P^-1/2``, around a library operator ``A``:
  the same contract (`operators.Operator`; `PreconditionedRunner` for a
  resident one, a `ProgramRunner`), so `slq`, `lanczos_draws` and
  `block_spectra_of` run it as they run ``A``."""

  def __init__(self, inner, scale):
    self.inner = inner
    self.scale = scale                       # numpy float64 [num_params]
    self.num_params = inner.num_params
    self.dtype = inner.dtype
    self.curvature = inner.curvature
    self.devices = inner.devices
    self.traceable = inner.traceable
    self.accepts_batches = inner.accepts_batches

  @property
  def shape(self):
    return (self.num_params, self.num_params)

  def _s(self, dtype):
    return jnp.asarray(self.scale, dtype)

  def __call__(self, v):
    v = jnp.asarray(v)
    s = self._s(v.dtype)
    return s * self.inner(s * v)

  def astype(self, dtype):
    op = copy.copy(self)
    op.inner = self.inner.astype(dtype)
    op.dtype = op.inner.dtype
    return op

  def restrict_rows(self, row_blocks):
    op = copy.copy(self)
    op.inner = self.inner.restrict_rows(row_blocks)
    return op


class PreconditionedRunner(PreconditionedOperator):
  """`PreconditionedOperator` of a resident operator: Lanczos hands it the
  whole program, whose products it scales inside the inner operator's own
  data-parallel program (one compiled loop, as unpreconditioned)."""

  def run(self, program, *args, **kwargs):
    """`ProgramRunner.run` of the inner operator with scaled products."""
    def scaled_program(reduce, *a):
      def scaled_reduce(v):
        if v is None:
          return reduce(v)
        s = self._s(v.dtype)
        return s * reduce(s * v)
      return program(scaled_reduce, *a)
    return self.inner.run(scaled_program, *args, **kwargs)

  def run_sharded(self, program, sharded_args, replicated_args, **kwargs):
    raise ValueError("basis: 'sharded' is not supported for a preconditioned "
                     "operator; use basis='device' or 'host'.")


def preconditioned(matvec, diagonal):
  """The operator ``P^-1/2 A P^-1/2`` of a diagonal preconditioner.

  Args:
    matvec: an operator of `get_hvp_fn` (any curvature; resident or
      streamed; also after `restrict_rows`), or a function ``[n] -> [n]``.
    diagonal: ``[n]`` positive entries of ``P`` (e.g.
      `adam_preconditioner`), in `ravel_pytree` order.

  Returns:
    An operator of the same kind: `PreconditionedOperator` for a library
    operator, a function ``[n] -> [n]`` otherwise.

  Raises:
    TypeError: `matvec` neither an operator nor callable.
    ValueError: `diagonal` not ``[n]`` (the operator's size), not finite, or
      not > 0.

  Example:
    ``A = diag(4, 16)`` preconditioned by its own diagonal is the identity:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> d = jnp.array([4., 16.])
    >>> op = sd.preconditioned(lambda v: d * v, np.array([4., 16.]))
    >>> op(jnp.array([1., 3.]))
    Array([1., 3.], dtype=float32)
    >>> sd.preconditioned(lambda v: d * v, np.array([4., 0.]))
    Traceback (most recent call last):
    ...
    ValueError: diagonal: must be finite and > 0.
  """
  if isinstance(matvec, operators.Operator):
    # A resident operator runs Lanczos programs; a streamed one is called.
    kind = (PreconditionedRunner if isinstance(matvec, operators.ProgramRunner)
            else PreconditionedOperator)
    return kind(matvec, _scale(diagonal, matvec.num_params))
  if not callable(matvec):
    raise TypeError(f'matvec: expected an operator or a function, got '
                    f'{type(matvec).__name__}.')
  scale = np.asarray(diagonal, np.float64)
  if scale.ndim != 1:
    raise ValueError(f'diagonal: expected [n], got shape {scale.shape}.')
  s = _scale(scale, scale.size)

  def product(v):
    v = jnp.asarray(v)
    sv = jnp.asarray(s, v.dtype)
    return sv * matvec(sv * v)

  return product
