"""Writes the notebooks of colab/ (outputs stripped) and their README figures.

The notebooks are generated from the cells below so that they stay small in
git and easy to review; edit this file, not the .ipynb files, then run

  python colab/build_notebooks.py             # writes colab/*.ipynb
  python colab/build_notebooks.py --figures   # also runs them (full size unless
                                              # SPECTRAL_DENSITY_NOTEBOOK_SMOKE=1)
                                              # and saves docs/figures/*.png
  python colab/build_notebooks.py --figures --only quickstart

Every notebook reads SPECTRAL_DENSITY_NOTEBOOK_SMOKE: '1' shrinks data, steps
and Lanczos orders while running the same cells (tests/test_notebooks.py).
The cell tagged `readme-figure` in each notebook draws the figure the README
shows.
"""

import argparse
import base64
import copy
import os
import pathlib
import textwrap
import time

import nbformat

COLAB_DIR = pathlib.Path(__file__).resolve().parent
REPO = COLAB_DIR.parent
FIGURE_DIR = REPO / 'docs' / 'figures'
FIGURE_TAG = 'readme-figure'
SMOKE_ENV = 'SPECTRAL_DENSITY_NOTEBOOK_SMOKE'
COLAB_URL = ('https://colab.research.google.com/github/OWNER/spectral_density/'
             'blob/main/colab/{name}.ipynb')


def md(text):
  """A markdown cell from an indented block of text."""
  return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text, tags=()):
  """A code cell from an indented block of code, with optional tags."""
  cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
  if tags:
    cell.metadata['tags'] = list(tags)
  return cell


def badge(name):
  """Markdown of the "Open in Colab" badge of colab/NAME.ipynb."""
  return (f'[![Open In Colab](https://colab.research.google.com/assets/'
          f'colab-badge.svg)]({COLAB_URL.format(name=name)})')


INSTALL = code('''
    # Colab: install spectral_density from GitHub. Where it already imports (a
    # checkout installed with `pip install -e .`, CI) nothing is installed.
    REPO_URL = 'https://github.com/OWNER/spectral_density'  # placeholder: the repository's URL

    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec('spectral_density') is None:
      # pip's plain `jax` runs on the CPU only: ask for the runtime's chip.
      if shutil.which('nvidia-smi'):
        JAX_PACKAGE = 'jax[cuda12]'
      elif os.path.exists('/dev/accel0') or 'COLAB_TPU_ADDR' in os.environ:
        JAX_PACKAGE = 'jax[tpu]'
      else:
        JAX_PACKAGE = 'jax'
      %pip install -q --upgrade "{JAX_PACKAGE}" "spectral_density[notebook] @ git+{REPO_URL}"
    ''')

SMOKE_LINE = (f"SMOKE = os.environ.get('{SMOKE_ENV}') == '1'  "
              '# CI: the same cells, small sizes')


# ---------------------------------------------------------------------------
# quickstart.ipynb
# ---------------------------------------------------------------------------

