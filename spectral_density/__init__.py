"""spectral_density: Hessian eigenvalue densities of JAX models by SLQ."""

from spectral_density.blocks import block_spectra
from spectral_density.blocks import BlockSpectra
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
from spectral_density.spectrum import block_result
from spectral_density.spectrum import hessian_spectrum
from spectral_density.spectrum import slq
from spectral_density.spectrum import SpectrumResult

__version__ = '0.1.0'

__all__ = [
    'block_spectra', 'BlockSpectra', 'check_operator', 'OperatorReport',
    'subspace_overlap', 'subspace_tracking', 'trace_estimate',
    'dense_matrix', 'eigv_to_density', 'exact_density', 'exact_eigenvalues',
    'fisher_vp', 'full_hessian', 'get_hvp_fn', 'ggn_vp', 'hessian_spectrum',
    'hvp', 'lanczos_alg', 'lanczos_draws', 'LanczosResult', 'slq',
    'SpectrumResult', 'tridiag_to_density', 'tridiag_to_eigv',
    'block_result',
]
