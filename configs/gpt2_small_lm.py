"""Block heterogeneity at full size on a pod: GPT-2 small shapes (12 layers,
width 768, 12 heads, MLP 3072, context 1024; byte vocabulary) on a TFDS text
set, against the authors' ResNet-32 on CIFAR-10; the fields of
`configs/transformer_lm.py`, run by the same script:

  python -m experiments.block_heterogeneity --config=configs/gpt2_small_lm.py

Sizes follow Zhang et al. (NeurIPS 2024): GPT-2 small, SLQ order 100 with
10 draws. The text set must be prepared in TFDS's array_record format in
`text.data_dir` (no download on the pod).
"""

from configs import transformer_lm


def get_config(arg=None):
  config = transformer_lm.get_config()
  config.name = 'gpt2_small_lm'
  config.seeds = (0, 1, 2)
  config.transformer.seq_len = 1024
  config.transformer.width = 768
  config.transformer.num_layers = 12
  config.transformer.num_heads = 12
  config.transformer.mlp_dim = 3072
  config.text.name = 'tfds:lm1b'
  config.text.text_key = 'text'
  config.text.seq_len = 1024
  config.text.num_train = 200_000
  config.text.num_test = 2_000
  config.cnn.stage_sizes = (5, 5, 5)        # ResNet-32
  config.cnn.num_filters = 16
  config.cnn.norm = 'batch'
  config.cnn.dataset = 'cifar10_python'
  config.cnn.data_dir = '/data/cifar-10-batches-py'
  config.cnn.num_train = 50_000
  config.train.num_steps = 20_000
  config.train.batch_size = 64
  config.train.sgd_rates = (0.01, 0.03, 0.1, 0.3)
  config.train.adam_rates = (1e-4, 3e-4, 6e-4, 1e-3)
  config.train.final_window = 500
  config.hessian.num_examples = 512
  config.hessian.batch_size = 8
  config.hessian.order = 100
  config.hessian.num_draws = 10
  if arg not in (None, ''):
    raise ValueError(f'gpt2_small_lm: unknown config argument {arg!r}.')
  return config
