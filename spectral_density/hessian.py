"""Curvature-vector products of one batch: Hessian, Gauss-Newton, empirical Fisher.

Every product here is a pure function of `(params, batch, v)` with `v` a pytree
shaped like `params`; nothing is materialised beyond a few parameter-sized
pytrees, except in `full_hessian`, which is for small models only.

The three curvatures, for a loss that is the mean over the `B` examples of a
batch:

* ``'hessian'``: ``H = d^2 L / d params^2``; ``loss(params, batch) -> scalar``.
* ``'ggn'``: the Gauss-Newton matrix ``J^T H_out J`` with ``J`` the Jacobian of
  the model's outputs and ``H_out`` the Hessian of the loss in the outputs;
  ``loss`` is the pair ``(model_fn, output_loss)`` with
  ``model_fn(params, batch) -> outputs`` and ``output_loss(outputs, batch) ->
  scalar``.
* ``'fisher'``: the empirical Fisher ``(1/B) sum_i g_i g_i^T`` with ``g_i`` the
  gradient of example ``i``'s loss; ``loss(params, batch) -> [B]`` returns the
  per-example losses (their mean is the training loss).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree

from spectral_density import arguments

CURVATURES = ('hessian', 'ggn', 'fisher')
_NO_BATCH = object()  # `full_hessian(loss, params)`: the batch closed over


def _check_callable(name, fn):
  if not callable(fn):
    raise TypeError(f'{name}: must be callable, got {type(fn).__name__}.')


def _check_like_params(v, params):
  """Raises ValueError naming `v` unless it has the structure and shapes of
  `params` (static under `jit` and `vmap`, so it costs nothing there)."""
  v_def, p_def = jax.tree.structure(v), jax.tree.structure(params)
  if v_def != p_def:
    raise ValueError(f'v: must have the tree structure of params, {p_def}; '
                     f'got {v_def}.')
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(params)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(f'v: leaf shape {jnp.shape(a)} differs from the '
                       f'params leaf shape {jnp.shape(b)}.')


def hvp(loss, params, batch, v):
  """Hessian-vector product ``H v`` by forward-over-reverse (`jvp` of `grad`).

  Same name and signature as the original `hessian_computation.hvp`.

  Args:
    loss: ``loss(params, batch) -> scalar``, the mean loss over the batch.
    params: pytree of arrays, the point where the Hessian is taken.
    batch: any pytree the loss accepts.
    v: pytree with the structure and shapes of `params`.

  Returns:
    ``H v``, a pytree shaped like `params`.

  Raises:
    TypeError: `loss` is not callable.
    ValueError: `v` is not shaped like `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> loss = lambda p, batch: jnp.sum(batch * p['w'] ** 2)   # H = diag(2 batch)
    >>> sd.hvp(loss, {'w': jnp.ones(3)}, jnp.array([1., 2., 3.]),
    ...        {'w': jnp.ones(3)})
    {'w': Array([2., 4., 6.], dtype=float32)}
  """
  _check_callable('loss', loss)
  _check_like_params(v, params)
  return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v,))[1]


def ggn_vp(model_fn, output_loss, params, batch, v):
  """Gauss-Newton-vector product ``J^T H_out J v``.

  One forward pass (`linearize`), one Jacobian-vector product, one
  Hessian-vector product in the (small) output space, one transpose.

  Args:
    model_fn: ``model_fn(params, batch) -> outputs`` (any pytree of arrays).
    output_loss: ``output_loss(outputs, batch) -> scalar`` mean loss.
    params: pytree of arrays.
    batch: any pytree.
    v: pytree shaped like `params`.

  Returns:
    ``G v``, a pytree shaped like `params`.

  Raises:
    TypeError: `model_fn` or `output_loss` is not callable.
    ValueError: `v` is not shaped like `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> model_fn = lambda p, x: x @ p['w']                  # linear: J = x
    >>> output_loss = lambda out, x: 0.5 * jnp.sum(out ** 2)   # H_out = I
    >>> x = jnp.array([[1., 0.], [1., 1.]])
    >>> sd.ggn_vp(model_fn, output_loss, {'w': jnp.ones(2)}, x,
    ...           {'w': jnp.array([1., 0.])})             # x^T x v
    {'w': Array([2., 1.], dtype=float32)}
  """
  _check_callable('model_fn', model_fn)
  _check_callable('output_loss', output_loss)
  _check_like_params(v, params)
  f = lambda p: model_fn(p, batch)
  outputs, f_jvp = jax.linearize(f, params)
  jv = f_jvp(v)
  out_grad = jax.grad(lambda o: output_loss(o, batch))
  h_jv = jax.jvp(out_grad, (outputs,), (jv,))[1]
  return jax.linear_transpose(f_jvp, params)(h_jv)[0]


def fisher_vp(per_example_loss, params, batch, v):
  """Empirical-Fisher-vector product ``(1/B) sum_i g_i (g_i . v)``.

  Computed as ``J_l^T (J_l v) / B`` with ``J_l`` the ``[B, n]`` Jacobian of the
  per-example losses, so per-example gradients are never stored.

  Args:
    per_example_loss: ``per_example_loss(params, batch) -> [B]``.
    params: pytree of arrays.
    batch: any pytree.
    v: pytree shaped like `params`.

  Returns:
    ``F v``, a pytree shaped like `params`.

  Raises:
    TypeError: `per_example_loss` is not callable.
    ValueError: it does not return ``[B]`` losses, or `v` is not shaped like
      `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> per_example = lambda p, x: x @ p['w']      # g_i = x_i
    >>> x = jnp.array([[1., 0.], [1., 1.]])
    >>> sd.fisher_vp(per_example, {'w': jnp.zeros(2)}, x,
    ...              {'w': jnp.array([1., 0.])})   # x^T x v / 2
    {'w': Array([1. , 0.5], dtype=float32)}
  """
  _check_callable('per_example_loss', per_example_loss)
  _check_like_params(v, params)
  f = lambda p: per_example_loss(p, batch)
  losses, f_jvp = jax.linearize(f, params)
  if losses.ndim != 1:
    raise ValueError('per_example_loss: must return the per-example losses '
                     f'[B], got shape {losses.shape}.')
  jv = f_jvp(v)
  return jax.linear_transpose(f_jvp, params)(jv / losses.shape[0])[0]


def _ggn_pair(loss):
  """``(model_fn, output_loss)``, or a ValueError saying what 'ggn' needs."""
  arguments.check_loss_form('ggn', loss)
  return loss


@functools.lru_cache(maxsize=64)
def curvature_fns(curvature, loss):
  """The per-batch product and mean-loss functions of a curvature.

  Cached on `(curvature, loss)` so that operators built for the same loss share
  one function object, hence one compiled program.

  Args:
    curvature: one of ``'hessian'``, ``'ggn'``, ``'fisher'``.
    loss: what that curvature expects (see the module docstring).

  Returns:
    ``(product, mean_loss)``: ``product(params, batch, v) -> pytree`` and
    ``mean_loss(params, batch) -> scalar``.
  """
  if curvature == 'hessian':
    return functools.partial(hvp, loss), loss
  if curvature == 'ggn':
    model_fn, output_loss = _ggn_pair(loss)
    mean_loss = lambda p, b: output_loss(model_fn(p, b), b)
    return functools.partial(ggn_vp, model_fn, output_loss), mean_loss
  if curvature == 'fisher':
    mean_loss = lambda p, b: jnp.mean(loss(p, b))
    return functools.partial(fisher_vp, loss), mean_loss
  raise ValueError(
      f'curvature: must be one of {CURVATURES}, got {curvature!r}.')


def check_loss_output(curvature, loss, params, batch):
  """Raises ValueError naming `loss` when its output has the wrong shape."""
  if curvature == 'ggn':
    model_fn, output_loss = _ggn_pair(loss)
    out = jax.eval_shape(
        lambda p, b: output_loss(model_fn(p, b), b), params, batch)
    expected, what = (), 'output_loss(model_fn(params, batch), batch)'
  else:
    _check_callable('loss', loss)
    out = jax.eval_shape(loss, params, batch)
    expected, what = ((), 'loss(params, batch)')
  if curvature == 'fisher':
    if len(out.shape) != 1:
      raise ValueError(
          "loss: with curvature='fisher', loss(params, batch) must return the "
          f'per-example losses [batch_size], got shape {out.shape}.')
    return
  if out.shape != expected:
    raise ValueError(
        f'loss: {what} must return a scalar (the mean loss over the batch), '
        f'got shape {out.shape}.')


def dense_matrix(matvec, dim, *, chunk_size=256, dtype=None):
  """The ``[dim, dim]`` matrix of a linear operator, one column block at a time.

  Args:
    matvec: ``[dim] -> [dim]``, traceable with `jax.vmap`.
    dim: number of rows and columns.
    chunk_size: columns computed together (memory ~ chunk_size x one product).
    dtype: dtype of the basis vectors; defaults to the default float dtype.

  Returns:
    numpy array ``[dim, dim]``; column ``j`` is ``matvec(e_j)``.

  Raises:
    TypeError: `matvec` not callable, or `dim` or `chunk_size` not an int.
    ValueError: `dim` or `chunk_size` below 1, or `matvec` not mapping
      ``[dim]`` to ``[dim]``.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> sd.dense_matrix(lambda v: jnp.array([2., 3.]) * v, 2)
    array([[2., 0.],
           [0., 3.]], dtype=float32)
  """
  _check_callable('matvec', matvec)
  dim = arguments.positive_int('dim', dim)
  chunk_size = arguments.positive_int('chunk_size', chunk_size)
  dtype = dtype or jnp.result_type(float)
  out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((dim,), dtype))
  if getattr(out, 'shape', None) != (dim,):
    raise ValueError(f'matvec: must map [dim] = [{dim}] to [{dim}], got '
                     f'{getattr(out, "shape", type(out).__name__)}.')
  block = jax.jit(jax.vmap(matvec))
  cols = []
  for start in range(0, dim, chunk_size):
    stop = min(start + chunk_size, dim)
    eye = jnp.zeros((stop - start, dim), dtype)
    eye = eye.at[jnp.arange(stop - start), jnp.arange(start, stop)].set(1)
    cols.append(np.asarray(block(eye)))
  return np.concatenate(cols, axis=0).T


def full_hessian(loss, params, batch=_NO_BATCH, *, chunk_size=256):
  """The dense Hessian of `loss` at `params`, for small models.

  Both of the original's forms: `full_hessian(loss, params)` with
  ``loss(params) -> scalar`` (the batch closed over, as in the original
  `hessian_computation.full_hessian`), and `full_hessian(loss, params, batch)`
  with ``loss(params, batch) -> scalar``. Rows and columns follow
  `jax.flatten_util.ravel_pytree(params)`.

  Args:
    loss: ``loss(params) -> scalar`` or ``loss(params, batch) -> scalar``.
    params: pytree of arrays with `n` entries in all.
    batch: any pytree, or omitted.
    chunk_size: Hessian columns computed per compiled call.

  Returns:
    numpy array ``[n, n]`` in the dtype of the flattened params.

  Raises:
    TypeError: `loss` not callable, or `params` not floating.
    ValueError: `params` empty, `loss` not returning a scalar, or
      `chunk_size` below 1.

  Example:
    >>> import jax.numpy as jnp
    >>> import spectral_density as sd
    >>> loss = lambda p, x: jnp.sum(x * p ** 2) + p[0] * p[1]
    >>> sd.full_hessian(loss, jnp.zeros(2), jnp.array([1., 2.]))
    array([[2., 1.],
           [1., 4.]], dtype=float32)
  """
  _check_callable('loss', loss)
  if batch is _NO_BATCH:
    closed, batch = loss, None
    loss = lambda p, _: closed(p)
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError('params: has no entries.')
  if not jnp.issubdtype(flat.dtype, jnp.floating):
    raise TypeError(f'params: must be floating, got dtype {flat.dtype}.')
  out = jax.eval_shape(loss, params, batch)
  if getattr(out, 'shape', None) != ():
    raise ValueError('loss: must return a scalar, got '
                     f'{getattr(out, "shape", type(out).__name__)}.')
  def matvec(v):
    return ravel_pytree(hvp(loss, params, batch, unravel(v)))[0]
  return dense_matrix(matvec, flat.size, chunk_size=chunk_size,
                      dtype=flat.dtype)


def _check_symmetric(matrix, rtol=1e-4, rows=1024):
  """Refuses a matrix whose asymmetry is more than rounding (in row blocks,
  so that a 2 GB Hessian needs no 2 GB temporary)."""
  scale = np.abs(matrix).max()
  for i in range(0, matrix.shape[0], rows):
    gap = np.abs(matrix[i:i + rows] - matrix[:, i:i + rows].T).max()
    if gap > rtol * scale:
      raise ValueError(f'matrix: must be symmetric (|M - M^T| = {gap:.3g}, '
                       f'max |M| = {scale:.3g}).')


def exact_eigenvalues(matrix):
  """Ascending eigenvalues ``[n]`` of a dense symmetric matrix (LAPACK syevd).

  The matrix is symmetrised first: a Hessian assembled from products is only
  symmetric up to rounding.

  Args:
    matrix: ``[n, n]`` real, symmetric up to a relative 1e-4 (e.g. from
      `full_hessian` or `dense_matrix`).

  Returns:
    numpy array ``[n]``, ascending.

  Raises:
    ValueError: `matrix` not square, not finite, or not symmetric.

  Example:
    >>> import numpy as np
    >>> import spectral_density as sd
    >>> sd.exact_eigenvalues(np.array([[2., 1.], [1., 2.]]))
    array([1., 3.])
  """
  matrix = arguments.real_array('matrix', matrix, (2,), dtype=None)
  if matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'matrix: must be square, got shape {matrix.shape}.')
  _check_symmetric(matrix)
  # Contiguous input: LAPACK on a transposed view is several times slower.
  # scipy's syevd takes about half the CPU time of np.linalg.eigvalsh here
  # (float32, n = 3,000 to 8,000, OpenBLAS), with the same eigenvalues.
  return scipy.linalg.eigh(np.ascontiguousarray(0.5 * (matrix + matrix.T)),
                           eigvals_only=True, driver='evd', overwrite_a=True,
                           check_finite=False)
