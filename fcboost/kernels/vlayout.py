"""The value planes' interleaved storage order in Triton kernels (see :mod:`fcboost.quant.layout`)."""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (the interpreter needs it visible in every jit module)


@triton.jit
def vil_offset(t, c, s_step, s_j):
    """Byte offset of (token ``t``, byte ``c``) in one (row, head) of an interleaved value plane
    ``(S, 4, C, 16)`` with strides ``s_step`` (= 64 C) and ``s_j`` (= 16 C)."""
    return (t // 64) * s_step + (t % 4) * s_j + c * 16 + (t % 64) // 4
