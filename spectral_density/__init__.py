"""spectral_density: Hessian eigenvalue densities of JAX models by SLQ."""

from spectral_density.adapters import equinox_loss
from spectral_density.adapters import linen_loss
from spectral_density.adapters import nnx_loss
from spectral_density.blocks import block_densities
from spectral_density.blocks import block_masks
from spectral_density.blocks import block_spectra
from spectral_density.blocks import BlockSpectra
from spectral_density.blocks import js_distances
from spectral_density.blocks import mean_js_distance
from spectral_density.blocks import parameter_paths
from spectral_density.blocks import per_layer
from spectral_density.blocks import per_role
from spectral_density.checks import check_operator
from spectral_density.checks import OperatorReport
from spectral_density.density import eigv_to_density
from spectral_density.density import exact_density
from spectral_density.density import tridiag_to_density
from spectral_density.density import tridiag_to_eigv
from spectral_density.estimators import subspace_overlap
from spectral_density.estimators import subspace_tracking
from spectral_density.estimators import trace_estimate
from spectral_density.hessian import dense_matrix
from spectral_density.hessian import exact_eigenvalues
from spectral_density.hessian import fisher_vp
from spectral_density.hessian import full_hessian
from spectral_density.hessian import ggn_vp
from spectral_density.hessian import hvp
from spectral_density.lanczos import lanczos_alg
from spectral_density.lanczos import lanczos_draws
from spectral_density.lanczos import LanczosResult
from spectral_density.operators import get_hvp_fn
from spectral_density.mesh_layout import fsdp_shardings
from spectral_density.sharded import sharded_hvp_fn
from spectral_density.sharded import sharded_lanczos
from spectral_density.sharded import ShardedLanczosResult
from spectral_density.plotting import plot_js_heatmap
from spectral_density.preconditioning import adam_preconditioner
from spectral_density.preconditioning import preconditioned
from spectral_density.spectrum import block_result
from spectral_density.spectrum import hessian_spectrum
from spectral_density.spectrum import slq
from spectral_density.spectrum import SpectrumResult

__version__ = '0.1.0'

__all__ = [
    'adam_preconditioner', 'block_densities', 'block_masks',
    'js_distances', 'mean_js_distance', 'parameter_paths', 'per_layer',
    'per_role', 'plot_js_heatmap', 'preconditioned',
    'block_spectra', 'BlockSpectra', 'check_operator', 'OperatorReport',
    'subspace_overlap', 'subspace_tracking', 'trace_estimate',
    'dense_matrix', 'eigv_to_density', 'exact_density', 'exact_eigenvalues',
    'fisher_vp', 'full_hessian', 'get_hvp_fn', 'ggn_vp', 'hessian_spectrum',
    'hvp', 'lanczos_alg', 'lanczos_draws', 'LanczosResult', 'slq',
    'SpectrumResult', 'tridiag_to_density', 'tridiag_to_eigv',
    'fsdp_shardings', 'sharded_hvp_fn', 'sharded_lanczos',
    'ShardedLanczosResult',
    'equinox_loss', 'linen_loss', 'nnx_loss',
    'block_result',
]
