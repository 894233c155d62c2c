"""Asymmetric min/max quantization and real bit packing: the one set of tensor functions.

Granularity is chosen by argument, not by a copy of the code:

| what              | call                                          | statistics over             |
|-------------------|-----------------------------------------------|-----------------------------|
| keys (KIVI/Kitty) | ``quantize(k_page, bits, dim=-2)``            | the page's tokens, per channel |
| values            | ``quantize(v, bits, dim=-1)``                 | head_dim, per token         |
| grouped           | ``quantize(x, bits, dim=-1, group_size=32)``  | groups of 32 along ``dim``  |

Numerics (the spec the Triton kernels reproduce bitwise):
``mn, mx`` over the group in fp32; ``scale = fp16((mx - mn) / (2**bits - 1))``, ``zero = fp16(mn)``;
a scale that is 0 in fp16 (constant group, or a range below fp16's resolution) becomes 1, so a
constant group dequantizes to ``zero`` and never gives NaN;
``code = clamp(floor((x - zero) * inv + 0.5), 0, 2**bits - 1)`` in fp32 with upcast scale/zero and
``inv = 1 / scale`` (fp32, correctly rounded; a multiply per element instead of a division: the pack
kernels' cost; every step rounds separately, no fused multiply-add);
``dequant = code * scale + zero`` in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 4, 8)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; expected one of {SUPPORTED_BITS}")


@dataclass
class QTensor:
    """Integer codes plus the fp16 scale and zero of each group.

    ``codes`` has the input's shape (uint8, unpacked); ``scale``/``zero`` have the input's shape with
    the quantized ``dim`` reduced to the number of groups (kept as a size-n_groups axis).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    dim: int
    group_size: int


def qparams(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 ``(scale, zero)`` of the groups formed by reducing ``dim`` of ``x`` (kept, size 1)."""
    _check_bits(bits)
    xf = x.float()
    mn = xf.amin(dim=dim, keepdim=True)
    mx = xf.amax(dim=dim, keepdim=True)
    scale = ((mx - mn) / (2**bits - 1)).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = mn.to(torch.float16)
    return scale, zero


def round_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """fp32 ``floor((x - zero) * (1 / scale) + 0.5)``, not yet clamped: the rounding every quantizer
    (and the pack kernels, bitwise) shares."""
    return torch.floor((x.float() - zero.float()) * scale.float().reciprocal() + 0.5)


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes of ``x`` for given fp16 ``scale``/``zero`` (broadcastable to ``x``)."""
    return round_codes(x, scale, zero).clamp_(0, 2**bits - 1).to(torch.uint8)


def dequantize_with(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """fp32 ``codes * scale + zero`` (broadcasting)."""
    return codes.float() * scale.float() + zero.float()


def quantize(x: torch.Tensor, bits: int, dim: int = -1, group_size: int | None = None) -> QTensor:
    """Quantize ``x`` with min/max groups of ``group_size`` consecutive elements along ``dim``.

    ``group_size=None`` means one group spanning the whole ``dim``. ``x.shape[dim]`` must be a
    multiple of ``group_size``.
    """
    _check_bits(bits)
    dim = dim % x.ndim
    n = x.shape[dim]
    g = n if group_size is None else group_size
    if g <= 0 or n % g:
        raise ValueError(f"group_size={group_size} must divide x.shape[{dim}]={n}")
    xg = x.unflatten(dim, (n // g, g))  # (..., n_groups, g, ...)
    scale, zero = qparams(xg, bits, dim + 1)
    codes = quantize_with(xg, scale, zero, bits).flatten(dim, dim + 1)
    return QTensor(codes, scale.squeeze(dim + 1), zero.squeeze(dim + 1), bits, dim, g)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize` (up to rounding), in ``dtype``."""
    n = q.codes.shape[q.dim]
    cg = q.codes.unflatten(q.dim, (n // q.group_size, q.group_size))
    out = dequantize_with(cg, q.scale.unsqueeze(q.dim + 1), q.zero.unsqueeze(q.dim + 1))
    return out.flatten(q.dim, q.dim + 1).to(dtype)


def pack(codes: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack ``bits``-wide uint8 codes into bytes along ``dim`` (little end first).

    Element ``j`` of a byte lands at bit offset ``bits * j``. ``dim`` is zero-padded to a multiple
    of ``8 // bits``; :func:`unpack` takes the original length back.
    """
    _check_bits(bits)
    per = 8 // bits
    dim = dim % codes.ndim
    n = codes.shape[dim]
    pad = (-n) % per
    c = codes.to(torch.uint8)
    if pad:
        shape = list(c.shape)
        shape[dim] = pad
        c = torch.cat([c, c.new_zeros(shape)], dim=dim)
    c = c.unflatten(dim, (c.shape[dim] // per, per))  # (..., n/per, per, ...)
    shifts = (torch.arange(per, device=c.device, dtype=torch.uint8) * bits).view(
        [per if i == dim + 1 else 1 for i in range(c.ndim)]
    )
    return (c << shifts).sum(dim=dim + 1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int, dim: int = -1) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 codes with ``n`` elements along ``dim``."""
    _check_bits(bits)
    per = 8 // bits
    dim = dim % packed.ndim
    shifts = (torch.arange(per, device=packed.device, dtype=torch.uint8) * bits).view(
        [per if i == dim + 1 else 1 for i in range(packed.ndim + 1)]
    )
    c = (packed.unsqueeze(dim + 1) >> shifts) & (2**bits - 1)
    return c.flatten(dim, dim + 1).narrow(dim, 0, n)


def storage_bits(bits: int) -> int:
    """Smallest packable width (2, 4 or 8) that holds ``bits`` bits."""
    for b in SUPPORTED_BITS:
        if b >= bits:
            return b
    raise ValueError(f"bits={bits} does not fit a byte")


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    x = x.float()
    noise = (x - x_hat.float()).pow(2).mean()
    return float(10 * torch.log10(x.pow(2).mean() / noise.clamp_min(1e-30)))
