"""Triton quantize-and-pack vs fcboost.quant.mixed: codes, scales and zeros bitwise."""

from __future__ import annotations

import pytest
import torch

from fcboost.kernels.quant_pack import pack_key_pages, pack_values
from fcboost.quant.core import storage_bits
from fcboost.quant.layout import to_tokens
from fcboost.quant.mixed import boost_index, quantize_key_pages, quantize_values
from fcboost.quant.selectors import DynamicMagnitude

NB = 16


def _mask(H: int, D: int, g: torch.Generator, nb: int = NB) -> torch.Tensor:
    m = torch.zeros(H, D, dtype=torch.bool)
    for h in range(H):
        m[h, torch.randperm(D, generator=g)[:nb]] = True
    return m


@pytest.mark.parametrize("mode", ["none", "dynamic", "static"])
@pytest.mark.parametrize("D,dtype,P", [(64, torch.bfloat16, 32), (128, torch.float16, 64)])
@pytest.mark.parametrize("block", [None, 16, 128])
@pytest.mark.parametrize("nb", [NB, 6])
def test_key_pages_bitwise(mode, D, dtype, P, block, nb, device):
    g = torch.Generator().manual_seed(hash((mode, D)) % 2**31)
    B, H, NP = 3, 2, 4
    src = (torch.randn(B, H, P + 7, D, generator=g) * 3).to(dtype)
    src[1, 0, 5 : 5 + P, 3] = 0.5  # a constant channel: scale 0 -> 1
    src = src.to(device)
    lo = torch.zeros(B, H, NP, P // 4, D, dtype=torch.uint8, device=device)
    sc, zr = (torch.zeros(B, H, NP, D, dtype=torch.float16, device=device) for _ in range(2))
    hi = None if mode == "none" else torch.zeros(B, H, NP, P // 4, nb, dtype=torch.uint8, device=device)
    mask = _mask(H, D, g, nb)
    sidx = boost_index(mask, nb).to(torch.int16)
    idx = {"none": None, "dynamic": torch.zeros(B, H, NP, nb, dtype=torch.int16), "static": sidx}[mode]
    idx = None if idx is None else idx.to(device)
    entries = [(0, 0, 1), (2, 3, 3), (1, 5, 0)]  # (row, first token, page)
    rows, toks, pages = zip(*entries)
    pack_key_pages(
        src,
        rows,
        toks,
        pages,
        lo=lo,
        scale=sc,
        zero=zr,
        bits=2,
        boost_bits=4,
        hi=hi,
        idx=idx,
        dynamic=mode == "dynamic",
        n_boost=0 if hi is None else nb,
        block_channels=None if block is None or mode == "dynamic" else min(block, D),
    )
    for b, t0, pg in entries:
        page = src[b, :, t0 : t0 + P].cpu().unsqueeze(1)  # (H, 1, P, D)
        isb = {
            "none": None,
            "dynamic": DynamicMagnitude(nb).key_boost(page) if mode == "dynamic" else None,
            "static": mask.unsqueeze(1),
        }[mode]
        pk = quantize_key_pages(page, 2, 4, isb, 0 if isb is None else nb)
        assert torch.equal(pk.lo[:, 0], lo[b, :, pg].cpu()), f"lo codes differ, row {b} page {pg}"
        assert torch.equal(pk.scale[:, 0], sc[b, :, pg].cpu()), f"scales differ, row {b}"
        assert torch.equal(pk.zero[:, 0], zr[b, :, pg].cpu()), f"zeros differ, row {b}"
        if hi is not None:
            assert torch.equal(pk.hi[:, 0], hi[b, :, pg].cpu()), f"hi codes differ, row {b}"
            if mode == "dynamic":
                assert torch.equal(pk.idx[:, 0].to(torch.int16), idx[b, :, pg].cpu()), (
                    "Kitty's channel slots differ"
                )


@pytest.mark.parametrize("boost", [False, True])
@pytest.mark.parametrize("D,dtype", [(64, torch.float16), (128, torch.bfloat16)])
@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("nb", [NB, 6])  # 6: the last hi byte holds 2 slots and 2 padding slots
def test_values_bitwise(boost, D, dtype, decode, nb, device):
    g = torch.Generator().manual_seed(D + boost)
    B, H, NV = 3, 2, 128
    src = (torch.randn(B, H, 40, D, generator=g) * 2).to(dtype)
    src[2, 1, 3] = -1.25  # a constant token
    src = src.to(device)
    G = 2 if boost else 1
    lo = torch.zeros(B, H, NV // 64, 4, D // 4, 16, dtype=torch.uint8, device=device)  # interleaved
    sc, zr = (torch.zeros(B, H, NV, G, dtype=torch.float16, device=device) for _ in range(2))
    mask = _mask(H, D, g, nb)
    hi = (
        torch.zeros(B, H, NV // 64, 4, -(-nb * 2 // 8), 16, dtype=torch.uint8, device=device)
        if boost
        else None
    )
    idx = boost_index(mask, nb).to(torch.int16).to(device) if boost else None
    entries = [(0, 0, 5, 20), (2, 3, 40, 1), (1, 10, 0, 17)]  # (row, src token, dst token, count)
    if decode:  # one token per row, as a decode step flushes (the launcher's small-tile path)
        entries = [(0, 7, 5, 1), (2, 39, 127, 1), (1, 0, 0, 1)]
    pack_values(src, *zip(*entries), lo=lo, scale=sc, zero=zr, bits=2, boost_bits=4, hi=hi, idx=idx)
    written = torch.zeros(B, NV, dtype=torch.bool)
    for b, s0, d0, n in entries:
        written[b, d0 : d0 + n] = True
        pv = quantize_values(src[b, :, s0 : s0 + n].cpu(), 2, 4, mask if boost else None, nb if boost else 0)
        assert torch.equal(pv.lo, to_tokens(lo[b].cpu())[:, d0 : d0 + n]), f"lo codes differ, row {b}"
        assert torch.equal(pv.scale, sc[b, :, d0 : d0 + n].cpu()), f"scales differ, row {b}"
        assert torch.equal(pv.zero, zr[b, :, d0 : d0 + n].cpu()), f"zeros differ, row {b}"
        if boost:
            assert torch.equal(pv.hi, to_tokens(hi[b].cpu())[:, d0 : d0 + n]), f"hi codes differ, row {b}"
    # nothing outside the written tokens (the interleaved offsets address only their own bytes)
    assert to_tokens(lo.cpu()).permute(0, 2, 1, 3)[~written].eq(0).all()


def test_kitty_ties_go_to_the_lower_channel(device):
    """A page with 3 non-zero channels and 8 to boost: 5 zero-score channels tie; the kernel and the
    reference both take the lowest-numbered ones."""
    P, D, nb = 32, 64, 8
    src = torch.zeros(1, 1, P, D, dtype=torch.float16)
    src[0, 0, :, [40, 7, 63]] = torch.randn(P, 3).to(torch.float16) + 3
    src = src.to(device)
    lo = torch.zeros(1, 1, 1, P // 4, D, dtype=torch.uint8, device=device)
    sc, zr = (torch.zeros(1, 1, 1, D, dtype=torch.float16, device=device) for _ in range(2))
    hi = torch.zeros(1, 1, 1, P // 4, nb, dtype=torch.uint8, device=device)
    idx = torch.zeros(1, 1, 1, nb, dtype=torch.int16, device=device)
    pack_key_pages(src, [0], [0], [0], lo=lo, scale=sc, zero=zr, bits=2, boost_bits=4, hi=hi, idx=idx,
                   dynamic=True, n_boost=nb)  # fmt: skip
    assert idx[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 7, 40, 63]
    ref = DynamicMagnitude(nb).key_boost(src[0].cpu().unsqueeze(1))  # (H, 1, D)
    assert ref[0, 0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7, 40, 63]


def test_bad_input_raises(device):
    src = torch.randn(1, 2, 8, 64, device=device).to(torch.float16)
    lo = torch.zeros(1, 2, 1, 8, 64, dtype=torch.uint8, device=device)
    sc = torch.zeros(1, 2, 1, 32, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="scale"):
        pack_key_pages(src, [0], [0], [0], lo=lo, scale=sc, zero=sc, bits=2)
    with pytest.raises(ValueError, match="src"):
        pack_key_pages(src.transpose(2, 3), [0], [0], [0], lo=lo, scale=sc, zero=sc, bits=2)
    sc = torch.zeros(1, 2, 1, 64, dtype=torch.float16, device=device)
    hi = torch.zeros(1, 2, 1, 8, 4, dtype=torch.uint8, device=device)
    idx = torch.zeros(1, 2, 1, 4, dtype=torch.int16, device=device)
    with pytest.raises(ValueError, match="block_channels=32.*all 64 channels"):
        pack_key_pages(src, [0], [0], [0], lo=lo, scale=sc, zero=sc, bits=2, hi=hi, idx=idx, dynamic=True,
                       n_boost=4, block_channels=32)  # fmt: skip


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("bits,boost_bits", [(2, 8), (4, 8)])
def test_key_pages_other_widths_bitwise(mode, bits, boost_bits, device):
    """Hi bytes that group other tokens than the lo bytes (2 + 6 bits: one token per hi byte) and
    4-bit lo codes (two tokens per byte)."""
    g = torch.Generator().manual_seed(7 * bits + boost_bits)
    P, D, H, nb = 32, 64, 2, 8
    src = (torch.randn(1, H, P, D, generator=g) * 2).to(torch.bfloat16).to(device)
    hb = 8 // storage_bits(boost_bits - bits)
    lo = torch.zeros(1, H, 1, P * bits // 8, D, dtype=torch.uint8, device=device)
    sc, zr = (torch.zeros(1, H, 1, D, dtype=torch.float16, device=device) for _ in range(2))
    hi = torch.zeros(1, H, 1, P // hb, nb, dtype=torch.uint8, device=device)
    mask = _mask(H, D, g, nb)
    idx = (
        torch.zeros(1, H, 1, nb, dtype=torch.int16)
        if mode == "dynamic"
        else boost_index(mask, nb).to(torch.int16)
    )
    idx = idx.to(device)
    pack_key_pages(src, [0], [0], [0], lo=lo, scale=sc, zero=zr, bits=bits, boost_bits=boost_bits, hi=hi,
                   idx=idx, dynamic=mode == "dynamic", n_boost=nb)  # fmt: skip
    page = src[0].cpu().unsqueeze(1)
    isb = DynamicMagnitude(nb).key_boost(page) if mode == "dynamic" else mask.unsqueeze(1)
    pk = quantize_key_pages(page, bits, boost_bits, isb, nb)
    assert torch.equal(pk.lo[:, 0], lo[0, :, 0].cpu())
    assert torch.equal(pk.hi[:, 0], hi[0, :, 0].cpu())
    assert torch.equal(pk.scale[:, 0], sc[0, :, 0].cpu())
    assert torch.equal(pk.zero[:, 0], zr[0, :, 0].cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["none", "dynamic", "static"])
def test_key_pages_bitwise_batch64_gpu(mode):
    """One page for all 8 KV heads of a layer at batch 64, head_dim 128, P=128 (the real shape)."""
    g = torch.Generator().manual_seed(7)
    B, H, P, D, NP = 64, 8, 128, 128, 2
    src = (torch.randn(B, H, P, D, generator=g) * 2).to(torch.bfloat16).cuda()
    lo = torch.zeros(B, H, NP, P // 4, D, dtype=torch.uint8, device="cuda")
    sc, zr = (torch.zeros(B, H, NP, D, dtype=torch.float16, device="cuda") for _ in range(2))
    hi = None if mode == "none" else torch.zeros(B, H, NP, P // 4, NB, dtype=torch.uint8, device="cuda")
    mask = _mask(H, D, g)
    idx = {
        "none": None,
        "dynamic": torch.zeros(B, H, NP, NB, dtype=torch.int16),
        "static": boost_index(mask, NB).to(torch.int16),
    }[mode]
    idx = None if idx is None else idx.cuda()
    pack_key_pages(
        src,
        range(B),
        [0] * B,
        [1] * B,
        lo=lo,
        scale=sc,
        zero=zr,
        bits=2,
        boost_bits=4,
        hi=hi,
        idx=idx,
        dynamic=mode == "dynamic",
        n_boost=0 if hi is None else NB,
    )
    pages = src.unsqueeze(2)  # (B, H, 1, P, D)
    isb = None
    if mode == "dynamic":
        isb = torch.stack([DynamicMagnitude(NB).key_boost(pages[b]) for b in range(B)])
    elif mode == "static":
        isb = mask.cuda().unsqueeze(1)
    pk = quantize_key_pages(pages, 2, 4, isb, 0 if isb is None else NB)
    assert torch.equal(pk.lo[:, :, 0], lo[:, :, 1]) and torch.equal(pk.scale[:, :, 0], sc[:, :, 1])
    assert torch.equal(pk.zero[:, :, 0], zr[:, :, 1])
    if hi is not None:
        assert torch.equal(pk.hi[:, :, 0], hi[:, :, 1])
