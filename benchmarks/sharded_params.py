"""Sharded parameters: per-device memory, product time, exactness, and costs.

  python -m benchmarks.sharded_params [--widths 64,128,256] [--order 90]
      [--model decoder|gpt] [--seq_len 8]

On 8 devices (host CPU devices unless accelerators are present), for a small
pre-LN decoder-only transformer of growing width (`decoder`: written out
here, on random tokens; `gpt`: the GPT of experiments/transformer.py with its
token-weighted loss, on byte sequences of the Python standard library's
source, its vocabulary the 256 bytes): XLA's memory analysis of
the compiled product and Lanczos programs per device with the parameters
replicated (data parallel over 8, the library's `get_hvp_fn` design), fully
sharded over 8 (FSDP 8), and FSDP 4 x data 2; the product's time ratio;
the largest difference of the tridiagonals. Then, from the measured bytes per
parameter and XLA's FLOP count per token, the largest model whose order-90
spectrum fits 8 devices of 80 GB, and the cost of one order-90 draw for a
1B-parameter language model on 8 GPUs and a 64-chip TPU slice (derived: said
so in the table). Writes a dated report under docs/reports/.
"""

import argparse
import os
import time

if __name__ == '__main__' and 'XLA_FLAGS' not in os.environ:
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import report  # pylint: disable=g-import-not-at-top
from spectral_density import mesh_layout  # pylint: disable=g-import-not-at-top
from spectral_density import sharded  # pylint: disable=g-import-not-at-top

LAYOUTS = {  # name: (mesh shape, axis names, FSDP axis or None)
    'replicated': ((8,), ('data',), None),
    'fsdp8': ((8,), ('fsdp',), 'fsdp'),
    'fsdp4xdata2': ((2, 4), ('data', 'fsdp'), 'fsdp'),
}
# The lent H200's measured rate on a product (README, 'The rule of thumb sits
# at the FLOP floor'): ResNet-18's H v is 25.85 GFLOP per example (XLA
# count); 10,000 examples took 2.375 s (docs/accelerator_h200.txt, run 2).
H200_HV_FLOPS_PER_S = 25.85e9 * 10_000 / 2.375
H200_TF32_PEAK = 494e12   # NVIDIA's H200 datasheet, dense TF32
TPU_V5P_PEAK = 459e12     # Google Cloud's TPU v5p datasheet, bf16 per chip


# A pre-LN decoder-only transformer, in plain JAX.

def decoder_params(key, *, vocab=64, width=32, depth=2, seq_len=8,
                   dtype=jnp.float32):
  """Parameters of a pre-LN decoder: embeddings, `depth` blocks of causal
  self-attention and an MLP (4 x width), a final layer norm, the unembedding."""
  keys = iter(jax.random.split(key, 4 + 4 * depth))
  normal = lambda shape, fan_in: (jax.random.normal(next(keys), shape, dtype)
                                  / np.sqrt(fan_in))
  ln = lambda: {'scale': jnp.ones((width,), dtype),
                'bias': jnp.zeros((width,), dtype)}
  blocks = [{'ln1': ln(), 'qkv': normal((width, 3 * width), width),
             'out': normal((width, width), width), 'ln2': ln(),
             'up': normal((width, 4 * width), width),
             'down': normal((4 * width, width), 4 * width)}
            for _ in range(depth)]
  return {'embed': normal((vocab, width), 1),
          'pos': normal((seq_len, width), 1) * 0.1,
          'blocks': blocks, 'ln_f': ln(),
          'unembed': normal((width, vocab), width)}


def _layer_norm(x, p):
  mu = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + 1e-5) * p['scale'] + p['bias']