QUICKSTART = [
    md(f'''
    # Quickstart: the Hessian spectrum of a small network, exactly and by SLQ

    {badge('quickstart')}

    Ghorbani, Krishnan & Xiao (ICML 2019) estimate the eigenvalue density of a
    neural network's Hessian with **stochastic Lanczos quadrature** (SLQ): 90
    Hessian-vector products per random start vector, never the matrix itself.
    Their accuracy check is a network small enough to also diagonalise
    exactly: the 784-20-10 tanh MLP on Fashion-MNIST (15,910 parameters).

    This notebook redoes that check in a few cells:

    1. train the MLP briefly on the Fashion-MNIST subset shipped with the
       package (3,000 images);
    2. build the exact Hessian of the training loss and its eigenvalues;
    3. estimate the same spectrum with order-90 SLQ;
    4. see what the order, the number of draws and the smoothing width do.

    Runs on a CPU, GPU or TPU runtime. The exact eigendecomposition of the
    15,910 x 15,910 Hessian runs on the host CPU: about 5 minutes on 2 cores
    (3 of them in `eigh`) and 9 GB of memory; everything else takes seconds.
    For a one-minute version set `POOL = 2` below (14x14 images, 4,150
    parameters).
    '''),
    INSTALL,
    code(f'''
    import os

    {SMOKE_LINE}
    POOL = 4 if SMOKE else 1           # average-pool the 28x28 images to 28/POOL;
                                       # 1: the paper's 784-20-10 MLP
    NUM_EXAMPLES = 1000 if SMOKE else 3000
    TRAIN_STEPS = 300                  # SGD steps of 100 examples
    ORDER = 90                         # Lanczos steps per draw (the paper's)
    NUM_DRAWS = 4 if SMOKE else 10     # random start vectors
    '''),
    code('''
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax

    import spectral_density as sd
    from experiments import input_pipeline
    from experiments import models
    from spectral_density import plotting

    # float64 makes the exact check exact. TPUs have no native float64: there
    # everything stays float32, with full-precision float32 matrix products
    # (a TPU's default rounds their inputs to bfloat16).
    USE_FLOAT64 = jax.default_backend() != 'tpu'
    jax.config.update('jax_enable_x64', USE_FLOAT64)
    if not USE_FLOAT64:
      jax.config.update('jax_default_matmul_precision', 'highest')
    DTYPE = jnp.float64 if USE_FLOAT64 else jnp.float32
    print(jax.default_backend(), jax.local_device_count(), 'device(s);',
          'float64' if USE_FLOAT64 else 'float32')
    '''),
    md('''
    ## Data: the Fashion-MNIST subset shipped with the package

    The first `NUM_EXAMPLES` of the 3,000 class-balanced training images, in
    [0, 1]. The Hessian below is that of the mean loss over all of them.
    '''),
    code('''
    CLASSES = ('T-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
               'shirt', 'sneaker', 'bag', 'boot')

    raw = input_pipeline.read_embedded_fashion_mnist('train')
    images = raw['image'][:NUM_EXAMPLES].astype(np.float64) / 255.0
    n, h, w, c = images.shape
    images = images.reshape(n, h // POOL, POOL, w // POOL, POOL, c).mean((2, 4))
    data = {'image': images.astype(DTYPE), 'label': raw['label'][:NUM_EXAMPLES]}

    fig, axes = plt.subplots(1, 10, figsize=(12, 1.6))
    for label, ax in enumerate(axes):
      ax.imshow(images[np.argmax(data['label'] == label), ..., 0], cmap='gray')
      ax.set_title(CLASSES[label], fontsize=9)
      ax.axis('off')
    plt.show()
    print({k: v.shape for k, v in data.items()})
    '''),
    md('''
    ## The network and a short training run

    The paper's MLP: one hidden layer of 20 tanh units, cross-entropy loss
    (`experiments.models.MLP`). A few hundred SGD steps take it away from
    initialisation, where the spectrum is nearly all bulk, to a point with the
    outliers of a trained network.
    '''),
    code('''
    model = models.MLP(features=(20,), num_classes=10, param_dtype=DTYPE)
    params = model.init(jax.random.key(0), data['image'][:1])['params']


    def loss(params, batch):
      """Mean cross-entropy of a batch: the function whose Hessian we study."""
      logits = model.apply({'params': params}, batch['image'])
      return models.output_loss(logits, batch)


    optimizer = optax.sgd(0.1, momentum=0.9)
    opt_state = optimizer.init(params)


    @jax.jit
    def train_step(params, opt_state, batch):
      value, grads = jax.value_and_grad(loss)(params, batch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, value


    rng = np.random.default_rng(0)
    losses = []
    for step in range(TRAIN_STEPS):
      indices = rng.integers(0, NUM_EXAMPLES, 100)
      batch = jax.tree.map(lambda x: x[indices], data)
      params, opt_state, value = train_step(params, opt_state, batch)
      losses.append(float(value))
    num_params = sum(p.size for p in jax.tree.leaves(params))
    print(f'{num_params:,} parameters; loss over all {NUM_EXAMPLES} examples: '
          f'{float(loss(params, data)):.3f}')
    plt.figure(figsize=(5, 2.5))
    plt.plot(losses)
    plt.xlabel('step')
    plt.ylabel('batch loss')
    plt.show()
    '''),
    md('''
    ## The exact spectrum

    `sd.get_hvp_fn(loss, params, data, batch_size=...)` returns the Hessian of
    the mean loss over the whole dataset as a linear operator: a function of a
    flat vector `v [num_params]` returning `H v`, batched over the data and
    spread over all local devices. `sd.dense_matrix` applies it to every unit
    vector (for small models only) and `sd.exact_eigenvalues` diagonalises the
    result.
    '''),
    code('''
    hvp_fn, unravel, num_params = sd.get_hvp_fn(loss, params, data,
                                                batch_size=500)
    start = time.perf_counter()
    hessian = sd.dense_matrix(hvp_fn, num_params, dtype=DTYPE)
    print(f'dense Hessian {hessian.shape}: {time.perf_counter() - start:.1f} s')
    start = time.perf_counter()
    exact = sd.exact_eigenvalues(hessian)
    print(f'eigh: {time.perf_counter() - start:.1f} s')
    del hessian
    print(f'lambda_max = {exact[-1]:.6f}, lambda_min = {exact[0]:.6f}, '
          f'trace = {exact.sum():.4f}')
    '''),
    md('''
    ## The SLQ estimate

    `sd.slq` runs `NUM_DRAWS` Lanczos iterations of `ORDER` steps from random
    unit vectors (all draws share each pass over the data) and returns a
    `SpectrumResult`: Gauss quadrature nodes and weights per draw, from which
    the density and the estimators come without further products.
    '''),
    code('''
    start = time.perf_counter()
    result = sd.slq(hvp_fn, num_params, order=ORDER, num_draws=NUM_DRAWS,
                    rng_key=jax.random.key(0))
    print(f'SLQ, order {ORDER}, {NUM_DRAWS} draws: '
          f'{time.perf_counter() - start:.1f} s '
          f'({ORDER} products over {NUM_EXAMPLES} examples)\\n')
    print(' k   exact         SLQ')
    for k, (e, s) in enumerate(zip(exact[::-1][:5], result.top_eigenvalues(5))):
      print(f'{k + 1:2d}   {e:.9f}   {s:.9f}')
    print(f'\\nlambda_min: exact {exact[0]:.6f}, SLQ {result.lambda_min:.6f}')
    print(f'trace:      exact {exact.sum():.4f}, SLQ {result.trace:.4f} '
          '(Hutchinson: a noisy estimate)')
    '''),
    md('''
    The extreme eigenvalues are Ritz values, exact to the last digits: Lanczos
    finds the outliers first. The density is a smoothed version of the
    quadrature: a Gaussian of width `sigma` around each node, weighted. Drawn
    against the exact eigenvalues smoothed with the same `sigma` (dashed), on
    the paper's log scale:
    '''),
    code('''
    width = exact[-1] - exact[0]
    sigma = 1e-3 * width
    grid = np.linspace(exact[0] - 0.02 * width, exact[-1] + 0.02 * width, 20001)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax in axes:
      plotting.plot_spectrum(result, grid=grid, sigma=sigma, exact=exact, ax=ax,
                             label=f'SLQ, order {ORDER}, {NUM_DRAWS} draws')
    axes[0].set_title('whole spectrum: the bulk near 0 and a few outliers')
    axes[1].set_xlim(exact[0] - 0.01 * width, 0.1 * width)
    axes[1].set_title('zoom on the bulk')
    plt.tight_layout()
    plt.show()
    '''),
    md('''
    ## Order, draws and smoothing width

    What each knob does, against the exact density (dashed), with the L1
    distance between the two curves in the legend:

    * **order**: more Lanczos steps resolve more of the spectrum; the outliers
      converge first, the bulk last;
    * **draws**: each draw is an unbiased but noisy estimate of the density;
      averaging draws reduces the noise of the bulk;
    * **sigma**: the kernel width trades resolution for smoothness: below the
      spacing of the quadrature nodes the estimate breaks into spikes.
    '''),
    code('''
    def smoothed(nodes, weights, grid, sigma):
      """Density of quadrature nodes [draws, order], unrenormalised."""
      return sd.eigv_to_density(nodes, weights, grid, sigma=sigma,
                                normalize=False)[0]


    def l1(estimate, reference, grid):
      return float(np.trapezoid(np.abs(estimate - reference), grid))


    by_order = {}
    for order in (10, 30):
      r = sd.slq(hvp_fn, num_params, order=order, num_draws=NUM_DRAWS,
                 rng_key=jax.random.key(0))
      by_order[f'order {order}'] = (r.nodes, r.weights)
    by_order[f'order {ORDER}'] = (result.nodes, result.weights)
    by_draws = {f'{d} draw' + 's' * (d > 1): (result.nodes[:d], result.weights[:d])
                for d in sorted({1, 2, NUM_DRAWS})}
    SIGMA = 1e-3 * width                # the first two panels
    FACTORS = (1e-4, 1e-3, 1e-2)        # the third: sigma / (lambda_max - lambda_min)
    grid = np.linspace(exact[0] - 0.02 * width, exact[-1] + 0.02 * width, 20001)
    reference = sd.exact_density(exact, grid, SIGMA)
    knobs = {}                          # L1 distances, kept for the summary
    '''),
    code('''
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3), sharey=True)
    for ax, (title, curves) in zip(
        axes, ((f'order ({NUM_DRAWS} draws, sigma = 1e-3 x range)', by_order),
               (f'draws (order {ORDER}, sigma = 1e-3 x range)', by_draws))):
      for label, (nodes, weights) in curves.items():
        density = smoothed(nodes, weights, grid, SIGMA)
        knobs[label] = l1(density, reference, grid)
        plotting.plot_density(grid, density, ax=ax,
                              label=f'{label}: L1 {knobs[label]:.2g}')
      plotting.plot_density(grid, reference, ax=ax, color='black',
                            linestyle='--', linewidth=1, label='exact')
      ax.set_title(title)
    for factor in FACTORS:
      sigma = factor * width
      density = smoothed(result.nodes, result.weights, grid, sigma)
      reference_sigma = sd.exact_density(exact, grid, sigma)
      knobs[f'sigma {factor:g}'] = l1(density, reference_sigma, grid)
      # Narrow kernels drawn first, so that the smooth curves stay visible.
      line = axes[2].plot(grid, np.maximum(density, plotting.LOG_FLOOR),
                          label=f'sigma {factor:g} x range: L1 '
                          f'{knobs[f"sigma {factor:g}"]:.2g}')[0]
      axes[2].plot(grid, np.maximum(reference_sigma, plotting.LOG_FLOOR), '--',
                   color='black', linewidth=0.8)
    axes[2].set_xlabel('eigenvalue')
    axes[2].legend()
    axes[2].set_title(f'smoothing width (order {ORDER}, {NUM_DRAWS} draws)')
    # The bulk and the smaller outliers; the largest ones lie further right.
    for ax in axes:
      ax.set_xlim(exact[0] - 0.02 * width, exact[0] + 0.4 * width)
    fig.suptitle(f'SLQ against the exact Hessian spectrum of a {num_params:,}-'
                 'parameter MLP on Fashion-MNIST', y=1.02)
    plt.tight_layout()
    plt.show()
    ''', tags=[FIGURE_TAG]),
    md('''
    Dashed: the exact density at the same width. At order 10 only the largest
    outliers have converged and the bulk is a few broad bumps; at order 90 the
    estimate follows the exact density closely. More draws lower the noise of
    the bulk. A narrower kernel resolves more, until it falls below the spacing
    of the quadrature nodes in the pile of near-zero eigenvalues: there the
    estimate breaks into spikes, a bias that more draws do not remove.

    ## In numbers
    '''),
    code('''
    summary = {
        'num_params': int(num_params),
        'num_examples': NUM_EXAMPLES,
        'exact_lambda_max': float(exact[-1]),
        'slq_lambda_max': result.lambda_max,
        'exact_lambda_min': float(exact[0]),
        'slq_lambda_min': result.lambda_min,
        'exact_top5': exact[::-1][:5].tolist(),
        'slq_top5': result.top_eigenvalues(5).tolist(),
        'l1': knobs,
    }
    summary
    '''),
]

