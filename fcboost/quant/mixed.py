"""Mixed-precision key pages and value tokens: the cache's packed layout (the kernels' spec).

A boosted channel's ``boost_bits`` code is split as ``code = lo | hi << bits``: the *lo plane*
holds the low ``bits`` of **every** channel, the *hi plane* holds the high bits of the boosted
channels only, in ascending channel order (their "slots"). A reader dequantizes
``(lo + (hi << bits)) * scale + zero``, where ``hi`` is 0 for channels that are not boosted, so
the no-boost, per-page (Kitty) and static (FCBoost) layouts are the same planes with another
index map.

Keys, one page of P tokens (statistics per channel over the page's tokens):

| field   | shape           | dtype   | packing                                |
|---------|-----------------|---------|----------------------------------------|
| lo      | (..., P*b/8, D) | uint8   | along tokens, ``8 // bits`` per byte   |
| hi      | (..., P*h/8, nb)| uint8   | along tokens, h = storage_bits(boost-bits) |
| scale   | (..., D)        | float16 | per channel (boosted: at boost_bits)   |
| zero    | (..., D)        | float16 | per channel                            |

Values, N tokens (statistics per token over head_dim; boosted channels form their own group):

| field   | shape            | dtype   | packing                      |
|---------|------------------|---------|------------------------------|
| lo      | (..., N, D*b/8)  | uint8   | along channels               |
| hi      | (..., N, ceil(nb*h/8)) | uint8 | along boosted slots    |
| scale   | (..., N, G)      | float16 | G=1, or 2 (base, boosted)    |
| zero    | (..., N, G)      | float16 |                              |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fcboost.quant.core import (
    dequantize_with,
    pack,
    qparams,
    quantize_with,
    round_codes,
    storage_bits,
    unpack,
)


def boost_index(is_boost: torch.Tensor, n_boost: int) -> torch.Tensor:
    """Ascending channel indices ``(..., n_boost)`` (int64) of a bool ``(..., D)`` mask with
    exactly ``n_boost`` channels set per row."""
    order = torch.argsort((~is_boost).to(torch.uint8), dim=-1, stable=True)
    return order[..., :n_boost]


@dataclass
class PackedKeys:
    """One or more quantized key pages; leading dims are free (e.g. batch, head, page)."""

    lo: torch.Tensor
    hi: torch.Tensor | None
    idx: torch.Tensor | None
    scale: torch.Tensor
    zero: torch.Tensor


@dataclass
class PackedValues:
    """Quantized value tokens; leading dims are free (e.g. batch, head)."""

    lo: torch.Tensor
    hi: torch.Tensor | None
    scale: torch.Tensor
    zero: torch.Tensor


def _hi_bits(bits: int, boost_bits: int) -> int:
    return storage_bits(boost_bits - bits)


def quantize_key_pages(
    k: torch.Tensor, bits: int, boost_bits: int, is_boost: torch.Tensor | None, n_boost: int
) -> PackedKeys:
    """Quantize key pages ``k`` of shape ``(..., P, D)`` per channel over the P tokens.

    ``is_boost``: bool ``(..., D)`` (broadcastable to ``k.shape[:-2] + (D,)``) with exactly
    ``n_boost`` channels set per row, or None for no boost.
    """
    lead, (P, D) = k.shape[:-2], k.shape[-2:]
    if is_boost is None or n_boost == 0:
        scale, zero = qparams(k, bits, dim=-2)  # (..., 1, D)
        codes = quantize_with(k, scale, zero, bits)
        return PackedKeys(pack(codes, bits, dim=-2), None, None, scale.squeeze(-2), zero.squeeze(-2))
    is_boost = is_boost.expand(*lead, D)
    kf = k.float()
    levels = torch.where(is_boost, 2**boost_bits - 1, 2**bits - 1).unsqueeze(-2).float()  # (..., 1, D)
    mn, mx = kf.amin(-2, keepdim=True), kf.amax(-2, keepdim=True)
    scale = ((mx - mn) / levels).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = mn.to(torch.float16)
    q = round_codes(kf, scale, zero)
    codes = torch.minimum(q.clamp_(min=0), levels).to(torch.uint8)  # (..., P, D)
    idx = boost_index(is_boost, n_boost)  # (..., nb)
    hi_codes = torch.gather(codes >> bits, -1, idx.unsqueeze(-2).expand(*lead, P, n_boost))
    lo = pack(codes & (2**bits - 1), bits, dim=-2)
    hi = pack(hi_codes, _hi_bits(bits, boost_bits), dim=-2)
    return PackedKeys(lo, hi, idx, scale.squeeze(-2), zero.squeeze(-2))


def dequantize_key_pages(pk: PackedKeys, page_size: int, bits: int, boost_bits: int) -> torch.Tensor:
    """fp32 ``(..., P, D)`` from :func:`quantize_key_pages`'s output."""
    codes = unpack(pk.lo, bits, page_size, dim=-2).long()
    if pk.hi is not None:
        hi = unpack(pk.hi, _hi_bits(bits, boost_bits), page_size, dim=-2).long()  # (..., P, nb)
        idx = pk.idx.unsqueeze(-2).expand_as(hi)
        codes = codes.scatter_add(-1, idx, hi << bits)
    return dequantize_with(codes, pk.scale.unsqueeze(-2), pk.zero.unsqueeze(-2))


