"""Prompt -> SSM state for ETSC-converted layers: a Triton fold plus one length-(n+1) real FFT."""

from .state import ssm_prefill_state

__all__ = ["ssm_prefill_state"]