# ---------------------------------------------------------------------------
# your_model.ipynb
# ---------------------------------------------------------------------------

YOUR_MODEL = [
    md(f'''
    # The spectrum of your model

    {badge('your_model')}

    `spectral_density` needs three things: a loss `loss(params, batch) ->
    scalar` (the mean over the batch), the parameters (any pytree of arrays)
    and the data. This notebook goes through the cases you will meet:

    1. a model written in plain JAX;
    2. a Flax module with batch norm: the Hessian of the training loss (batch
       statistics) or of the evaluation loss (running averages);
    3. data too large for the device: batches streamed from the host;
    4. several devices;
    5. the Hessian, the Gauss-Newton matrix and the empirical Fisher on one
       plot;
    6. the top eigenvectors (Ritz vectors) and what they say.

    Runs on a CPU, GPU or TPU runtime, in a few minutes on a CPU.
    '''),
    INSTALL,
    code(f'''
    import os

    {SMOKE_LINE}
    NUM_EXAMPLES = 256 if SMOKE else 1000  # the Hessian is over all of them
    BATCH_SIZE = 64 if SMOKE else 250      # examples per Hessian batch
    TRAIN_STEPS = 20 if SMOKE else 400
    ORDER = 16 if SMOKE else 60            # Lanczos steps
    NUM_DRAWS = 1 if SMOKE else 2

    # On a CPU runtime, split the processor into 2 XLA devices so that the
    # multi-device code below really runs on several devices. This must happen
    # before jax is imported; GPUs and TPUs are not affected.
    if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                 ' --xla_force_host_platform_device_count=2')
    '''),
    code('''
    import time

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax

    import spectral_density as sd
    from experiments import input_pipeline
    from spectral_density import plotting

    raw = input_pipeline.read_embedded_fashion_mnist('train')
    data = {'image': raw['image'][:NUM_EXAMPLES].astype(np.float32) / 255.0,
            'label': raw['label'][:NUM_EXAMPLES]}
    print(jax.local_devices())
    print({k: v.shape for k, v in data.items()})


    def random_batches(seed, batch_size):
      """Endless random training batches of `data`."""
      rng = np.random.default_rng(seed)
      while True:
        indices = rng.integers(0, NUM_EXAMPLES, batch_size)
        yield jax.tree.map(lambda x: x[indices], data)
    '''),
    md('''
    ## 1. A model in plain JAX

    Parameters are any pytree (here a list of dicts); the loss is any
    differentiable function of `(params, batch)` returning the **mean** loss
    of the batch. `sd.hessian_spectrum` builds the full-dataset Hessian
    operator (`sd.get_hvp_fn`) and runs SLQ (`sd.slq`) in one call.
    '''),
    code('''
    def init_mlp(key, sizes):
      keys = jax.random.split(key, len(sizes) - 1)
      return [{'w': jax.random.normal(k, (m, n)) / np.sqrt(m), 'b': jnp.zeros(n)}
              for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


    def mlp_loss(params, batch):
      x = batch['image'].reshape(batch['image'].shape[0], -1)
      for layer in params[:-1]:
        x = jax.nn.relu(x @ layer['w'] + layer['b'])
      logits = x @ params[-1]['w'] + params[-1]['b']
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']).mean()


    # A short training run, to leave initialisation.
    optimizer = optax.sgd(0.05, momentum=0.9)


    @jax.jit
    def mlp_step(params, opt_state, batch):
      updates, opt_state = optimizer.update(jax.grad(mlp_loss)(params, batch),
                                            opt_state, params)
      return optax.apply_updates(params, updates), opt_state


    mlp_params = init_mlp(jax.random.key(0), [784, 32, 10])
    opt_state = optimizer.init(mlp_params)
    for _, batch in zip(range(TRAIN_STEPS), random_batches(0, 64)):
      mlp_params, opt_state = mlp_step(mlp_params, opt_state, batch)

    start = time.perf_counter()
    mlp_spectrum = sd.hessian_spectrum(mlp_loss, mlp_params, data,
                                       batch_size=BATCH_SIZE, order=ORDER,
                                       num_draws=NUM_DRAWS)
    print(f'{mlp_spectrum.dim:,} parameters, SLQ in '
          f'{time.perf_counter() - start:.1f} s')
    print(mlp_spectrum.summary())
    plotting.plot_spectrum(mlp_spectrum, label='plain-JAX MLP')
    plt.title('Hessian spectrum of a plain-JAX MLP')
    plt.show()
    '''),
    md('''
    `summary()` holds the paper's scalar estimators: the extreme eigenvalues
    (Ritz values, exact at the ends of the spectrum), `lambda_1/lambda_k`, the
    trace (Hutchinson), and the negative mass (how much of the density lies
    below 0).

    ## 2. A Flax module with batch norm

    Batch norm makes the loss of an example depend on the other examples of
    its batch (in training), so there are two Hessians to speak of:

    * **train mode**, the function SGD descends: every batch normalised by its
      own statistics. The Hessian then depends on the batch size: give
      `batch_size` the training batch size;
    * **eval mode**: the running averages, a function of each example alone.

    The variables other than `params` (`batch_stats`) are closed over: the
    Hessian is with respect to `params` only.
    '''),
    code('''
    class SmallCNN(nn.Module):
      @nn.compact
      def __call__(self, x, train):
        for features in (8, 16):
          x = nn.Conv(features, (3, 3), strides=2)(x)
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
          x = nn.relu(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


    cnn = SmallCNN()
    variables = cnn.init(jax.random.key(1), data['image'][:1], train=False)
    cnn_params, batch_stats = variables['params'], variables['batch_stats']


    @jax.jit
    def cnn_step(params, batch_stats, opt_state, batch):
      """One SGD step; training also updates the running averages."""
      def loss(params):
        logits, updates = cnn.apply({'params': params, 'batch_stats': batch_stats},
                                    batch['image'], train=True,
                                    mutable=['batch_stats'])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, batch['label']).mean(), updates['batch_stats']
      grads, batch_stats = jax.grad(loss, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), batch_stats, opt_state


    opt_state = optimizer.init(cnn_params)
    for _, batch in zip(range(TRAIN_STEPS), random_batches(1, BATCH_SIZE)):
      cnn_params, batch_stats, opt_state = cnn_step(cnn_params, batch_stats,
                                                    opt_state, batch)


    def cnn_logits(params, batch, train):
      variables = {'params': params, 'batch_stats': batch_stats}
      if train:
        # Batch statistics; the updated running averages are dropped.
        return cnn.apply(variables, batch['image'], train=True,
                         mutable=['batch_stats'])[0]
      return cnn.apply(variables, batch['image'], train=False)


    def per_example_loss(params, batch, train=False):
      return optax.softmax_cross_entropy_with_integer_labels(
          cnn_logits(params, batch, train), batch['label'])


    def train_mode_loss(params, batch):
      return per_example_loss(params, batch, train=True).mean()


    def eval_mode_loss(params, batch):
      return per_example_loss(params, batch).mean()


    key = jax.random.key(2)
    train_mode = sd.hessian_spectrum(train_mode_loss, cnn_params, data,
                                     batch_size=BATCH_SIZE, order=ORDER,
                                     num_draws=NUM_DRAWS, rng_key=key)
    # The two steps of `hessian_spectrum`, to keep the operator (sections 3 to
    # 6 use it) and the Lanczos basis (for the eigenvectors of section 6).
    hvp_fn, unravel, num_params = sd.get_hvp_fn(eval_mode_loss, cnn_params, data,
                                                batch_size=BATCH_SIZE)
    eval_mode = sd.slq(hvp_fn, num_params, order=ORDER, num_draws=NUM_DRAWS,
                       rng_key=key, keep_vecs=True)
    ax = None
    for name, spectrum in (('train mode (batch statistics)', train_mode),
                           ('eval mode (running averages)', eval_mode)):
      ax = plotting.plot_spectrum(spectrum, ax=ax, label=name)
      print(f'{name}: lambda_max = {spectrum.lambda_max:.4f}')
    ax.set_title(f'batch-norm CNN ({num_params:,} parameters)')
    plt.show()
    '''),
    md('''
    Same network, same data, two different functions: here the eval-mode
    Hessian has far larger outliers. With the statistics fixed, the
    normalisation no longer cancels changes in the scale of each layer's
    output; `batchnorm_outliers.ipynb` shows the same effect on a ResNet
    trained with fixed (population) statistics.
    '''),
    md('''
    ## 3. Data too large for the device: stream batches from the host

    An array dataset is copied to the devices once, which is fastest. When it
    does not fit, pass a **list of batches** or a **callable returning a fresh
    iterator of batches** (a generator reading files, a `tf.data` or `grain`
    pipeline, ...): every Hessian-vector product then makes one pass over it,
    one batch per device at a time, and only those batches are ever on the
    devices. Each batch is weighted by its number of examples, so a short last
    batch is fine.

    The same batches give the same Hessian, so the same spectrum:
    '''),
    code('''
    def host_batches():
      """One pass over the data, a batch at a time (here from host memory)."""
      for start in range(0, NUM_EXAMPLES, BATCH_SIZE):
        yield {k: v[start:start + BATCH_SIZE] for k, v in data.items()}


    def relative_difference(a, b, k=5):
      """Largest difference of the top-k eigenvalues, relative to lambda_max."""
      return float(np.max(np.abs(a.top_eigenvalues(k) - b.top_eigenvalues(k))) /
                   a.lambda_max)


    streamed = sd.hessian_spectrum(eval_mode_loss, cnn_params, host_batches,
                                   order=ORDER, num_draws=NUM_DRAWS, rng_key=key)
    stream_difference = relative_difference(eval_mode, streamed)
    print('top 5, on the devices:', eval_mode.top_eigenvalues(5))
    print('top 5, streamed:      ', streamed.top_eigenvalues(5))
    print(f'largest difference / lambda_max: {stream_difference:.1e} '
          '(float32 sums in another order)')
    '''),
    md('''
    ## 4. Several devices

    By default the products use every device (on one host:
    `jax.local_devices()`): the batches are dealt to the devices, each sums
    the products of its own batches, and one `psum` adds them up. `devices=`
    picks a subset. The batch layout does not depend on the number of
    devices, so neither does the result. On a multi-host TPU pod every host
    runs the same call with the same arrays (or memory maps of them) and reads
    only its own devices' batches.

    The Lanczos basis (`order` vectors as long as the parameters) is the
    largest thing a run keeps. By default every device holds all of it;
    `basis='sharded'` gives each device a slice of every vector instead, so
    that D devices hold 1/D of it each, and inner products add the slices
    with a `psum`.
    '''),
    code('''
    devices = jax.local_devices()
    print(f'{len(devices)} local devices:', devices)
    one_device = sd.hessian_spectrum(eval_mode_loss, cnn_params, data,
                                     batch_size=BATCH_SIZE, order=ORDER,
                                     num_draws=NUM_DRAWS, rng_key=key,
                                     devices=devices[:1])
    devices_difference = relative_difference(eval_mode, one_device)
    print(f'top 5, {len(devices)} devices:', eval_mode.top_eigenvalues(5))
    print('top 5, 1 device: ', one_device.top_eigenvalues(5))
    print(f'largest difference / lambda_max: {devices_difference:.1e}')

    split = sd.hessian_spectrum(eval_mode_loss, cnn_params, data,
                                batch_size=BATCH_SIZE, order=ORDER,
                                num_draws=NUM_DRAWS, rng_key=key,
                                basis='sharded')
    sharded_difference = relative_difference(eval_mode, split)
    print(f'top 5, basis split over {len(devices)} devices:',
          split.top_eigenvalues(5))
    print(f'largest difference / lambda_max: {sharded_difference:.1e}')
    '''),
    md('''
    ## 5. Hessian, Gauss-Newton and empirical Fisher

    `curvature=` picks the matrix, and with it what `loss` must be:

    | `curvature` | matrix | `loss` |
    |---|---|---|
    | `'hessian'` | $H = \\nabla^2 L$ | `loss(params, batch) -> scalar` |
    | `'ggn'` | $G = J^\\top H_{out} J$ | `(model_fn, output_loss)`: `model_fn(params, batch) -> outputs`, `output_loss(outputs, batch) -> scalar` |
    | `'fisher'` | $F = \\frac{1}{N}\\sum_i g_i g_i^\\top$ | `loss(params, batch) -> [B]`, the per-example losses |

    The Gauss-Newton matrix drops the term of the Hessian that holds the
    network's second derivatives; for a loss convex in the outputs
    (cross-entropy) what is left is positive semi-definite. The empirical
    Fisher, a mean of outer products of per-example gradients, is positive
    semi-definite too.
    '''),
    code('''
    def output_loss(logits, batch):
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']).mean()


    by_curvature = {
        'Hessian': eval_mode,
        'Gauss-Newton': sd.hessian_spectrum(
            (lambda p, b: cnn_logits(p, b, False), output_loss), cnn_params,
            data, batch_size=BATCH_SIZE, order=ORDER, num_draws=NUM_DRAWS,
            rng_key=key, curvature='ggn'),
        'empirical Fisher': sd.hessian_spectrum(
            per_example_loss, cnn_params, data, batch_size=BATCH_SIZE,
            order=ORDER, num_draws=NUM_DRAWS, rng_key=key, curvature='fisher'),
    }
    for name, spectrum in by_curvature.items():
      print(f'{name:17s} lambda_max {spectrum.lambda_max:9.4f}   '
            f'lambda_min {spectrum.lambda_min:9.2e}')
    '''),
    code('''
    lo = min(s.lambda_min for s in by_curvature.values())
    hi = max(s.lambda_max for s in by_curvature.values())
    negative = max(-lo, 1e-3 * (hi - lo))   # extent of the negative eigenvalues
    views = (  # (grid, sigma): the whole spectrum, then a close-up of 0
        (np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 5000),
         3e-3 * (hi - lo)),
        (np.linspace(-1.5 * negative, 3 * negative, 5000), negative / 20))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, spectrum in by_curvature.items():
      for ax, (grid, sigma) in zip(axes, views):
        density, _ = spectrum.density(grid, sigma, normalize=False)
        plotting.plot_density(grid, density, ax=ax, label=name)
    axes[0].set_title(f'the same CNN, {NUM_EXAMPLES} examples')
    axes[1].set_title('close to 0: only the Hessian has negative eigenvalues')
    plt.tight_layout()
    plt.show()
    ''', tags=[FIGURE_TAG]),
    md('''
    ## 6. The top eigenvectors

    With `keep_vecs=True` the Lanczos basis is kept, and `ritz_vectors(k)`
    gives unit approximations of the top-k eigenvectors (flat,
    `[k, num_params]`; `unravel` turns one back into a parameter pytree). Two
    checks and one use:

    * the residual $\\|Hv - \\lambda v\\| / \\lambda$: small for converged
      outliers;
    * where the vectors live: their squared norm per layer;
    * how much of the full-batch gradient lies in their span
      (`subspace_fraction`): the paper's gradient concentration.
    '''),
    code('''
    TOP_K = 4
    vectors = eval_mode.ritz_vectors(TOP_K)               # [k, num_params]
    # Their Rayleigh quotients: the Ritz values of the draw they come from.
    products = np.asarray(hvp_fn(vectors.astype(np.float32)))
    eigenvalues = np.sum(products * vectors, axis=1)
    residuals = (np.linalg.norm(products - eigenvalues[:, None] * vectors, axis=1)
                 / np.abs(eigenvalues))
    gradient_fraction = eval_mode.subspace_fraction(hvp_fn.gradient(), TOP_K)
    for i in range(TOP_K):
      print(f'lambda_{i + 1} = {eigenvalues[i]:.5f}, '
            f'|Hv - lambda v| / lambda = {residuals[i]:.1e}')
    print(f'fraction of the gradient in the top-{TOP_K} eigenspace: '
          f'{gradient_fraction:.3f}')

    layers = {}
    for i, vector in enumerate(vectors):
      for path, leaf in jax.tree_util.tree_leaves_with_path(unravel(vector)):
        layer = jax.tree_util.keystr(path[:1], simple=True, separator='/')
        layers.setdefault(layer, np.zeros(TOP_K))[i] += float(np.sum(leaf ** 2))
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = np.zeros(TOP_K)
    for layer, share in layers.items():
      ax.bar([f'v{i + 1}' for i in range(TOP_K)], share, bottom=bottom,
             label=layer)
      bottom += share
    ax.set_ylabel('share of squared norm')
    ax.set_title('where the top Hessian eigenvectors live')
    ax.legend(loc='center left', bbox_to_anchor=(1, 0.5))
    plt.tight_layout()
    plt.show()
    '''),
    md('## In numbers'),
    code('''
    summary = {
        'num_devices': len(devices),
        'mlp_lambda_max': mlp_spectrum.lambda_max,
        'bn_lambda_max': {'train mode': train_mode.lambda_max,
                          'eval mode': eval_mode.lambda_max},
        'stream_difference': stream_difference,
        'devices_difference': devices_difference,
        'sharded_difference': sharded_difference,
        'lambda_min': {k: v.lambda_min for k, v in by_curvature.items()},
        'lambda_max': {k: v.lambda_max for k, v in by_curvature.items()},
        'ritz_residuals': residuals.tolist(),
        'gradient_fraction': gradient_fraction,
    }
    summary
    '''),
]

