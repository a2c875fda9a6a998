"""Installs spectral_density (the library) and its experiments."""

import setuptools

# The experiments' stack: models and optimiser (flax, optax), checkpoints
# (orbax), configs and the entry point (ml_collections, absl), progress bars
# (tqdm), and the input pipeline (grain: worker processes, index shuffle;
# Pillow: JPEG decoding of image records).
EXPERIMENTS = [
    'flax>=0.10', 'optax>=0.2', 'orbax-checkpoint>=0.11',
    'ml_collections>=1.0', 'absl-py>=2.0', 'tqdm>=4.66',
    'grain>=0.2.18', 'Pillow>=10',
]

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
        'jax>=0.8',
        'numpy>=1.26',
        'scipy>=1.11',
        'matplotlib>=3.8',
    ],
    extras_require={
        'experiments': EXPERIMENTS,
        'tfds': ['tensorflow-datasets>=4.9'],
        'test': EXPERIMENTS + [
            'pytest>=8', 'pytest-xdist>=3.5', 'hypothesis>=6.100',
            'nbclient>=0.10',
            'nbformat>=5.10', 'ipykernel>=6.29', 'jupytext>=1.16',
            # tests/test_precision.py: an Equinox module passed as params
            # gets an error naming the leaf, and the partition it suggests
            # works.
            'equinox>=0.11',
        ],
        'notebook': EXPERIMENTS + ['ipykernel>=6.29', 'jupytext>=1.16'],
    },
)
