"""ETSC conversion (Toeplitz -> diagonal SSM), Vandermonde evaluation and solve."""

from .dft import toeplitz_to_ssm
from .solve import vandermonde_solve
from .vandermonde import ssm_kernel

__all__ = ["toeplitz_to_ssm", "ssm_kernel", "vandermonde_solve"]