# ---------------------------------------------------------------------------
# batchnorm_outliers.ipynb
# ---------------------------------------------------------------------------

BATCHNORM = [
    md(f'''
    # Batch norm and the outliers of the Hessian

    {badge('batchnorm_outliers')}

    Section 4 of Ghorbani, Krishnan & Xiao (ICML 2019) compares ResNet-32 on
    CIFAR-10 with and without batch norm and finds:

    * **without batch norm** the Hessian has a few large isolated eigenvalues,
      **outliers**, about as many as there are classes;
    * the gradient lies almost entirely in the **span of those outliers**, so
      they, not the bulk, set how fast SGD can go;
    * **with batch norm** the outliers are (mostly) gone and `lambda_max` stays
      small over training;
    * batch norm with **population statistics** (a fixed sample of the training
      set, not the mini-batch) brings the outliers back: it is the batch
      statistics that suppress them.

    This notebook trains the three networks for a short while, takes the
    Hessian spectrum of the training loss at a few steps, and plots what
    changes. The defaults run on a CPU runtime (Fashion-MNIST shipped with the
    package, 16x16 crops, a few hundred steps, a small Hessian set); the cell
    **Full size** below switches to CIFAR-10 and the paper's settings on a GPU
    or TPU runtime.
    '''),
    INSTALL,
    code(f'''
    import os

    {SMOKE_LINE}
    # Defaults for a CPU runtime (about 15 minutes); SMOKE shrinks everything.
    DATASET = 'fashion_mnist'   # the 3,000-image subset shipped with the package
    IMAGE_SIZE = 8 if SMOKE else 16     # centre crops of the 28x28 images
    BLOCKS_PER_STAGE = 1 if SMOKE else 5  # 5: ResNet-32 (3 stages x 5 blocks x 2 + 2)
    NUM_TRAIN = 256 if SMOKE else 3000
    NUM_TEST = 200 if SMOKE else 1000
    BATCH_SIZE = 8 if SMOKE else 64    # also the batch of the Hessian's batch norm
    NUM_STEPS = 2 if SMOKE else 200
    LEARNING_RATE = 0.05
    # The population-statistics network diverges at that rate (see Training).
    LEARNING_RATE_SCALE = {{'none': 1.0, 'batch': 1.0, 'population': 0.1}}
    WARMUP_STEPS = 1 if SMOKE else 20
    WEIGHT_DECAY = 1e-4
    SNAPSHOT_STEPS = (0, 2) if SMOKE else (0, 25, 50, 100, 200)
    HESSIAN_EXAMPLES = 64 if SMOKE else 128  # the first training examples
    ORDER = 12 if SMOKE else 30         # Lanczos steps per snapshot
    TOP_K = 10                          # outliers expected: the number of classes
    POPULATION_EXAMPLES = 64 if SMOKE else 1024
    POPULATION_REFRESH_STEPS = 50
    '''),
    md('''
    ## Full size (GPU / TPU runtime)

    On a GPU or TPU runtime this cell replaces the defaults by the real
    experiment: ResNet-32 on CIFAR-10 (downloaded, 170 MB), the paper's batch
    size, learning rate and weight decay (`configs/resnet32_cifar10.py`), the
    first 5,000 training steps, order-90 SLQ over 4,096 training examples
    (the population-statistics network still at a tenth of the learning
    rate). About half an hour on an A100, longer on a T4. Set `FULL_SIZE` by
    hand to override the choice.
    '''),
    code('''
    import jax

    FULL_SIZE = jax.default_backend() in ('gpu', 'tpu') and not SMOKE
    if FULL_SIZE:
      DATASET = 'cifar10'
      IMAGE_SIZE = 32
      BLOCKS_PER_STAGE = 5
      NUM_TRAIN = 50_000
      NUM_TEST = 10_000
      BATCH_SIZE = 128
      NUM_STEPS = 5_000
      LEARNING_RATE = 0.1
      WARMUP_STEPS = 200
      WEIGHT_DECAY = 1e-4
      SNAPSHOT_STEPS = (0, 100, 250, 500, 1_000, 2_500, 5_000)
      HESSIAN_EXAMPLES = 4_096
      ORDER = 90
      POPULATION_EXAMPLES = 2_048
      POPULATION_REFRESH_STEPS = 100
    print('full size' if FULL_SIZE else 'smoke' if SMOKE else 'CPU-sized defaults',
          'on', jax.default_backend())
    '''),
    code('''
    import tarfile
    import time
    import urllib.request

    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax

    import spectral_density as sd
    from configs import default
    from experiments import input_pipeline
    from experiments import models
    from spectral_density import plotting

    NORMS = ('none', 'batch', 'population')
    LABELS = {'none': 'no batch norm', 'batch': 'batch norm',
              'population': 'population batch norm'}
    COLORS = {'none': 'tab:red', 'batch': 'tab:blue', 'population': 'tab:green'}
    '''),
    md('''
    ## Data

    `experiments.input_pipeline` reads the data (`load_dataset` takes the
    `dataset` part of an experiment config), makes shuffled training batches
    (`train_batches`) and the fixed, unaugmented set the Hessian is taken over
    (`hessian_dataset`).
    '''),
    code('''
    config = default.get_config()
    config.dataset.num_train = NUM_TRAIN
    config.dataset.num_test = NUM_TEST
    config.dataset.image_size = IMAGE_SIZE
    if DATASET == 'cifar10':
      CIFAR_DIR = os.path.expanduser('~/.cache/cifar-10-batches-py')
      if not os.path.exists(CIFAR_DIR):
        archive, _ = urllib.request.urlretrieve(
            'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz')
        with tarfile.open(archive) as tar:
          tar.extractall(os.path.dirname(CIFAR_DIR), filter='data')
      config.dataset.name = 'cifar10_python'
      config.dataset.data_dir = CIFAR_DIR
      config.dataset.augmentation = 'cifar'
    else:
      config.dataset.name = 'embedded_fashion_mnist'
    train, test, info = input_pipeline.load_dataset(config)
    hessian_set = input_pipeline.hessian_dataset(train, info, HESSIAN_EXAMPLES)
    population_images = input_pipeline.hessian_dataset(
        train, info, POPULATION_EXAMPLES)['image']
    print(info)

    fig, axes = plt.subplots(1, 10, figsize=(12, 1.5))
    for ax, image in zip(axes, hessian_set['image']):
      image = (image - image.min()) / (image.max() - image.min())
      ax.imshow(image.squeeze(), cmap='gray')
      ax.axis('off')
    plt.show()
    '''),
    md('''
    The Hessian is that of the **training loss** over `HESSIAN_EXAMPLES`
    examples, in batches of the training batch size: with batch norm every
    batch is normalised by its own statistics, exactly as in training.

    On a CPU, XLA runs convolutions inside compiled loops much more slowly
    than outside them ([jax#12868](https://github.com/jax-ml/jax/issues/12868)),
    so there the Hessian set is handed over as a list of batches: each product
    is then a sequence of separate calls. On a GPU or TPU the set is copied to
    the devices once and the whole Lanczos run is one compiled program.
    '''),
    code('''
    if jax.default_backend() == 'cpu':
      HESSIAN_DATA = [{k: v[i:i + BATCH_SIZE] for k, v in hessian_set.items()}
                      for i in range(0, HESSIAN_EXAMPLES, BATCH_SIZE)]
    else:
      HESSIAN_DATA = hessian_set


    def make_model(norm):
      return models.ResNet(stage_sizes=(BLOCKS_PER_STAGE,) * 3, num_filters=16,
                           stem='cifar', num_classes=info.num_classes, norm=norm)


    def hessian_operator(model, params, model_state, previous=None):
      """The Hessian of the training loss over the Hessian set, at params.

      An operator of the same loss is reused (`with_params`: no recompilation).
      The population statistics are part of the loss, so that variant needs a
      new one after each refresh.
      """
      if previous is not None and model.norm != 'population':
        return previous.with_params(params)
      loss = models.make_loss_fn(model, model_state, 'train')
      return sd.get_hvp_fn(loss, params, HESSIAN_DATA, batch_size=BATCH_SIZE)[0]


    def snapshot(operator, key):
      """SLQ and the paper's outlier measures at the operator's parameters."""
      result = sd.slq(operator, operator.num_params, order=ORDER, rng_key=key,
                      keep_vecs=True)
      k = min(TOP_K, ORDER)
      return result, {
          'lambda_max': result.lambda_max,
          'lambda_ratio': result.eigenvalue_ratio(k),
          'gradient_concentration': result.subspace_fraction(
              operator.gradient(), k),
      }
    '''),
    md('''
    ## Training

    SGD with momentum, weight decay on the kernels, a linear warm-up. The
    network without batch norm keeps batch norm's learnable scale and bias and
    starts each residual branch at zero (`experiments.models.norm_layer`), so
    it trains at the same learning rate as the batch-norm one. The population
    statistics are recomputed every `POPULATION_REFRESH_STEPS` steps and
    before each snapshot.

    The network with population statistics starts with a `lambda_max` one to
    two orders of magnitude above the others (its first snapshot below), and
    gradient descent is unstable once the step size times `lambda_max`
    exceeds about 2 (`2 (1 + momentum)` with momentum): at the others'
    learning rate it diverges within a few dozen steps, so it trains at a
    tenth of it. That is the paper's point about outliers in one number.
    '''),
    code('''
    def make_train_step(model, optimizer):
      @jax.jit
      def train_step(params, model_state, opt_state, batch):
        def loss_fn(params):
          variables = {'params': params, **model_state}
          if model.norm == 'batch':
            logits, updates = model.apply(variables, batch['image'], train=True,
                                          mutable=['batch_stats'])
          else:
            logits, updates = model.apply(variables, batch['image'], train=True), {}
          return models.output_loss(logits, batch), updates
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        steps, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, steps), {**model_state, **updates},
                opt_state, loss)
      return train_step


    def test_accuracy(model, params, model_state):
      predict = jax.jit(lambda variables, images: model.apply(variables, images,
                                                              train=False))
      correct = count = 0
      for batch in input_pipeline.eval_batches(test, info, 200):
        logits = predict({'params': params, **model_state}, batch['image'])
        correct += float(np.sum((np.argmax(logits, -1) == batch['label']) *
                                batch['mask']))
        count += float(np.sum(batch['mask']))
      return correct / count


    def make_optimizer(learning_rate):
      return optax.chain(
          optax.add_decayed_weights(
              WEIGHT_DECAY, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
          optax.sgd(optax.linear_schedule(0.0, learning_rate, WARMUP_STEPS),
                    momentum=0.9))


    records = {norm: [] for norm in NORMS}     # one dict per snapshot
    spectra = {}                               # the last snapshot's SLQ
    accuracy = {}
    for norm in NORMS:
      start = time.perf_counter()
      model = make_model(norm)
      # Compiled: run op by op, the initialisation of a deep network is slow.
      variables = jax.jit(model.init, static_argnames='train')(
          jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
      params, model_state = models.split_variables(variables)
      optimizer = make_optimizer(LEARNING_RATE * LEARNING_RATE_SCALE[norm])
      opt_state = optimizer.init(params)
      train_step = make_train_step(model, optimizer)
      batches = input_pipeline.train_batches(train, info, BATCH_SIZE, seed=0)
      operator = None
      for step in range(NUM_STEPS + 1):
        if norm == 'population' and (step % POPULATION_REFRESH_STEPS == 0 or
                                     step in SNAPSHOT_STEPS):
          model_state = {models.POPULATION_STATS: models.compute_population_stats(
              model, {'params': params, **model_state}, population_images,
              POPULATION_EXAMPLES)}
        if step in SNAPSHOT_STEPS:
          operator = hessian_operator(model, params, model_state, operator)
          spectra[norm], metrics = snapshot(operator, jax.random.key(step))
          records[norm].append({'step': step, **metrics})
          print(f'{LABELS[norm]:22s} step {step:5d}: ' + ', '.join(
              f'{k} {v:.3g}' for k, v in metrics.items()))
        if step < NUM_STEPS:
          params, model_state, opt_state, loss = train_step(
              params, model_state, opt_state, next(batches))
      accuracy[norm] = test_accuracy(model, params, model_state)
      print(f'{LABELS[norm]}: {sum(p.size for p in jax.tree.leaves(params)):,} '
            f'parameters, test accuracy {accuracy[norm]:.3f}, '
            f'{time.perf_counter() - start:.0f} s\\n')
    '''),
    md('''
    ## What changed

    Left: the largest Ritz values at the end of training, each network's
    divided by its own `lambda_max`: outliers show as a few values well above
    the rest, then a drop. Middle: `lambda_max` over training. Right: the
    fraction of the full-batch gradient in the span of the top-10 Ritz
    vectors, the paper's gradient concentration.
    '''),
    code('''
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3))
    shown = min(2 * TOP_K, ORDER)
    for norm in NORMS:
      top_values = spectra[norm].top_eigenvalues(shown)
      axes[0].plot(np.arange(1, shown + 1), top_values / top_values[0], 'o-',
                   color=COLORS[norm],
                   label=f'{LABELS[norm]} (lambda_max {top_values[0]:.3g})')
      steps = [r['step'] for r in records[norm]]
      axes[1].plot(steps, [r['lambda_max'] for r in records[norm]], 'o-',
                   color=COLORS[norm], label=LABELS[norm])
      axes[2].plot(steps, [r['gradient_concentration'] for r in records[norm]],
                   'o-', color=COLORS[norm], label=LABELS[norm])
    axes[0].axvline(TOP_K + 0.5, color='gray', linestyle=':')
    axes[0].set_xlabel('rank i')
    axes[0].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[0].set_ylabel('lambda_i / lambda_max')
    axes[0].set_title(f'top Ritz values at step {NUM_STEPS}')
    axes[1].set_yscale('log')
    axes[1].set_title('lambda_max over training')
    axes[2].set_ylim(0, 1)
    axes[2].set_title(f'gradient in the top-{min(TOP_K, ORDER)} eigenspace')
    for ax in axes[1:]:
      ax.set_xlabel('training step')
    for ax in axes:
      ax.legend()
    fig.suptitle(f'ResNet-{6 * BLOCKS_PER_STAGE + 2} on '
                 f'{"CIFAR-10" if DATASET == "cifar10" else "Fashion-MNIST"}, '
                 f'Hessian over {HESSIAN_EXAMPLES} training examples', y=1.02)
    plt.tight_layout()
    plt.show()
    ''', tags=[FIGURE_TAG]),
    md('''
    The densities themselves, on the paper's log scale, each against its own
    `lambda_max` (the three differ by an order of magnitude). With only
    `ORDER` quadrature nodes per draw every node is a bump: what matters is
    whether the largest ones stand apart from the bulk at 0 or continue it.
    '''),
    code('''
    fig, axes = plt.subplots(1, 3, figsize=(17, 3.8), sharey=True)
    relative = np.linspace(-0.3, 1.05, 4000)   # eigenvalue / lambda_max
    for ax, norm in zip(axes, NORMS):
      scale = spectra[norm].lambda_max
      density, _ = spectra[norm].density(relative * scale, 5e-3 * scale)
      plotting.plot_density(relative, density * scale, ax=ax,
                            color=COLORS[norm])
      ax.set_xlabel('eigenvalue / lambda_max')
      ax.set_title(f'{LABELS[norm]}: lambda_max {scale:.3g}')
    plt.tight_layout()
    plt.show()
    '''),
    md('''
    Read these with the sizes in mind: on the CPU defaults the networks see
    200 steps on small crops and the Hessian is over 128 examples, so the
    picture is a sketch of the paper's; the full-size cell gives the real
    one.

    ## In numbers
    '''),
    code('''
    summary = {
        'full_size': FULL_SIZE,
        'snapshot_steps': list(SNAPSHOT_STEPS),
        'records': records,
        'test_accuracy': accuracy,
        'top_eigenvalues': {n: spectra[n].top_eigenvalues(min(TOP_K, ORDER)).tolist()
                            for n in NORMS},
    }
    for norm in NORMS:
      last = records[norm][-1]
      print(f'{LABELS[norm]:22s} lambda_max {last["lambda_max"]:8.3f}  '
            f'lambda_1/lambda_{min(TOP_K, ORDER)} {last["lambda_ratio"]:6.2f}  '
            f'gradient concentration {last["gradient_concentration"]:.2f}  '
            f'test accuracy {accuracy[norm]:.3f}')
    '''),
]

