"""Order reduction of diagonal SSMs and Toeplitz taps with a certified kernel error."""

from .contract import Reduction
from .reduce import reduce_ssm, reduce_toeplitz

__all__ = ["reduce_ssm", "reduce_toeplitz", "Reduction"]
