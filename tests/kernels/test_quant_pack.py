"""Triton quantize-and-pack vs fcboost.quant.mixed: codes, scales and zeros bitwise."""

from __future__ import annotations

import collections

import pytest
import torch

from fcboost.kernels.quant_pack import (
    _key_options,
    _key_pack_plan,
    _pack_key_page_kernel,
    _pack_key_pairs_kernel,
    pack_key_pages,
    pack_values,
)
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
    B, H = 3, 2
    src = (torch.randn(B, H, P + 7, D, generator=g) * 3).to(dtype)
    src[1, 0, 5 : 5 + P, 3] = 0.5  # a constant channel: scale 0 -> 1
    entries = [(0, 0, 1), (2, 3, 3), (1, 5, 0)]  # (row, first token, page)
    bc = None if block is None or mode == "dynamic" else min(block, D)
    _pack_and_check(src.to(device), entries, mode, nb, P=P, block_channels=bc)


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


def _pack_and_check(src, entries, mode, nb, *, P, bits=2, boost_bits=4, NP=4, lo_offset=0, **kw):
    """Pack ``entries`` (row, first token, page; page -1: skipped) of ``src`` (B, H, T, D) and compare
    every packed page with quantize_key_pages; pages of skipped entries stay zero."""
    B, H, _, D = src.shape
    dev = src.device
    g = torch.Generator().manual_seed(11)
    # lo_offset: a view at an odd byte offset (the pair kernel's 16-bit stores need an even address)
    buf = torch.zeros(B * H * NP * (P * bits // 8) * D + lo_offset, dtype=torch.uint8, device=dev)
    lo = buf[lo_offset:].view(B, H, NP, P * bits // 8, D)
    sc, zr = (torch.zeros(B, H, NP, D, dtype=torch.float16, device=dev) for _ in range(2))
    hb = 8 // storage_bits(boost_bits - bits)
    hi = None if mode == "none" else torch.zeros(B, H, NP, P // hb, nb, dtype=torch.uint8, device=dev)
    mask = _mask(H, D, g, nb)
    idx = {
        "none": None,
        "dynamic": torch.zeros(B, H, NP, nb, dtype=torch.int16),
        "static": boost_index(mask, nb).to(torch.int16),
    }[mode]
    idx = None if idx is None else idx.to(dev)
    rows, toks, pages = zip(*entries)
    pack_key_pages(src, rows, toks, pages, lo=lo, scale=sc, zero=zr, bits=bits, boost_bits=boost_bits, hi=hi,
                   idx=idx, dynamic=mode == "dynamic", n_boost=0 if hi is None else nb, **kw)  # fmt: skip
    done = torch.zeros(B, NP, dtype=torch.bool)
    for b, t0, pg in entries:
        if pg < 0:
            continue
        done[b, pg] = True
        page = src[b, :, t0 : t0 + P].cpu().unsqueeze(1)  # (H, 1, P, D)
        isb = {
            "none": None,
            "dynamic": DynamicMagnitude(nb).key_boost(page) if mode == "dynamic" else None,
            "static": mask.unsqueeze(1),
        }[mode]
        pk = quantize_key_pages(
            src[b, :, t0 : t0 + P].cpu().unsqueeze(1), bits, boost_bits, isb, 0 if isb is None else nb
        )
        assert torch.equal(pk.lo[:, 0], lo[b, :, pg].cpu()), f"lo codes differ, row {b} page {pg}"
        assert torch.equal(pk.scale[:, 0], sc[b, :, pg].cpu()), f"scales differ, row {b}"
        assert torch.equal(pk.zero[:, 0], zr[b, :, pg].cpu()), f"zeros differ, row {b}"
        if hi is not None:
            assert torch.equal(pk.hi[:, 0], hi[b, :, pg].cpu()), f"hi codes differ, row {b}"
        if mode == "dynamic":
            assert torch.equal(pk.idx[:, 0].to(torch.int16), idx[b, :, pg].cpu()), (
                "Kitty's channel slots differ"
            )
    skipped = ~done[:, None].expand(B, H, NP)
    assert lo.cpu()[skipped].eq(0).all() and sc.cpu()[skipped].eq(0).all(), "a skipped page was written"
    return idx


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
@pytest.mark.parametrize(
    "variant",  # v4: the fallback kernel (fp32 / misaligned sources); the others: experiment knobs
    ["v4", *(pytest.param(v, marks=pytest.mark.slow) for v in ("reload", "rch4+u8", "nonib", "rchall"))],
)
def test_key_pages_variants_bitwise(mode, variant, device):
    """Each kernel option of the pair kernel (and the session-4 kernel) on one small shape, with a
    decode step's skipped entry (page -1)."""
    g = torch.Generator().manual_seed(5)
    src = (torch.randn(2, 2, 40, 64, generator=g) * 2).to(torch.bfloat16).to(device)
    entries = [(0, 3, 1), (1, 0, -1), (1, 8, 2)]
    _pack_and_check(
        src, entries, mode, 6, P=32, _variant=variant, num_warps=2 if variant == "nonib" else None
    )


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
@pytest.mark.parametrize(
    "case", ["fp32", "src_offset", "lo_offset", "d16", "d256_p16", "bits4", "bits8", "f16_w8"]
)
def test_key_pages_awkward_bitwise(mode, case, device):
    """Sources and shapes off the common path: fp32 keys and pairs not 4-byte aligned (the session-4
    kernel), lo storage at an odd byte offset (8-bit stores), head_dim 16 (Kitty's mask: one word) and
    256 (four pair groups), 16-token pages, 4- and 8-bit lo codes, fp16 keys on 8 warps."""
    g = torch.Generator().manual_seed(len(case))
    D = {"d16": 16, "d256_p16": 256}.get(case, 64)
    P = 16 if case == "d256_p16" else 32
    bits = {"bits4": 4, "bits8": 8}.get(case, 2)
    if bits == 8 and mode != "none":
        pytest.skip("8-bit codes have no boost")
    dtype = {"fp32": torch.float32, "f16_w8": torch.float16}.get(case, torch.bfloat16)
    x = (torch.randn(2, 2, P + 5, D + 2, generator=g) * 3).to(dtype).to(device)  # token stride D + 2
    src = x[..., 1 : D + 1] if case == "src_offset" else x[..., :D]  # from channel 1: pairs 2-byte aligned
    nb = 4 if D == 16 else 8
    _pack_and_check(src, [(1, 2, 0), (0, 5, 1)], mode, nb, P=P, bits=bits, boost_bits=8 if bits == 4 else 4,
                    lo_offset=1 if case == "lo_offset" else 0, num_warps=8 if case == "f16_w8" else None)  # fmt: skip


def test_kitty_ties_at_a_nonzero_score(device):
    """Channels in groups of 4 with equal |k| sums (the same values, signs flipped): boosting 6 takes
    the top group and the 2 lowest-numbered channels of the next (the selection's tie path)."""
    g = torch.Generator().manual_seed(3)
    P, D, H = 32, 64, 2
    base = torch.randn(1, H, P, D // 4, generator=g) * (torch.arange(D // 4) % 5 + 1)  # scores per group
    src = base.repeat_interleave(4, dim=-1)
    src[..., 1::4] *= -1
    src = src.to(torch.bfloat16).to(device)
    idx = _pack_and_check(src, [(0, 0, 0)], "dynamic", 6, P=P, NP=1)  # equal to the reference's
    for h in range(H):
        sel = idx[0, h, 0].tolist()
        groups = collections.Counter(c // 4 for c in sel)
        assert sorted(groups.values()) == [2, 4], sel  # ties at the threshold, split by channel number
        part = next(k for k, v in groups.items() if v == 2)
        assert {4 * part, 4 * part + 1} <= set(sel)


def test_key_kernel_choice():
    """16-bit keys with 4-byte aligned pairs take the pair kernel, the rest the session-4 kernel; lo
    storage at an odd address gets 8-bit stores."""
    src = torch.zeros(1, 2, 40, 66, dtype=torch.bfloat16)
    lo = torch.zeros(1, 2, 1, 8, 64, dtype=torch.uint8)
    sc = torch.zeros(1, 2, 1, 64, dtype=torch.float16)

    def plan(s, lo_=lo, **kw):
        return _key_pack_plan(s, [0], [0], [0], lo=lo_, scale=sc, zero=sc, bits=2, **kw)

    assert plan(src[..., :64])[0] is _pack_key_pairs_kernel and plan(src[..., :64])[3]["LO16"]
    assert plan(src[..., 1:65])[0] is _pack_key_page_kernel  # pairs at 2-byte offsets
    assert plan(src[..., :64].float())[0] is _pack_key_page_kernel
    assert plan(src[..., :64], _variant="v4")[0] is _pack_key_page_kernel
    odd = torch.zeros(2 * 8 * 64 + 1, dtype=torch.uint8)[1:].view(1, 2, 1, 8, 64)
    assert not plan(src[..., :64], lo_=odd)[3]["LO16"]
    assert plan(src[..., :64])[3]["RCH"] == 8  # kivi: no row loop (8 byte rows)


def test_key_variant_names():
    with pytest.raises(ValueError, match="unknown key-pack variant"):
        _key_options("fast", False)
    assert _key_options("v4", True) is None
    assert _key_options("reload+rch8", True) == {"HOLD": False, "RCH": 8, "LO16": True, "NIB_OK": True}


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
@pytest.mark.parametrize("variant", [None, "v4", "reload+u8", "rch8"])
def test_key_pages_bitwise_batch64_gpu(mode, variant):
    """One page for all 8 KV heads of a layer at batch 64, head_dim 128, P=128 (the real shape); the
    default kernel (inline PTX) and its variants."""
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
        _variant=variant,
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
    if mode == "dynamic":
        assert torch.equal(pk.idx[:, :, 0].to(torch.int16), idx[:, :, 1])