def decoder_logits(params, tokens, num_heads=4):
  """``tokens [B, T]`` int -> logits ``[B, T, vocab]``."""
  seq = tokens.shape[1]
  x = params['embed'][tokens] + params['pos'][:seq]
  causal = jnp.tril(jnp.ones((seq, seq), bool))
  for blk in params['blocks']:
    h = _layer_norm(x, blk['ln1'])
    q, k, v = jnp.split(h @ blk['qkv'], 3, axis=-1)
    split = lambda t: t.reshape(t.shape[:2] + (num_heads, -1))
    q, k, v = split(q), split(k), split(v)
    att = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
    o = jnp.einsum('bhqk,bkhd->bqhd', att, v).reshape(x.shape)
    x = x + o @ blk['out']
    h = _layer_norm(x, blk['ln2'])
    x = x + jax.nn.gelu(h @ blk['up']) @ blk['down']
  return _layer_norm(x, params['ln_f']) @ params['unembed']


def decoder_loss(params, batch):
  """Mean next-token cross-entropy of ``batch['tokens'] [B, T + 1]``."""
  tokens = batch['tokens']
  logits = decoder_logits(params, tokens[:, :-1])
  logp = jax.nn.log_softmax(logits)
  target = tokens[:, 1:]
  return -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1))


def decoder_data(seed, num_examples, *, vocab=64, seq_len=8):
  rng = np.random.default_rng(seed)
  return {'tokens': rng.integers(0, vocab, (num_examples, seq_len + 1),
                                 dtype=np.int32)}


def num_params(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def gpt_problem(key, *, width, depth, seq_len, examples):
  """(params, loss, data) of the GPT of experiments/transformer.py (4 heads,
  MLP 4 x width) on `examples` byte sequences of the 'stdlib' corpus; the
  loss weights each batch by its real tokens (`make_loss_fn`)."""
  # Imported here: flax and the experiments are not needed for `decoder`.
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments import datasets  # pylint: disable=g-import-not-at-top
  from experiments import transformer  # pylint: disable=g-import-not-at-top
  model = transformer.GPT(vocab_size=256, max_len=seq_len, width=width,
                          num_layers=depth, num_heads=4, mlp_dim=4 * width)
  config = ml_collections.ConfigDict({'dataset': {
      'name': 'stdlib', 'seq_len': seq_len, 'num_train': examples,
      'num_test': 1}})
  data, _ = datasets.load_text_dataset(config)
  loss = transformer.make_loss_fn(model, transformer.tokens_per_example(data))
  return transformer.init_params(model, key, seq_len), loss, data


def problem(model, key, *, width, depth, seq_len, vocab, examples):
  """(params, loss, data) of `model`, 'decoder' or 'gpt' (`vocab`: the
  decoder's; the GPT's is the 256 bytes)."""
  if model == 'gpt':
    return gpt_problem(key, width=width, depth=depth, seq_len=seq_len,
                       examples=examples)
  params = decoder_params(key, vocab=vocab, width=width, depth=depth,
                          seq_len=seq_len)
  return params, decoder_loss, decoder_data(0, examples, vocab=vocab,
                                            seq_len=seq_len)


def operator(layout, params, data, batch_size, devices=None,
             loss=decoder_loss):
  """The `ShardedOperator` of `loss` at `params` laid out as
  `LAYOUTS[layout]`."""
  shape, names, fsdp = LAYOUTS[layout]
  devices = np.asarray(devices if devices is not None else jax.devices()[:8])
  mesh = jax.sharding.Mesh(devices.reshape(shape), names)
  if fsdp is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        params)
  else:
    shardings = mesh_layout.fsdp_shardings(params, mesh, fsdp)
  placed = mesh_layout.place(params, shardings)
  # The replicated baseline is the library's data-parallel design: the
  # parameters and every Lanczos vector whole on every device.
  return sharded.sharded_hvp_fn(loss, placed, data,
                                batch_size=batch_size,
                                basis_rows_over_data=fsdp is not None)


