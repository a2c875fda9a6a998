"""The precision of a run: one knob per concept, and what each one means.

Three knobs, each with one home (see docs/guide/precision.md for the table):

* the product's dtype: `get_hvp_fn(dtype=...)` (the parameters are cast to it;
  bfloat16 and float16 models are computed in float32, see
  `product_dtype`), summed over batches in `accum_dtype`;
* the recurrence's dtype: `lanczos_draws(precision=...)` (``'float32'``,
  ``'float64'``, ``'mixed'``: products in the model's dtype, Lanczos vectors
  in float64);
* the matmul precision: `matmul_precision`, how float32 matrix products and
  convolutions are computed. JAX's default on accelerators is a reduced
  precision (one bfloat16 pass on TPU, TF32 on recent NVIDIA GPUs; JAX's
  "Matmul precision" guide), about 3 significant digits, below which the
  near-zero bulk of a Hessian spectrum is noise. So the default here is
  ``'highest'`` (full float32); ``'default'`` asks for JAX's default
  (``Precision.DEFAULT``: the platform's fast path); a name of
  `jax.lax.DotAlgorithmPreset` (``'BF16_BF16_F32_X3'``, ``'TF32_TF32_F32'``,
  ...) picks an algorithm. Float64 stays float64: a preset is applied to
  float32 (and narrower) computations only, float64 ones get ``'highest'``.

The setting is applied where a program is traced (`traced_under`), so that it
is part of the compiled program (and of `jax.jit`'s cache key): the loss, its
gradient and products, and the Lanczos recurrence.
"""

import functools

import jax
import jax.numpy as jnp

DEFAULT_MATMUL_PRECISION = 'highest'
# JAX's legacy names, which also mean something for float64 inputs.
_LEGACY = ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32',
           'float32')
MATMUL_PRECISIONS = _LEGACY + tuple(
    p.name for p in jax.lax.DotAlgorithmPreset if p.name != 'DEFAULT')


def check_matmul_precision(value):
  """`value` (None: the default, ``'highest'``) as a checked name."""
  if value is None:
    return DEFAULT_MATMUL_PRECISION
  if isinstance(value, jax.lax.DotAlgorithmPreset):
    value = value.name
  if not isinstance(value, str) or value not in MATMUL_PRECISIONS:
    raise ValueError(
        f'matmul_precision: must be one of {MATMUL_PRECISIONS} (or a '
        f'jax.lax.DotAlgorithmPreset), got {value!r}.')
  return value


def is_wide(dtype):
  """Whether `dtype` is a float of 64 bits or more (complex included)."""
  return jnp.finfo(jnp.dtype(dtype)).bits >= 64


def setting_for(matmul_precision, dtype):
  """The `jax.default_matmul_precision` value for a computation in `dtype`.
  A preset is a float32 algorithm (it would cast float64 inputs down), so
  float64 computations get ``'highest'``."""
  if dtype is not None and is_wide(dtype) and matmul_precision not in _LEGACY:
    return 'highest'
  return matmul_precision


def context(matmul_precision, dtype):
  """A context in which traced matmuls and convolutions of `dtype` get
  `matmul_precision` (see `setting_for`)."""
  return jax.default_matmul_precision(setting_for(matmul_precision, dtype))


def floating_dtype(tree):
  """The promoted dtype of the floating leaves of `tree` (None if none)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  return jnp.result_type(*leaves) if leaves else None


def traced_under(fn, matmul_precision, dtype=None):
  """`fn` traced under `matmul_precision`: the setting holds while `fn`'s
  operations are recorded, so every matmul and convolution it makes carries
  it in the compiled program. `dtype`: of the computation; None takes it
  from the floating leaves of the first argument (the parameters of a batch
  function) at trace time."""

  @functools.wraps(fn)
  def wrapped(*args):
    with context(matmul_precision,
                 dtype if dtype is not None else floating_dtype(args[:1])):
      return fn(*args)
  return wrapped


def product_dtype(dtype):
  """The dtype products of a model of floating `dtype` are computed in: its
  own, but at least float32 (a bfloat16 or float16 model's products and the
  Lanczos recurrence run in float32: eps 4e-3 or 1e-3 would drown every
  eigenvalue below 1e-2 of the largest, and the eigensolver of the
  tridiagonal needs float32 at least)."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def check_float64_available(name, dtype):
  """Raises ValueError naming `name` if `dtype` is 64-bit while x64 is off
  (JAX would silently compute in 32 bits)."""
  if dtype is None:
    return
  if is_wide(dtype) and not jax.config.jax_enable_x64:
    raise ValueError(
        f'{name}: {jnp.dtype(dtype).name} needs x64, which is off, so JAX '
        "would compute in 32 bits: call jax.config.update('jax_enable_x64', "
        'True) first (or use `with jax.enable_x64(True):`).')
