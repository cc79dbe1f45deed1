"""The update and accumulation policy that the step and the scan share.

:func:`ssm_update` fixes one order of operations for ``lam * u + b * x`` and :func:`mode_block_size` one layout
of mode blocks for the sum over modes, so L scan tokens and L steps agree to fp32 rounding (bit for bit in the
interpreter).
"""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (jit functions need triton.language visible in their module)

from ..complex import complex_mul
from ..tiles import next_power_of_2

MAX_MODE_BLOCK = 512


def mode_block_size(modes: int) -> int:
    """Modes per block, shared by scan and step so both reduce y over the same blocks in the same order."""
    return min(next_power_of_2(modes), MAX_MODE_BLOCK)


@triton.jit
def ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x):
    """``lam * u + b * x`` as ``(lam_re u_re - lam_im u_im) + b_re x``, ``(lam_re u_im + lam_im u_re) + b_im x``."""
    lu_re, lu_im = complex_mul(lam_re, lam_im, u_re, u_im)
    return lu_re + b_re * x, lu_im + b_im * x
