"""Block heterogeneity at CPU size: a byte-level GPT on the Python standard
library's source against the experiments' ResNet-8 on Fashion-MNIST.

Zhang et al. (NeurIPS 2024), "Why Transformers Need Adam: A Hessian
Perspective", reduced: `python -m experiments.block_heterogeneity` runs it
(about 10 minutes on two CPU cores) and writes a dated report under
docs/reports/. `configs/gpt2_small_lm.py` has the same fields at GPT-2 small
shapes for a pod.
"""

import ml_collections


def get_config(arg=None):
  """The CPU-size experiment; `arg='smoke'`: the further reduced test size."""
  config = ml_collections.ConfigDict()
  config.name = 'transformer_lm'
  config.seeds = (0, 1, 2)

  # The transformer: experiments/transformer.py's GPT on bytes.
  config.transformer = ml_collections.ConfigDict()
  config.transformer.vocab_size = 256
  config.transformer.seq_len = 32
  config.transformer.width = 32
  config.transformer.num_layers = 2
  config.transformer.num_heads = 2
  config.transformer.mlp_dim = 128
  config.text = ml_collections.ConfigDict()
  # 'stdlib' (this machine's Python standard library, no download) or
  # 'tfds:<name>' with text_key (pods).
  config.text.name = 'stdlib'
  config.text.text_key = 'text'
  config.text.data_dir = None
  config.text.seq_len = 32
  config.text.num_train = 4096
  config.text.num_test = 512

  # The CNN: the experiments' pre-activation ResNet of the paper's family.
  config.cnn = ml_collections.ConfigDict()
  config.cnn.stage_sizes = (1, 1, 1)        # ResNet-8
  config.cnn.num_filters = 8                # reduced (paper: 16)
  config.cnn.norm = 'none'
  config.cnn.dataset = 'embedded_fashion_mnist'
  config.cnn.data_dir = None
  config.cnn.num_train = 3000

  # Training: the same steps and batch for both models and optimisers; the
  # rate of each optimiser tuned on the first seed over its grid (the lowest
  # final training loss), then used for every seed.
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 300
  config.train.batch_size = 32
  config.train.momentum = 0.9
  config.train.sgd_rates = (0.01, 0.03, 0.1, 0.3)
  config.train.adam_rates = (1e-3, 3e-3, 1e-2, 3e-2)
  config.train.adam_b2 = 0.999
  config.train.adam_eps = 1e-8
  # The final loss: mean training loss over the last this many steps.
  config.train.final_window = 30

  # Block spectra: SLQ per block (Zhang et al.: one block per parameter
  # array; here per layer: kernel and bias together), on a fixed set.
  config.hessian = ml_collections.ConfigDict()
  config.hessian.blocks = 'per_layer'
  config.hessian.num_examples = 32
  config.hessian.batch_size = 32
  config.hessian.order = 30
  config.hessian.num_draws = 2
  config.hessian.grid_len = 4000
  # JS distances are also reported with a kernel of this fraction of the
  # blocks' common span (invariant to scaling the operator).
  config.hessian.relative_sigma = 0.01
  # Devices of the Hessian products (None: all).
  config.hessian.num_devices = None

  if arg == 'smoke':
    config.seeds = (0, 1)
    config.transformer.width = 8
    config.transformer.num_layers = 1
    config.transformer.mlp_dim = 16
    config.transformer.seq_len = config.text.seq_len = 8
    config.text.num_train = 64
    config.text.num_test = 16
    config.cnn.stage_sizes = (1,)
    config.cnn.num_filters = 2
    config.cnn.num_train = 64
    config.train.num_steps = 0
    config.hessian.num_examples = 16
    config.hessian.batch_size = 16
    config.hessian.order = 12
    config.hessian.num_draws = 1
    config.hessian.grid_len = 1000
    config.hessian.num_devices = 1
  elif arg not in (None, ''):
    raise ValueError(f"transformer_lm: unknown config argument {arg!r}; use "
                     "transformer_lm.py or transformer_lm.py:smoke.")
  return config