NOTEBOOKS = {'quickstart': QUICKSTART, 'batchnorm_outliers': BATCHNORM,
             'your_model': YOUR_MODEL}


# Colab opens these on a GPU runtime; the others on a CPU one.
GPU_NOTEBOOKS = ('batchnorm_outliers',)


def build(name, cells):
  """The notebook NAME of `cells`, without outputs, with Colab metadata."""
  notebook = nbformat.v4.new_notebook()
  # Fixed cell ids, so that rebuilding an unchanged notebook changes nothing.
  notebook.cells = [copy.deepcopy(cell) for cell in cells]
  for i, cell in enumerate(notebook.cells):
    cell['id'] = f'{name}-{i}'
  notebook.metadata = {
      'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                     'language': 'python'},
      'language_info': {'name': 'python'},
      'colab': {'name': f'{name}.ipynb', 'provenance': []},
  }
  if name in GPU_NOTEBOOKS:
    notebook.metadata['accelerator'] = 'GPU'
    notebook.metadata['colab']['gpuType'] = 'T4'
  return notebook


def write_notebooks():
  """Writes colab/NAME.ipynb for every notebook."""
  for name, cells in NOTEBOOKS.items():
    notebook = build(name, cells)
    nbformat.validate(notebook)
    nbformat.write(notebook, COLAB_DIR / f'{name}.ipynb')
    print('wrote', COLAB_DIR / f'{name}.ipynb')