def memory(compiled):
  """Per-device bytes of a compiled program (XLA's memory analysis):
  arguments, outputs, temporaries, and their total less aliasing."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes +
           m.temp_size_in_bytes - m.alias_size_in_bytes)
  return {'arguments': m.argument_size_in_bytes,
          'outputs': m.output_size_in_bytes, 'temp': m.temp_size_in_bytes,
          'total': total}


def data_bytes_per_device(op):
  """The data's bytes on one device (the same for every layout's batches)."""
  return sum(x.addressable_shards[0].data.nbytes
             for x in jax.tree.leaves(op.data))


def basis_bytes_per_device(op, order):
  """One device's slice of the basis ``[order, ...]`` of every leaf, laid
  out as the Lanczos run lays it out (`ShardedOperator.layout`)."""
  total = 0
  for x, s in zip(jax.tree.leaves(op.params),
                  jax.tree.leaves(op.layout(1, basis=True))):
    shape = s.shard_shape((order,) + x.shape)
    total += int(np.prod(shape)) * jnp.dtype(op.dtype).itemsize
  return total


def program_bytes(op, order):
  """Per-device bytes of the product and of the whole Lanczos run, less the
  data's, so that what is left is parameters, tangents, vectors, basis and
  the (small) activations."""
  data = data_bytes_per_device(op)
  product = memory(op.lower_product().compile())['total'] - data
  lanczos = memory(sharded.lanczos_program(op, order).compile())['total'] - (
      data)
  return {'product': product, 'lanczos': lanczos}


def hv_flops_per_token(params, seq_len, batch, loss=decoder_loss, data=None):
  """XLA's FLOP count of one batch's ``H v`` per token (shapes only); the
  batch is shaped like `data`'s leaves (default: tokens only)."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  data = data or {'tokens': np.zeros((1, seq_len + 1), np.int32)}
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      (batch,) + np.shape(x)[1:], np.asarray(x).dtype), data)
  fn = lambda p, b, v: jax.jvp(lambda q: jax.grad(loss)(q, b), (p,),
                               (v,))[1]
  cost = jax.jit(fn).lower(shapes, one, shapes).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / (batch * seq_len)


def _timed(fn, reps=3):
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / reps


