"""Installs spectral_density (the library) and its experiments."""

import setuptools

# The experiments' stack: models and optimiser (flax, optax), checkpoints
# (orbax), configs and the entry point (ml_collections, absl), progress bars
# (tqdm), and the input pipeline (grain: worker processes, index shuffle;
# Pillow: JPEG decoding of image records).
EXPERIMENTS = [
    'flax>=0.10', 'optax>=0.2', 'orbax-checkpoint>=0.11',
    'ml_collections>=1.0', 'absl-py>=1.4', 'tqdm>=4.66',
    'grain>=0.2.17', 'Pillow>=10',
]
# The floors of jax, absl-py and grain are the versions a Colab runtime
# ships (googlecolab/backend-info, pip-freeze.gpu.txt, June 2026: jax 0.7.2,
# absl-py 1.4.0, grain 0.2.17), on which the notebooks run: the notebooks'
# install cell keeps the runtime's packages, and a higher floor would make
# pip fail there (or, unconstrained, upgrade jax past Colab's CUDA plugin).

# Models as users write them today, for `spectral_density.adapters` (imported
# only inside its helpers): Flax NNX (`nnx.view`, `nnx.merge(copy=True)`:
# flax 0.12) and Equinox.
MODELS = ['flax>=0.12', 'equinox>=0.13']

setuptools.setup(
    name='spectral_density',
    version='0.1.0',
    description='Hessian eigenvalue densities of JAX models by stochastic '
                'Lanczos quadrature (Ghorbani, Krishnan & Xiao, ICML 2019).',
    long_description=open('README.md').read() if __import__('os').path.exists(
        'README.md') else '',
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['spectral_density',
                                               'spectral_density.*',
                                               'experiments', 'experiments.*',
                                               'configs']),
    package_data={'experiments': ['data/*']},
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.7.2',   # Colab's (see EXPERIMENTS)
        'numpy>=1.26',
        'scipy>=1.11',
        'matplotlib>=3.8',
    ],
    extras_require={
        'experiments': EXPERIMENTS,
        'tfds': ['tensorflow-datasets>=4.9'],
        'models': MODELS,
        'test': EXPERIMENTS + MODELS + [
            'pytest>=8', 'pytest-xdist>=3.5', 'hypothesis>=6.100',
            'nbclient>=0.10',
            'nbformat>=5.10', 'ipykernel>=6.29', 'jupytext>=1.16',
            'ruff>=0.6',  # the linter CI runs (`ruff check`, ruff.toml)
        ],
        'notebook': EXPERIMENTS + ['ipykernel>=6.29', 'jupytext>=1.16'],
        # The documentation site (mkdocs.yml; why these: docs/README.md):
        # MkDocs Material, the API reference from the docstrings
        # (mkdocstrings-python), the notebooks rendered from their stored
        # outputs (mkdocs-jupyter). CI builds it in strict mode.
        'docs': ['mkdocs>=1.6,<2', 'mkdocs-material>=9.5,<10',
                 'mkdocstrings[python]>=0.26', 'mkdocstrings-python>=1.12',
                 'mkdocs-jupyter>=0.25'],
    },
)
