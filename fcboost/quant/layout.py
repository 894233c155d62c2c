"""Storage order of the packed value planes (``v_lo``, ``v_hi``): 64-token steps, token-interleaved.

A token's value codes are ``C`` bytes (``v_lo``: ``D * bits / 8``, 4 channels per byte for 2 bits;
``v_hi``: the boosted channels' high bits). They are stored ``(..., S, 4, C, 16)`` for ``S`` steps of
64 tokens: entry ``[s, j, c, m]`` is byte ``c`` of token ``64 s + 4 m + j``. So within a step, the 16
tokens ``4 m + j`` (``j`` fixed) of one byte column are 16 consecutive bytes: the fused decode kernel
reads four consecutive tokens of a channel byte as one 32-bit word, the K operand of its
``V^T . P^T`` MMA (a token-major plane would need four byte loads and three merges per word; see
``experiments/decode_attention.md``). Byte offset of (token t, byte c) inside one (row, head):
``(t // 64) * 64 C + (t % 4) * 16 C + 16 c + (t % 64) // 4``.

The scales and zeros stay token-major ``(..., NV, G)``; capacities are whole steps (NV a multiple
of 64), so every (row, head) plane starts 16-byte aligned.
"""

from __future__ import annotations

import torch

STEP = 64  # tokens per step


def steps(n_tokens: int) -> int:
    """Steps that hold ``n_tokens`` tokens."""
    return -(-n_tokens // STEP)


def to_tokens(v: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """``(..., S, 4, C, 16)`` interleaved -> ``(..., n, C)`` token-major (a copy; ``n`` defaults to
    ``64 S``)."""
    if v.dim() < 4 or v.shape[-3] != 4 or v.shape[-1] != 16:
        raise ValueError(f"expected interleaved value bytes (..., S, 4, C, 16); got {tuple(v.shape)}")
    S, C = v.shape[-4], v.shape[-2]
    x = v.movedim(-1, -3).reshape(*v.shape[:-4], S * STEP, C)  # [s, m, j] -> token 64 s + 4 m + j
    return x if n is None else x[..., :n, :]


def from_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(..., n, C)`` token-major -> ``(..., ceil(n / 64), 4, C, 16)`` interleaved (zero-padded)."""
    n, C = x.shape[-2], x.shape[-1]
    pad = steps(n) * STEP - n
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-2], pad, C)], -2)
    v = x.reshape(*x.shape[:-2], steps(n), 16, 4, C)  # [s, m, j, c]
    return v.movedim(-3, -1).contiguous()


def write_tokens(v: torch.Tensor, t0: int, x: torch.Tensor) -> None:
    """Write ``x`` ``(..., n, C)`` as tokens ``t0 .. t0 + n - 1`` of the interleaved ``v`` (in place)."""
    n = x.shape[-2]
    if (t0 + n) > v.shape[-4] * STEP or x.shape[-1] != v.shape[-2]:
        raise ValueError(
            f"tokens {t0}..{t0 + n} with {x.shape[-1]} bytes do not fit interleaved storage {tuple(v.shape)}"
        )
    t = torch.arange(t0, t0 + n, device=v.device)
    v.movedim(-1, -3)[..., t // STEP, (t % STEP) // 4, t % 4, :] = x