def run(widths, order, depth=2, seq_len=8, vocab=64, examples=128,
        batch_size=16, tridiag_order=10, model='decoder'):
  """Prints the report's tables (Markdown) for models of `widths`."""
  if model == 'gpt':
    vocab = 256
  described = ('GPT of experiments/transformer.py on stdlib bytes'
               if model == 'gpt' else 'decoder on random tokens')
  print(f'Device: {jax.devices()[0].device_kind} x {jax.device_count()}; '
        f'{described}, depth {depth}, seq {seq_len}, vocab {vocab}; '
        f'order {order} '
        f'(memory), {tridiag_order} (tridiagonal); {examples} examples, '
        f'batch {batch_size}; float32')
  print()
  print('| width | params | layout | product MB/device | Lanczos MB/device | '
        'Lanczos bytes/param/device | basis copies | vs replicated | '
        'product time ratio | tridiag max rel diff |')
  print('|' + '---|' * 10)
  make = lambda width: problem(model, jax.random.key(width), width=width,
                               depth=depth, seq_len=seq_len, vocab=vocab,
                               examples=examples)
  per_param, copies = {}, {}
  for width in widths:
    params, loss, data = make(width)
    n = num_params(params)
    ops = {name: operator(name, params, data, batch_size, loss=loss)
           for name in LAYOUTS}
    v = jax.tree.map(jnp.ones_like, params)
    base = None
    for name, op in ops.items():
      mem = program_bytes(op, order)
      vs = jax.tree.map(lambda x, s: jax.device_put(x, s), v, op.shardings)
      seconds = _timed(lambda op=op, vs=vs: op(vs))
      res = sharded.sharded_lanczos(op, tridiag_order, jax.random.key(1))
      if base is None:
        base = (mem, seconds, res.tridiag)
      diff = float(np.max(np.abs(res.tridiag - base[2])) /
                   np.max(np.abs(base[2])))
      per_param[(width, name)] = mem['lanczos'] / n
      copies[(width, name)] = mem['lanczos'] / basis_bytes_per_device(op,
                                                                      order)
      print(f'| {width} | {n:,} | {name} | {mem["product"] / 1e6:.3f} | '
            f'{mem["lanczos"] / 1e6:.3f} | {mem["lanczos"] / n:.1f} | '
            f'{copies[(width, name)]:.2f} | '
            f'{mem["lanczos"] / base[0]["lanczos"]:.3f} | '
            f'{seconds / base[1]:.2f} | {diff:.1e} |')
  width = widths[-1]
  params, loss, data = make(width)
  flops_token = hv_flops_per_token(params, seq_len, batch_size, loss, data)
  flops_per_param_token = flops_token / num_params(params)
  print()
  print('Derived from the measurements above (largest width; the fixed '
        'activations shrink per parameter as width grows, so this '
        'overstates bytes per parameter):')
  print()
  bpp = per_param[(width, 'fsdp8')] * 8  # bytes per parameter, all devices
  print(f'- measured: Lanczos program, FSDP 8, order {order}: '
        f'{per_param[(width, "fsdp8")]:.1f} bytes per parameter per device, '
        f'{bpp:.0f} over the 8 devices ({copies[(width, "fsdp8")]:.2f} times '
        "the device's slice of the basis)")
  # The basis rows scale with the order (4 bytes each, float32); the rest
  # (parameters, vectors, temporaries) does not.
  at90 = bpp + 4 * (90 - order)
  print(f'- derived: at order 90, {at90:.0f} bytes per parameter over 8 '
        f'devices; the largest model whose order-90 spectrum fits 8 x 80 GB: '
        f'{8 * 80e9 / at90 / 1e9:.2f} B parameters (the activations of one '
        'batch measured at this tiny batch only)')
  print(f'- measured (XLA cost analysis, width {width}): H v = '
        f'{flops_token / 1e6:.3f} MFLOP per token = '
        f'{flops_per_param_token:.2f} FLOP per parameter per token')
  print()
  print('Cost of one order-90 draw, 1B-parameter LM, float32 basis, '
        '1M-token Hessian set (derived):')
  print()
  print('| system | basis + 2 vectors GB/device | FLOP | sustained FLOP/s '
        '(whole system) | time |')
  print('|---|---|---|---|---|')
  n, tokens = 1e9, 1e6
  total_flops = 90 * flops_per_param_token * n * tokens
  h200 = H200_HV_FLOPS_PER_S
  tpu = TPU_V5P_PEAK * h200 / H200_TF32_PEAK
  for system, chips, rate in (('8 x H200-class GPU (80 GB)', 8, h200),
                              ('64-chip TPU v5p slice', 64, tpu)):
    gb = (90 + 4) * 4 * n / chips / 1e9
    print(f'| {system} | {gb:.1f} | {total_flops:.2e} | {chips * rate:.2e} | '
          f'{total_flops / (chips * rate) / 60:.1f} min |')
  print()
  print(f'(per-chip rate: the lent H200 measured {h200 / 1e12:.0f} TFLOP/s '
        'on ResNet-18 products (docs/accelerator_h200.txt, XLA count); the '
        'TPU chip assumed at the same fraction '
        f'({h200 / H200_TF32_PEAK:.2f}) of its datasheet peak; scaling '
        'assumed perfect: derived, not measured)')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--widths', default='64,128,256')
  parser.add_argument('--order', type=int, default=90)
  parser.add_argument('--model', choices=('decoder', 'gpt'), default='decoder',
                      help='decoder: written out here, random tokens; gpt: '
                      'experiments/transformer.py on stdlib bytes')
  parser.add_argument('--seq_len', type=int, default=8)
  args = parser.parse_args(argv)
  if jax.device_count() < 8:
    raise SystemExit('needs 8 devices (XLA_FLAGS='
                     '--xla_force_host_platform_device_count=8 on CPU)')
  start = time.time()
  run([int(w) for w in args.widths.split(',')], args.order,
      seq_len=args.seq_len, model=args.model)
  print()
  print(f'Wall time: {time.time() - start:.0f} s.')


if __name__ == '__main__':
  report.run('sharded_params', main)