def save_figures(names, timeout_s, executed_dir=None):
  """Runs notebooks from the repository root; saves their tagged figures."""
  # Only running them needs a Jupyter kernel.
  import nbclient  # pylint: disable=g-import-not-at-top
  FIGURE_DIR.mkdir(parents=True, exist_ok=True)
  # The kernel imports this checkout's packages even where an older copy is
  # installed.
  os.environ['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  for name in names:
    notebook = nbformat.read(COLAB_DIR / f'{name}.ipynb', as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=timeout_s, kernel_name='python3',
                            resources={'metadata': {'path': str(REPO)}}).execute()
    print(f'{name}: ran in {time.perf_counter() - start:.0f} s', flush=True)
    if executed_dir:
      pathlib.Path(executed_dir).mkdir(parents=True, exist_ok=True)
      nbformat.write(notebook, pathlib.Path(executed_dir) / f'{name}.ipynb')
    for cell in notebook.cells:
      if FIGURE_TAG in cell.metadata.get('tags', ()):
        pngs = [o['data']['image/png'] for o in cell.get('outputs', ())
                if 'image/png' in o.get('data', {})]
        (FIGURE_DIR / f'{name}.png').write_bytes(base64.b64decode(pngs[-1]))
        print('saved', FIGURE_DIR / f'{name}.png', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--figures', action='store_true',
                      help='also run the notebooks and save docs/figures/*.png')
  parser.add_argument('--only', nargs='*', choices=sorted(NOTEBOOKS),
                      default=list(NOTEBOOKS), help='notebooks to run')
  parser.add_argument('--timeout_s', type=int, default=3600,
                      help='per-cell timeout when running them')
  parser.add_argument('--executed_dir', default=None,
                      help='also keep the executed notebooks (with outputs) '
                      'there, outside the repository')
  args = parser.parse_args()
  write_notebooks()
  if args.figures:
    save_figures(args.only, args.timeout_s, args.executed_dir)


if __name__ == '__main__':
  main()
