"""The one-call entry points on sharded parameters: `get_hvp_fn`,
`hessian_spectrum`, `slq` and `block_spectra` take parameters split over a
mesh, run the sharded path, and give what the flat path gives.

The MLP of `sharded_worker.problem` (88 parameters: w1 [6, 8], b1 [8],
w2 [8, 4]) is fully sharded (`fsdp_shardings`) over the 8 CPU devices,
as ('fsdp',) of 8 and as ('data', 'fsdp') of 2 x 4. References: the dense
Hessian (`jax.hessian`) and its `eigh`, and the flat path on the same
parameters as host arrays. Float64 throughout (`jax.enable_x64` locally).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sharded_worker
import spectral_density as sd
from spectral_density import estimators
from spectral_density import mesh_layout
from spectral_density import sharded

BATCH = sharded_worker.BATCH
MESHES = {'fsdp8': ((8,), ('fsdp',)), 'data2xfsdp4': ((2, 4), ('data', 'fsdp'))}


def _mesh(layout):
  shape, names = MESHES[layout]
  return jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(shape), names)


def _placed(layout, params):
  mesh = _mesh(layout)
  return mesh_layout.place(params, sd.fsdp_shardings(params, mesh))


def _flat(tree):
  return ravel_pytree(jax.tree.map(np.asarray, tree))[0]


def _assert_laid_out_like(tree, params, lead, rows=()):
  """Every leaf of `tree` (with `lead` leading axes, the last one split over
  the axes `rows`) is laid out like its parameter, and split wherever the
  parameter is."""
  for x, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
    want = mesh_layout.with_lead(p.sharding, lead, rows)
    assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding, want)
    if not p.sharding.is_fully_replicated:
      assert not x.sharding.is_fully_replicated


@pytest.fixture(autouse=True)
def x64():
  # Every test in float64: JAX 0.10.2 gives an array typed float64 with
  # float32 shards when one numpy array is placed on a mesh outside and then
  # inside `jax.enable_x64(True)` (a later program reads it: a segfault, or
  # "RuntimeProgramInputMismatch"); these tests share the fixture's arrays.
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope='module')
def mlp():
  loss, params, data = sharded_worker.problem()
  with jax.enable_x64(True):
    dense = np.asarray(sd.full_hessian(loss, params, data))
  return loss, params, data, dense


@pytest.fixture(scope='module')
def spectra(mlp):
  """Order n = 88 (exact), 2 draws, bases kept: on ('data', 'fsdp') 2 x 4,
  and on the flat path."""
  loss, params, data, _ = mlp
  n = sum(x.size for x in jax.tree.leaves(params))
  with jax.enable_x64(True):
    placed = _placed('data2xfsdp4', params)
    run = sd.hessian_spectrum(loss, placed, data, batch_size=BATCH, order=n,
                              num_draws=2, keep_vecs=True,
                              rng_key=jax.random.key(3))
    flat = sd.hessian_spectrum(loss, params, data, batch_size=BATCH, order=n,
                               num_draws=2, keep_vecs=True,
                               rng_key=jax.random.key(3))
  return placed, run, flat


def test_is_sharded_is_true_only_for_params_split_over_one_mesh(mlp):
  _, params, _, _ = mlp
  placed = _placed('fsdp8', params)
  assert mesh_layout.is_sharded(placed)
  assert not mesh_layout.is_sharded(params)                      # host
  assert not mesh_layout.is_sharded(jax.device_put(params))      # one device
  mesh = _mesh('fsdp8')
  replicated = jax.device_put(params, NamedSharding(mesh, P()))
  assert not mesh_layout.is_sharded(replicated)
  # Split leaves with a host array, or with a leaf of another mesh.
  with pytest.raises(ValueError, match='params'):
    mesh_layout.is_sharded({**placed, 'b1': params['b1']})
  other = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ('model',))
  with pytest.raises(ValueError, match='params'):
    mesh_layout.is_sharded(
        {**placed, 'b1': jax.device_put(params['b1'],
                                        NamedSharding(other, P()))})


@pytest.mark.parametrize('layout', sorted(MESHES))
def test_get_hvp_fn_on_sharded_params_is_the_dense_hessian(mlp, layout):
  loss, params, data, dense = mlp
  with jax.enable_x64(True):
    placed = _placed(layout, params)
    op, unravel, n = sd.get_hvp_fn(loss, placed, data, batch_size=BATCH)
    assert isinstance(op, sharded.ShardedOperator) and n == dense.shape[0]
    v = np.random.default_rng(2).normal(size=n)
    tangent = unravel(v)             # placed from the host like the params
    _assert_laid_out_like(tangent, placed, 0)
    hv = op(tangent)
    _assert_laid_out_like(hv, placed, 0)
    np.testing.assert_allclose(_flat(hv), dense @ v, rtol=0,
                               atol=1e-10 * np.abs(dense @ v).max())


def test_ggn_and_fisher_on_sharded_params_are_the_flat_products(mlp):
  _, params, data, _ = mlp
  def model_fn(p, b):
    return jnp.tanh(b['x'] @ p['w1'] + p['b1']) @ p['w2']
  output_loss = lambda out, b: jnp.mean((out - b['y']) ** 2)
  per_example = lambda p, b: jnp.mean((model_fn(p, b) - b['y']) ** 2, -1)
  with jax.enable_x64(True):
    placed = _placed('data2xfsdp4', params)
    v = np.random.default_rng(3).normal(size=_flat(params).size)
    for curvature, fn in (('ggn', (model_fn, output_loss)),
                          ('fisher', per_example)):
      op, unravel, _ = sd.get_hvp_fn(fn, placed, data, batch_size=BATCH,
                                     curvature=curvature)
      ref, _, _ = sd.get_hvp_fn(fn, params, data, batch_size=BATCH,
                                curvature=curvature)
      want = np.asarray(ref(v))
      np.testing.assert_allclose(_flat(op(unravel(v))), want, rtol=0,
                                 atol=1e-10 * np.abs(want).max())


def test_hessian_spectrum_on_sharded_params_is_the_sharded_run_and_exact(
    mlp, spectra):
  loss, params, data, dense = mlp
  placed, run, _ = spectra
  exact = np.linalg.eigvalsh(dense)
  n = exact.size
  assert run.dim == n and run.vecs is None
  with jax.enable_x64(True):
    # The same run through the low-level path, parameters replicated.
    mesh = _mesh('data2xfsdp4')
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    low = sd.sharded_lanczos(
        sd.sharded_hvp_fn(loss, replicated, data, batch_size=BATCH), n,
        jax.random.key(3), num_draws=2)
  scale = np.abs(low.tridiag).max()
  assert np.abs(run.tridiag - low.tridiag).max() <= 1e-10 * scale
  for d in range(2):
    np.testing.assert_allclose(np.sort(run.nodes[d]), exact, rtol=0,
                               atol=1e-9 * scale)
  # The Gram matrix, computed on the devices, is that of the bases.
  basis = np.concatenate([np.asarray(x).reshape(2 * n, -1)
                          for x in jax.tree.leaves(run.sharded_vecs)], axis=1)
  np.testing.assert_allclose(run.gram, basis @ basis.T, rtol=0, atol=1e-12)
  # The bases: rows dealt over the data axis too.
  _assert_laid_out_like(run.sharded_vecs, placed, 2, ('data',))


def test_the_trace_is_deflated_as_on_the_flat_path(mlp, spectra):
  _, _, _, dense = mlp
  _, run, flat = spectra
  exact = float(np.trace(dense))
  assert run.summary()['trace_deflated']
  flat_error = abs(flat.trace - exact)
  assert abs(run.trace - exact) <= max(10 * flat_error, 1e-9 * abs(exact))
  # Plain Hutchinson (no deflation) of the same draws is far off.
  assert abs(run.dim * run.tridiag[:, 0, 0].mean() - exact) > 1e-3


def test_ritz_vectors_from_the_sharded_basis_are_the_flat_ones(mlp, spectra):
  _, params, _, dense = mlp
  placed, run, flat = spectra
  eigenvalues = np.linalg.eigvalsh(dense)
  assert np.min(np.diff(eigenvalues[-4:])) > 1e-3   # distinct: unique vectors
  with jax.enable_x64(True):
    vectors = run.ritz_vectors(3, pytree=True)
    _assert_laid_out_like(vectors, placed, 1)
    reference = flat.ritz_vectors(3, pytree=True)
    got = np.stack([_flat(jax.tree.map(lambda x: x[i], vectors))
                    for i in range(3)])
    want = np.stack([_flat(jax.tree.map(lambda x: x[i], reference))
                     for i in range(3)])
    signs = np.sign(np.sum(got * want, axis=1, keepdims=True))
    np.testing.assert_allclose(got * signs, want, rtol=0, atol=1e-8)
    g = jax.tree.map(lambda x: np.cos(np.arange(x.size).reshape(x.shape)),
                     params)
    for k in (1, 3):
      assert run.subspace_fraction(g, k) == pytest.approx(
          flat.subspace_fraction(g, k), abs=1e-10)
    assert run.subspace_fraction(_flat(g), 3) == pytest.approx(
        flat.subspace_fraction(g, 3), abs=1e-10)
    # Principal angles of sharded results, from on-device inner products:
    # the same top-3 space as the flat run's.
    for other in (run, flat):
      assert np.max(sd.subspace_overlap(run, other, 3)) < 1e-6
    with pytest.raises(ValueError, match='pytree'):
      run.ritz_vectors(3)
    with pytest.raises(ValueError, match='vector'):
      run.subspace_fraction(jax.tree.map(np.zeros_like, g), 3)


def test_slq_of_a_sharded_operator_is_hessian_spectrum(mlp, spectra):
  loss, _, data, _ = mlp
  placed, run, _ = spectra
  with jax.enable_x64(True):
    op, _, n = sd.get_hvp_fn(loss, placed, data, batch_size=BATCH)
    again = sd.slq(op, order=n, num_draws=2, rng_key=jax.random.key(3))
    np.testing.assert_array_equal(again.tridiag, run.tridiag)
    assert again.sharded_vecs is None and again.gram is not None
    assert again.trace == run.trace
    with pytest.raises(ValueError, match='dim'):
      sd.slq(op, n - 1, order=4)


def test_block_spectra_on_sharded_params_are_the_exact_blocks(mlp):
  loss, params, data, dense = mlp
  offsets = {'b1': (0, 8), 'w1': (8, 56), 'w2': (56, 88)}   # ravel order
  with jax.enable_x64(True):
    placed = _placed('fsdp8', params)
    blocks = sd.block_spectra(loss, placed, data, batch_size=BATCH, order=48,
                              num_draws=2, rng_key=jax.random.key(1))
    flat = sd.block_spectra(loss, params, data, batch_size=BATCH, order=48,
                            num_draws=1, rng_key=jax.random.key(1),
                            include_full=False)
  assert list(blocks) == list(flat) == ['b1', 'w1', 'w2']
  assert blocks.sizes == {'b1': 8, 'w1': 48, 'w2': 32}
  for name, (a, b) in offsets.items():
    exact = np.linalg.eigvalsh(dense[a:b, a:b])
    result = blocks[name]
    assert result.dim == b - a
    np.testing.assert_array_equal(result.num_steps, [b - a, b - a])
    for d in range(2):
      ritz = np.linalg.eigvalsh(result.tridiag[d, :b - a, :b - a])
      np.testing.assert_allclose(ritz, exact, rtol=0, atol=1e-10)
    flat_ritz = np.linalg.eigvalsh(flat[name].tridiag[0, :b - a, :b - a])
    np.testing.assert_allclose(flat_ritz, exact, rtol=0, atol=1e-10)
    assert result.trace == pytest.approx(exact.sum(), abs=1e-9)
  assert blocks.full.dim == 88 and blocks.distance > 0


def test_options_the_sharded_path_cannot_honour_are_named(mlp, spectra):
  loss, params, data, _ = mlp
  placed, _, _ = spectra
  call = lambda **kw: sd.hessian_spectrum(loss, placed, data,
                                          **{'batch_size': BATCH, **kw})
  for name, value in (('basis', 'host'), ('draws_per_pass', 1),
                      ('progress', True), ('devices', jax.devices()[:1]),
                      ('accum_dtype', jnp.float32),
                      ('projection_masks', np.ones((1, 88)))):
    with pytest.raises(ValueError, match=name):
      call(order=4, **{name: value})
  with pytest.raises(ValueError, match='batch_size'):
    call(batch_size=None, order=4)
  with pytest.raises(ValueError, match='dataset'):
    sd.get_hvp_fn(loss, placed, [data], batch_size=BATCH)
  with pytest.raises(ValueError, match='checkpoint_dir'):
    sd.block_spectra(loss, placed, data, batch_size=BATCH, order=4,
                     checkpoint_dir='/tmp/unused')
  with pytest.raises(ValueError, match='params'):
    sd.get_hvp_fn(loss, {**placed, 'b1': params['b1']}, data,
                  batch_size=BATCH)


@pytest.mark.slow
def test_a_checkpointed_sharded_spectrum_resumes_to_the_same_result(
    mlp, tmp_path):
  loss, params, data, _ = mlp
  placed = _placed('fsdp8', jax.tree.map(lambda x: x.astype(np.float32),
                                         params))
  data = jax.tree.map(lambda x: x.astype(np.float32), data)
  run = lambda **kw: sd.hessian_spectrum(
      loss, placed, data, batch_size=BATCH, order=6, num_draws=2,
      rng_key=jax.random.key(4), **kw)
  plain = run()
  saved = run(checkpoint_dir=str(tmp_path), checkpoint_every=3)
  resumed = run(checkpoint_dir=str(tmp_path), checkpoint_every=3)
  for result in (saved, resumed):
    np.testing.assert_allclose(result.tridiag, plain.tridiag, rtol=0,
                               atol=1e-6)
    np.testing.assert_allclose(result.gram, plain.gram, rtol=0, atol=1e-6)
  assert resumed.trace == pytest.approx(plain.trace, rel=1e-5)


def test_principal_angles_from_inner_products_are_the_direct_ones():
  # The sharded subspace_overlap's formula against QR + SVD of the rows.
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
  b[0] = a[0] + 0.1 * b[0]                         # one small angle
  direct = estimators.principal_angles(a, b)
  from_gram = estimators._principal_angles_from_gram(a @ a.T, b @ b.T, a @ b.T)
  np.testing.assert_allclose(from_gram, direct, rtol=0, atol=1e-10)
  assert direct[0] < 0.2 < direct[-1]
