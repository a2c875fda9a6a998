"""Parameters and Lanczos vectors sharded over a mesh give the replicated
answer, in a fraction of the per-device memory, on one process and on two.

Layouts on the 8 CPU devices: the parameters replicated (data parallel over 8,
the library's design before), fully sharded over 8 (FSDP 8), FSDP 4 x data 2,
and a tensor-parallel MLP (first layer split by columns, second by rows).
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sharded_worker
import spectral_density as sd
from benchmarks import sharded_params
from spectral_density import mesh_layout
from spectral_density import sharded
from spectral_density import tree_recurrence

WORKER = pathlib.Path(__file__).with_name('sharded_worker.py')
LAYOUTS = ('replicated', 'fsdp8', 'fsdp4xdata2', 'tensor4xdata2')


def _mesh(shape, names):
  devices = np.asarray(jax.devices()[:8]).reshape(shape)
  return jax.sharding.Mesh(devices, names)


def _placed(layout, params):
  """`params` laid out as `layout` (see the module docstring)."""
  if layout == 'replicated':
    mesh = _mesh((8,), ('data',))
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())),
                        params)
  if layout == 'fsdp8':
    mesh = _mesh((8,), ('fsdp',))
  elif layout == 'fsdp4xdata2':
    mesh = _mesh((2, 4), ('data', 'fsdp'))
  else:  # tensor parallel, as a Megatron MLP: w1 by columns, w2 by rows
    mesh = _mesh((2, 4), ('data', 'model'))
    specs = {'w1': P(None, 'model'), 'b1': P('model'), 'w2': P('model', None)}
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                        params, specs)
  return mesh_layout.place(params, mesh_layout.fsdp_shardings(params, mesh))


def _operator(layout, loss, params, data, **kwargs):
  return sharded.sharded_hvp_fn(loss, _placed(layout, params), data,
                                batch_size=sharded_worker.BATCH, **kwargs)


@pytest.fixture(scope='module')
def mlp():
  return sharded_worker.problem()  # numpy float64


def test_the_tree_recurrence_on_a_flat_vector_is_the_flat_recurrence():
  # One leaf [n] is the flat case: from the same start vector, the pytree
  # recurrence and `lanczos_draws` (recurrence.py) give the same tridiagonal.
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 40))
    a = jnp.asarray(a + a.T)
    key = jax.random.split(jax.random.key(5), 1)[0]
    start = jax.random.normal(key, (40,), jnp.float64)
    start = start / jnp.linalg.norm(start)
    flat = sd.lanczos_draws(lambda v: a @ v, 40, 15, jax.random.key(5),
                            precision='float64')
    config = tree_recurrence.Config(15, 'float64', 'float64', 'gaussian',
                                    True, 2, 10 * np.finfo(np.float64).eps)
    programs = tree_recurrence.programs(config)
    same = lambda t, *_: t
    reduce = lambda vs: vs @ a
    @jax.jit
    def run(start):
      states = programs.init(reduce, same, None, start, starts=start[None])
      states = programs.segment(reduce, same, states, 0, 15)
      return programs.finish(reduce, same, states)[0]
    np.testing.assert_allclose(run(start), flat.tridiag, rtol=0, atol=1e-12)


@pytest.mark.parametrize('layout', ['fsdp8', 'fsdp4xdata2', 'tensor4xdata2'])
def test_sharded_products_are_the_dense_hessian_and_keep_the_layout(
    mlp, layout):
  loss, params, data = mlp
  with jax.enable_x64(True):
    op = _operator(layout, loss, params, data)
    flat, unravel = ravel_pytree(params)
    v = unravel(np.random.default_rng(2).normal(size=flat.size))
    hv = op(jax.tree.map(jnp.asarray, v))
    whole = jax.tree.map(lambda x: x, data)
    dense = sd.full_hessian(loss, params, whole)  # [n, n], jax.hessian
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ ravel_pytree(v)[0],
                               rtol=1e-12, atol=1e-13)
    for leaf, s in zip(jax.tree.leaves(hv), jax.tree.leaves(op.shardings)):
      assert leaf.sharding.is_equivalent_to(s, leaf.ndim)


def test_ggn_and_fisher_over_sharded_params_are_the_replicated_ones(mlp):
  loss, params, data = mlp
  def model_fn(p, b):
    return jnp.tanh(b['x'] @ p['w1'] + p['b1']) @ p['w2']
  output_loss = lambda out, b: jnp.mean((out - b['y']) ** 2)
  per_example = lambda p, b: jnp.mean((model_fn(p, b) - b['y']) ** 2, -1)
  with jax.enable_x64(True):
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(3).normal(size=flat.size)
    for curvature, fn in (('ggn', (model_fn, output_loss)),
                          ('fisher', per_example)):
      op = _operator('fsdp4xdata2', fn, params, data, curvature=curvature)
      hv = ravel_pytree(op(jax.tree.map(jnp.asarray, unravel(v))))[0]
      ref, _, _ = sd.get_hvp_fn(fn, params, data, curvature=curvature,
                                batch_size=sharded_worker.BATCH)
      np.testing.assert_allclose(hv, ref(v), rtol=1e-12, atol=1e-14)


def test_sharded_lanczos_is_the_replicated_run_float64(mlp):
  # The same start vectors (each leaf drawn where it lives): the float64
  # tridiagonals agree to 1e-10 relative; at order = n the Ritz values are
  # the dense Hessian's eigenvalues (jax.hessian, eigh).
  loss, params, data = mlp
  n = sum(x.size for x in jax.tree.leaves(params))
  with jax.enable_x64(True):
    runs = {layout: sharded.sharded_lanczos(
        _operator(layout, loss, params, data), n, jax.random.key(7))
            for layout in ('replicated', 'fsdp8', 'fsdp4xdata2')}
    exact = np.linalg.eigvalsh(sd.full_hessian(loss, params, data))
  ref = runs['replicated'].tridiag
  scale = np.max(np.abs(ref))
  for layout in ('fsdp8', 'fsdp4xdata2'):
    assert np.max(np.abs(runs[layout].tridiag - ref)) <= 1e-10 * scale
  ritz = np.linalg.eigvalsh(ref[0])
  np.testing.assert_allclose(ritz, exact, rtol=0, atol=1e-9 * scale)


def test_sharded_lanczos_float32_top_ritz_values_match(mlp):
  loss, params, data = mlp
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  data = jax.tree.map(lambda x: x.astype(np.float32), data)
  runs = [sharded.sharded_lanczos(_operator(layout, loss, params, data), 30,
                                  jax.random.key(8), num_draws=2)
          for layout in ('replicated', 'fsdp4xdata2')]
  top = [np.sort(np.linalg.eigvalsh(r.tridiag), -1)[:, -10:] for r in runs]
  np.testing.assert_allclose(top[1], top[0], rtol=1e-5)


def test_bad_arguments_are_named():
  loss, params, data = sharded_worker.problem()
  with pytest.raises(ValueError, match='params'):
    sharded.sharded_hvp_fn(loss, params, data, batch_size=8)  # not placed
  placed = _placed('fsdp4xdata2', params)
  with pytest.raises(ValueError, match='batch_size'):
    sharded.sharded_hvp_fn(loss, placed, data, batch_size=7)
  with pytest.raises(ValueError, match='data_axes'):
    sharded.sharded_hvp_fn(loss, placed, data, batch_size=8,
                           data_axes=('batch',))
  with pytest.raises(TypeError, match='op'):
    sharded.sharded_lanczos(lambda v: v, 3, jax.random.key(0))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_process_run_and_resume(mlp, tmp_path):
  # 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo
  # collectives), the parameters split across both; their run is killed
  # after its first checkpoint (step 4 of 12) and resumed. It equals the
  # uninterrupted run on this process's 8 devices, which then reads the
  # two processes' sharded checkpoint back (the finished run: nothing left
  # to step) and refuses it for other parameters.
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), str(port), '2', str(i), str(tmp_path),
       '4'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  loss, params, data = mlp
  with jax.enable_x64(True):
    op = _operator('fsdp4xdata2', loss, params, data)
    one = sharded.sharded_lanczos(op, sharded_worker.ORDER, jax.random.key(3),
                                  num_draws=2)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'tridiag.npy'), one.tridiag,
                             rtol=0, atol=1e-12)
  np.testing.assert_array_equal(np.load(tmp_path / 'resumed_from.npy'),
                                [4, 4])
  run = lambda op: sharded.sharded_lanczos(
      op, sharded_worker.ORDER, jax.random.key(3), num_draws=2,
      checkpoint_dir=tmp_path / 'ckpt', checkpoint_every=sharded_worker.EVERY)
  with jax.enable_x64(True):
    again = run(op)
    assert again.resumed_from == sharded_worker.ORDER
    np.testing.assert_allclose(again.tridiag, one.tridiag, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='checkpoint_dir'):
      run(_operator('fsdp4xdata2', loss, jax.tree.map(lambda x: 2 * x, params),
                    data))


@pytest.mark.slow
def test_per_device_memory_is_a_sixth_of_the_replicated():
  # XLA's memory analysis of the compiled programs, per device, for a small
  # pre-LN decoder, less the data. The whole Lanczos run (parameters,
  # tangents, vectors, basis, and every temporary, gathered weights
  # included): at most 1/6 of the replicated layout's at order 90 (where the
  # basis outweighs this tiny model's fixed costs). The product
  # program's parameters, tangent and product (its arguments and outputs):
  # 1/8 with FSDP 8, 1/4 with FSDP 4 x data 2 (the parameters are split over
  # 4 devices there; the basis's rows are dealt over the data axis too).
  params = sharded_params.decoder_params(jax.random.key(0), width=32, depth=1)
  data = sharded_params.decoder_data(0, 64)
  measured = {}
  for name, split in (('replicated', 1), ('fsdp8', 8), ('fsdp4xdata2', 4)):
    op = sharded_params.operator(name, params, data, 8)
    data_bytes = sharded_params.data_bytes_per_device(op)
    product = sharded_params.memory(op.lower_product().compile())
    lanczos = sharded_params.memory(
        sharded.lanczos_program(op, 90).compile())
    measured[name] = (lanczos['total'] - data_bytes,
                      product['arguments'] + product['outputs'] - data_bytes,
                      split)
  whole, vectors, _ = measured['replicated']
  for name in ('fsdp8', 'fsdp4xdata2'):
    run, product, split = measured[name]
    assert run <= whole / 6, measured
    assert product <= vectors / split * 1.05, measured
