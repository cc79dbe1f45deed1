"""Diagonal complex SSM: fused scan (prefill) and in-place decode step."""

from .scan import ssm_scan
from .step import ssm_step

__all__ = ["ssm_scan", "ssm_step"]
