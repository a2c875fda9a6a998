"""A decoder-only language model (pre-LayerNorm GPT) and its token-weighted
loss, for block spectra of transformers (Zhang et al., NeurIPS 2024).

The model is written out plainly, as Zhang et al. advise for Hessian-vector
products: token and position embeddings, `num_layers` blocks of causal
multi-head self-attention (an explicit softmax over masked logits, no fused
kernel) and a GELU MLP, each behind a LayerNorm with a residual connection,
a final LayerNorm and an untied output head. No dropout: every product of the
Hessian is of one deterministic function.

Parameter paths (what the block rules of `spectral_density.blocks` match):

  wte/embedding                      token embedding   [vocab, d]
  wpe/embedding                      position embedding [max_len, d]
  block_<i>/ln_1/{scale,bias}        LayerNorm before attention
  block_<i>/attn/{query,key,value,out}/{kernel,bias}
  block_<i>/ln_2/{scale,bias}        LayerNorm before the MLP
  block_<i>/mlp/fc_in/{kernel,bias}  d -> mlp_dim
  block_<i>/mlp/fc_out/{kernel,bias} mlp_dim -> d
  ln_f/{scale,bias}                  final LayerNorm
  head/{kernel,bias}                 d -> vocab

A batch is ``{'tokens': int [B, T + 1], 'mask': [B, T]}``: position t predicts
token t + 1; `mask` is 1 where that target is a real token, 0 on padding.
`make_loss_fn` weights by real tokens (see there), so the operator's
example-weighted sum over batches is the mean per-token loss over the whole
set, whatever the batching or the number of devices.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Dtype = Any
# GPT-2's initialisation: normal(0.02) for every kernel and embedding.
_INIT = nn.initializers.normal(0.02)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention, computed explicitly.

  Attributes:
    num_heads: heads; the width must divide by it.
    dtype, param_dtype: computation and parameter dtypes.
  """
  num_heads: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """Args: x [B, T, d]. Returns: [B, T, d]."""
    b, t, d = x.shape
    h = self.num_heads
    dense = functools.partial(nn.Dense, d, kernel_init=_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    split = lambda y: y.reshape(b, t, h, d // h)
    q, k, v = (split(dense(name=n)(x)) for n in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k) / math.sqrt(d // h)
    causal = jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum('bhqk,bkhc->bqhc', weights, v).reshape(b, t, d)
    return dense(name='out')(y)


class MLPBlock(nn.Module):
  """d -> mlp_dim -> d with GELU."""
  mlp_dim: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense = functools.partial(nn.Dense, kernel_init=_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = nn.gelu(dense(self.mlp_dim, name='fc_in')(x))
    return dense(d, name='fc_out')(x)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(ln(x)), then + mlp(ln(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + CausalSelfAttention(self.num_heads, name='attn', **kw)(
        nn.LayerNorm(name='ln_1', **kw)(x))
    return x + MLPBlock(self.mlp_dim, name='mlp', **kw)(
        nn.LayerNorm(name='ln_2', **kw)(x))


class GPT(nn.Module):
  """Decoder-only language model (module docstring).

  Attributes:
    vocab_size: tokens (256 for bytes).
    max_len: longest input (position embeddings).
    width: d, the residual stream's width.
    num_layers: transformer blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of each MLP (GPT: 4 d).
    dtype, param_dtype: computation and parameter dtypes.
  """
  vocab_size: int = 256
  max_len: int = 64
  width: int = 32
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 128
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = True, mask=None):
    """Args: tokens int [B, T] (T <= max_len); train, mask: unused (the
    signature of the experiments' models).

    Returns: logits [B, T, vocab_size].
    """
    del train, mask
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not a multiple of num_heads '
                       f'{self.num_heads}.')
    t = tokens.shape[1]
    if t > self.max_len:
      raise ValueError(f'tokens: length {t} > max_len {self.max_len}.')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embed = functools.partial(nn.Embed, features=self.width,
                              embedding_init=_INIT, **kw)
    x = (embed(self.vocab_size, name='wte')(tokens) +
         embed(self.max_len, name='wpe')(jnp.arange(t))[None])
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.mlp_dim, name=f'block_{i}', **kw)(x)
    x = nn.LayerNorm(name='ln_f', **kw)(x)
    return nn.Dense(self.vocab_size, kernel_init=_INIT, name='head', **kw)(x)


def create_model(model_config, dtype=None):
  """The GPT of a config's `model` fields (`configs/transformer_lm.py`)."""
  param_dtype = (jnp.float32 if dtype is None else
                 jnp.promote_types(dtype, jnp.float32))
  return GPT(vocab_size=model_config.vocab_size,
             max_len=model_config.seq_len, width=model_config.width,
             num_layers=model_config.num_layers,
             num_heads=model_config.num_heads, mlp_dim=model_config.mlp_dim,
             dtype=dtype, param_dtype=param_dtype)


def init_params(model, rng, seq_len):
  return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params']


def token_losses(logits, targets):
  """Per-token cross-entropy [B, T] in float32 at least."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def tokens_per_example(dataset):
  """Mean number of real target tokens per sequence of a whole set: the
  constant that makes `make_loss_fn`'s losses add up to the per-token mean."""
  mask = np.asarray(dataset['mask'], np.float64)
  total = mask.sum()
  if not total > 0:
    raise ValueError('dataset: has no real tokens (mask is all 0).')
  return float(total / mask.shape[0])


def make_loss_fn(model, mean_tokens):
  """``loss(params, batch)`` whose example-weighted mean over batches is the
  mean per-token loss over the whole set.

  The library's operators weight a batch of ``B`` sequences by ``B / N``. The
  batch's loss is its sum of real-token losses divided by ``B * mean_tokens``
  (``mean_tokens``: real tokens per sequence over the whole set,
  `tokens_per_example`), so the weighted sum is ``sum of all real-token
  losses / total real tokens``: batches with more padding count less, and
  neither the batch size nor the device count changes the loss, its
  gradient or its Hessian.

  Args:
    model: a `GPT`.
    mean_tokens: `tokens_per_example` of the whole set.
  """
  mean_tokens = float(mean_tokens)
  if not mean_tokens > 0:
    raise ValueError(f'mean_tokens: must be > 0, got {mean_tokens}.')

  def loss(params, batch):
    tokens = batch['tokens']
    logits = model.apply({'params': params}, tokens[:, :-1])
    losses = token_losses(logits, tokens[:, 1:])
    mask = batch['mask'].astype(losses.dtype)
    return jnp.sum(mask * losses) / (tokens.shape[0] * mean_tokens)

  return loss


def batch_mean_loss(model, params, batch):
  """Mean per-token loss of one batch (training's objective)."""
  tokens = batch['tokens']
  logits = model.apply({'params': params}, tokens[:, :-1])
  losses = token_losses(logits, tokens[:, 1:])
  mask = batch['mask'].astype(losses.dtype)
  return jnp.sum(mask * losses) / jnp.maximum(jnp.sum(mask), 1.0)