def quantize_values(
    v: torch.Tensor, bits: int, boost_bits: int, is_boost: torch.Tensor | None, n_boost: int
) -> PackedValues:
    """Quantize value tokens ``v`` of shape ``(..., N, D)`` per token over head_dim.

    ``is_boost``: bool ``(..., D)`` broadcastable to ``v.shape[:-2] + (D,)`` (the static mask, the
    same for every token) or None. Boosted channels form their own per-token group at
    ``boost_bits``; the rest one group at ``bits``.
    """
    if is_boost is None or n_boost == 0:
        scale, zero = qparams(v, bits, dim=-1)  # (..., N, 1)
        codes = quantize_with(v, scale, zero, bits)
        return PackedValues(pack(codes, bits, dim=-1), None, scale, zero)
    lead, (N, D) = v.shape[:-2], v.shape[-2:]
    mask = is_boost.expand(*lead, D).unsqueeze(-2)  # (..., 1, D)
    vf = v.float()
    inf = torch.tensor(float("inf"), device=v.device)
    stats = []
    for sel, b in ((~mask, bits), (mask, boost_bits)):
        mn = torch.where(sel, vf, inf).amin(-1, keepdim=True)
        mx = torch.where(sel, vf, -inf).amax(-1, keepdim=True)
        s = ((mx - mn) / (2**b - 1)).to(torch.float16)
        stats.append((torch.where(s == 0, torch.ones_like(s), s), mn.to(torch.float16)))
    scale = torch.cat([stats[0][0], stats[1][0]], -1)  # (..., N, 2)
    zero = torch.cat([stats[0][1], stats[1][1]], -1)
    g = mask.long()  # group of each channel (..., 1, D)
    s_c = torch.gather(scale, -1, g.expand(*lead, N, D))
    z_c = torch.gather(zero, -1, g.expand(*lead, N, D))
    levels = torch.where(mask, 2**boost_bits - 1, 2**bits - 1).float()
    q = round_codes(vf, s_c, z_c)
    codes = torch.minimum(q.clamp_(min=0), levels).to(torch.uint8)
    idx = boost_index(is_boost.expand(*lead, D), n_boost).unsqueeze(-2).expand(*lead, N, n_boost)
    hi = pack(torch.gather(codes >> bits, -1, idx), _hi_bits(bits, boost_bits), dim=-1)
    return PackedValues(pack(codes & (2**bits - 1), bits, dim=-1), hi, scale, zero)


def dequantize_values(
    pv: PackedValues, head_dim: int, bits: int, boost_bits: int, idx: torch.Tensor | None
) -> torch.Tensor:
    """fp32 ``(..., N, D)`` from :func:`quantize_values`' output; ``idx`` ``(..., nb)`` slots."""
    codes = unpack(pv.lo, bits, head_dim, dim=-1).long()
    if pv.hi is None:
        return dequantize_with(codes, pv.scale, pv.zero)
    lead, N, nb = codes.shape[:-2], codes.shape[-2], idx.shape[-1]
    hi = unpack(pv.hi, _hi_bits(bits, boost_bits), nb, dim=-1).long()
    idx_e = idx.unsqueeze(-2).expand(*lead, N, nb)
    codes = codes.scatter_add(-1, idx_e, hi << bits)
    g = torch.zeros(*lead, N, head_dim, dtype=torch.long, device=codes.device).scatter_(-1, idx_e, 1)
    return dequantize_with(codes, torch.gather(pv.scale, -1, g), torch.gather(pv.zero, -1, g))
