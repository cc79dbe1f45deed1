"""Order reduction of diagonal SSMs with a certified kernel error."""

from .reduce import reduce_ssm

__all__ = ["reduce_ssm"]
