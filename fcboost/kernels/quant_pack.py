"""Triton quantize-and-pack on flush: key pages and value tokens straight into a layer's storage.

Bitwise equal to :func:`fcboost.quant.mixed.quantize_key_pages` / :func:`quantize_values` (codes,
scales, zeros): same fp32 op order, IEEE division (``tl.math.div_rn``), ``floor(x + 0.5)``, fp16
round-to-nearest. Kitty's per-page selection ranks channels by ``sum(|k|) / P`` (torch's mean);
ties or 1-ulp differences of that score between torch's and Triton's reduction order could pick
another channel, which random data practically never hits (the codes test checks it).

Codes use the reference's reciprocal form ``floor((x - zero) * (1 / scale) + 0.5)``: one IEEE
division per group, a multiply per element, launched with FMA contraction off so each step rounds
like torch's eager ops.

One launch serves every (row, page) / (row, token run) entry of a layer and all its KV heads: grid
``(entries, H, D / 32)`` for keys (per-channel statistics, so a program takes a 32-channel block and
reads the page as 4 token planes, the tokens that share a byte, so bytes are OR-ed in registers;
Kitty's programs take all D channels, rank them by mean |k| in the same pass and write the
ascending channel list), ``(entries, H, token tiles)`` for values (a 2-token tile on one warp for
the one-token flush of a decode step, 16 tokens otherwise).
H200 figures: ``benchmarks/results/bench_pack_s4_h200.json`` (``experiments/decode_attention.md``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcboost.kernels.vlayout import vil_offset
from fcboost.quant.core import storage_bits


@triton.jit
def _codes(x, zr, inv, levels):
    """fp32 codes -> int32 ``clamp(floor((x - zero) * (1/scale) + 0.5), 0, levels)`` (the launch
    turns FMA contraction off, so every step rounds as in :func:`fcboost.quant.core.quantize_with`)."""
    q = tl.math.floor((x - zr) * inv + 0.5)
    return tl.minimum(tl.maximum(q, 0.0), levels).to(tl.int32)


@triton.jit
def _pack_key_page_kernel(
    src, s_sb, s_sh, s_st,  # (B, H, T, D) 16-bit keys, channel stride 1
    rows, src_tok, dst_page,  # (R,) int32 entries
    lo, s_lb, s_lh, s_lp, s_lr,  # (B, H, NP, P*b/8, D) uint8
    hi, s_hb, s_hh, s_hp, s_hr,  # (B, H, NP, P*h/8, nb) uint8
    idx, s_ib, s_ih, s_ip,  # (B, H, NP, nb) int16 per page (Kitty) or (H, nb) with zero b/p strides
    scale, zero, s_qb, s_qh, s_qp,  # (B, H, NP, D) float16
    P: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, BOOST_BITS: tl.constexpr, HBITS: tl.constexpr,
    NB: tl.constexpr, NB_PAD: tl.constexpr, BOOST: tl.constexpr, DYN: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Program (entry, head, channel block): the ``BC`` channels ``cblk*BC..`` of one page (per-channel
    statistics need no other channel). The page is read as ``8 // BITS`` token planes (tokens
    ``PER*r + j``, the tokens that share byte ``r``), so bytes are OR-ed in registers. Static masks
    read the boosted channels (ascending) from ``idx``; Kitty (``DYN``, ``BC == D``) ranks the
    channels by mean |k| in the statistics pass and writes the ascending list to ``idx``."""
    e = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(rows + e).to(tl.int64)
    t0 = tl.load(src_tok + e).to(tl.int64)
    pg = tl.load(dst_page + e).to(tl.int64)
    if pg < 0:  # no page to flush for this entry (decode steps without a flush)
        return
    PER: tl.constexpr = 8 // BITS
    RL: tl.constexpr = P // PER  # bytes (rows) of the lo plane
    r = tl.arange(0, RL)
    c = tl.program_id(2) * BC + tl.arange(0, BC)  # this program's channels
    rows0 = src + b * s_sb + h * s_sh + (t0 + PER * r)[:, None] * s_st + c[None, :]  # plane 0
    # statistics pass: elementwise over the planes, one cross-thread reduction at the end
    x = tl.load(rows0).to(tl.float32)
    mn_v = x
    mx_v = x
    a_v = tl.abs(x)
    for j in tl.static_range(1, PER):
        x = tl.load(rows0 + j * s_st).to(tl.float32)
        mn_v = tl.minimum(mn_v, x)
        mx_v = tl.maximum(mx_v, x)
        if DYN:
            a_v += tl.abs(x)
    mn = tl.min(mn_v, axis=0)
    mx = tl.max(mx_v, axis=0)
    i_ptr = idx + b * s_ib + h * s_ih + pg * s_ip
    if DYN:  # Kitty: the top-NB channels by mean |k| (ties: the lower channel), slots ascending
        score = tl.math.div_rn(tl.sum(a_v, axis=0), tl.full((BC,), P, tl.float32))
        ci = tl.arange(0, BC)
        beats = (score[None, :] > score[:, None]) | (
            (score[None, :] == score[:, None]) & (ci[None, :] < ci[:, None])
        )
        is_b = tl.sum(beats.to(tl.int32), axis=1) < NB
        slot = tl.cumsum(is_b.to(tl.int32), axis=0) - 1
        tl.store(i_ptr + slot, c.to(tl.int16), mask=is_b)
    elif BOOST:  # static mask, ascending
        s = tl.arange(0, NB_PAD)
        sidx = tl.load(i_ptr + s, mask=s < NB, other=D).to(tl.int32)
        is_b = tl.sum((sidx[None, :] == c[:, None]).to(tl.int32), axis=1) > 0
        slot = tl.sum((sidx[None, :] < c[:, None]).to(tl.int32), axis=1)  # rank among the boosted
    else:
        is_b = c < 0
        slot = c
    levels = tl.where(is_b, 2**BOOST_BITS - 1, 2**BITS - 1).to(tl.float32)
    sc = tl.math.div_rn(mx - mn, levels).to(tl.float16)
    sc = tl.where(sc == 0, 1.0, sc).to(tl.float16)
    zr = mn.to(tl.float16)
    q_off = b * s_qb + h * s_qh + pg * s_qp + c
    tl.store(scale + q_off, sc)
    tl.store(zero + q_off, zr)
    zf = zr.to(tl.float32)[None, :]
    inv = tl.math.div_rn(tl.full((BC,), 1.0, tl.float32), sc.to(tl.float32))[None, :]
    lv = levels[None, :]
    HPER: tl.constexpr = 8 // HBITS
    ONE: tl.constexpr = HPER == PER  # hi bytes hold the same tokens as lo bytes (2 + 2 bits)
    # codes pass: re-read each plane (cache hits), OR its codes into the bytes
    packed = tl.zeros((RL, BC), tl.int32)
    hp = tl.zeros((RL, BC), tl.int32)
    for j in tl.static_range(PER):
        cj = _codes(tl.load(rows0 + j * s_st).to(tl.float32), zf, inv, lv)
        packed |= (cj & (2**BITS - 1)) << (BITS * j)
        if BOOST and ONE:
            hp |= (cj >> BITS) << (HBITS * j)
    l_ptr = lo + b * s_lb + h * s_lh + pg * s_lp + r[:, None] * s_lr + c[None, :]
    tl.store(l_ptr, packed.to(tl.uint8))
    if BOOST:
        h_ptr0 = hi + b * s_hb + h * s_hh + pg * s_hp + slot[None, :]
        if ONE:
            tl.store(h_ptr0 + r[:, None] * s_hr, hp.to(tl.uint8), mask=is_b[None, :] & (r[:, None] >= 0))
        else:  # another token grouping for the hi bytes (e.g. 2 + 6 bits: one token per byte)
            RH: tl.constexpr = P // HPER
            rh = tl.arange(0, RH)
            hrow0 = src + b * s_sb + h * s_sh + (t0 + HPER * rh)[:, None] * s_st + c[None, :]
            hq = tl.zeros((RH, BC), tl.int32)
            for j in tl.static_range(HPER):
                cj = _codes(tl.load(hrow0 + j * s_st).to(tl.float32), zf, inv, lv)
                hq |= (cj >> BITS) << (HBITS * j)
            tl.store(h_ptr0 + rh[:, None] * s_hr, hq.to(tl.uint8), mask=is_b[None, :] & (rh[:, None] >= 0))


@triton.jit
def _pack_values_kernel(
    src, s_sb, s_sh, s_st,  # (B, H, T, D) 16-bit values
    rows, src_tok, dst_tok, count,  # (R,) int32 entries: tokens src_tok.. -> dst_tok.. (count)
    lo, s_lb, s_lh, s_ls, s_lj,  # (B, H, NV/64, 4, D*b/8, 16) uint8, interleaved (fcboost.quant.layout)
    hi, s_hb, s_hh, s_hs, s_hj,  # (B, H, NV/64, 4, ceil(nb*h/8), 16) uint8, interleaved
    idx,  # (H, nb) int16 static boost channels, ascending (slot s holds channel idx[h, s])
    scale, zero, s_qb, s_qh, s_qt,  # (B, H, NV, G) float16
    D: tl.constexpr, BITS: tl.constexpr, BOOST_BITS: tl.constexpr, HBITS: tl.constexpr, NB: tl.constexpr,
    NB_PAD: tl.constexpr, NHB: tl.constexpr, BOOST: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    e = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(rows + e).to(tl.int64)
    n = tl.load(count + e)
    j = tl.program_id(2) * BT + tl.arange(0, BT)
    tm = j < n
    ts = tl.load(src_tok + e).to(tl.int64) + j
    td = tl.load(dst_tok + e).to(tl.int64) + j
    c = tl.arange(0, D)
    row = src + b * s_sb + h * s_sh + ts[:, None] * s_st
    x = tl.load(row + c[None, :], mask=tm[:, None], other=0.0).to(tl.float32)  # (BT, D)
    PER: tl.constexpr = 8 // BITS
    q_off = b * s_qb + h * s_qh + td * s_qt
    if BOOST:
        s = tl.arange(0, NB_PAD)
        sidx = tl.load(idx + h * NB + s, mask=s < NB, other=D).to(tl.int32)
        is_b = tl.sum((sidx[:, None] == c[None, :]).to(tl.int32), axis=0) > 0  # (D,)
        inf = float("inf")
        mn0 = tl.min(tl.where(is_b[None, :], inf, x), axis=1)
        mx0 = tl.max(tl.where(is_b[None, :], -inf, x), axis=1)
        mn1 = tl.min(tl.where(is_b[None, :], x, inf), axis=1)
        mx1 = tl.max(tl.where(is_b[None, :], x, -inf), axis=1)
        s0 = tl.math.div_rn(mx0 - mn0, tl.full((BT,), 2**BITS - 1, tl.float32)).to(tl.float16)
        s1 = tl.math.div_rn(mx1 - mn1, tl.full((BT,), 2**BOOST_BITS - 1, tl.float32)).to(tl.float16)
        s0 = tl.where(s0 == 0, 1.0, s0).to(tl.float16)
        s1 = tl.where(s1 == 0, 1.0, s1).to(tl.float16)
        z0 = mn0.to(tl.float16)
        z1 = mn1.to(tl.float16)
        inv0 = tl.math.div_rn(tl.full((BT,), 1.0, tl.float32), s0.to(tl.float32))
        inv1 = tl.math.div_rn(tl.full((BT,), 1.0, tl.float32), s1.to(tl.float32))
        inv = tl.where(is_b[None, :], inv1[:, None], inv0[:, None])
        zc = tl.where(is_b[None, :], z1[:, None], z0[:, None]).to(tl.float32)
        levels = tl.where(is_b, 2**BOOST_BITS - 1, 2**BITS - 1).to(tl.float32)[None, :]
        tl.store(scale + q_off, s0, mask=tm)
        tl.store(scale + q_off + 1, s1, mask=tm)
        tl.store(zero + q_off, z0, mask=tm)
        tl.store(zero + q_off + 1, z1, mask=tm)
        # hi codes in slot order: the boosted channels re-read by index (the same codes as below)
        xb = tl.load(row + sidx[None, :], mask=tm[:, None] & (s < NB)[None, :], other=0.0).to(tl.float32)
        cbh = (
            _codes(xb, z1.to(tl.float32)[:, None], inv1[:, None], 2**BOOST_BITS - 1.0) >> BITS
        )  # (BT, NB_PAD)
        cbh = tl.where((s < NB)[None, :], cbh, 0)  # padding slots of the last byte stay 0
        HPER: tl.constexpr = 8 // HBITS
        hsh = (tl.arange(0, HPER) * HBITS)[None, None, :]
        hb = tl.sum(tl.reshape(cbh, (BT, NB_PAD // HPER, HPER)) << hsh, axis=2)  # (BT, NB_PAD/HPER)
        k = tl.arange(0, NB_PAD // HPER)
        h_ptr = hi + b * s_hb + h * s_hh + vil_offset(td[:, None], k[None, :], s_hs, s_hj)
        tl.store(h_ptr, hb.to(tl.uint8), mask=tm[:, None] & (k[None, :] < NHB))
    else:
        mn = tl.min(x, axis=1)
        mx = tl.max(x, axis=1)
        s0 = tl.math.div_rn(mx - mn, tl.full((BT,), 2**BITS - 1, tl.float32)).to(tl.float16)
        s0 = tl.where(s0 == 0, 1.0, s0).to(tl.float16)
        z0 = mn.to(tl.float16)
        inv = tl.math.div_rn(tl.full((BT,), 1.0, tl.float32), s0.to(tl.float32))[:, None]
        zc = z0.to(tl.float32)[:, None]
        levels = (2**BITS - 1) * 1.0
        tl.store(scale + q_off, s0, mask=tm)
        tl.store(zero + q_off, z0, mask=tm)
    codes = _codes(x, zc, inv, levels)  # (BT, D)
    sh = (tl.arange(0, PER) * BITS)[None, None, :]
    packed = tl.sum(tl.reshape(codes & (2**BITS - 1), (BT, D // PER, PER)) << sh, axis=2)  # (BT, D/PER)
    cb = tl.arange(0, D // PER)
    tl.store(
        lo + b * s_lb + h * s_lh + vil_offset(td[:, None], cb[None, :], s_ls, s_lj),
        packed.to(tl.uint8),
        mask=tm[:, None],
    )


def _i32(x, device) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int32, device=device)


def _check_src(src: torch.Tensor, name: str) -> None:
    if (
        src.ndim != 4
        or src.stride(-1) != 1
        or src.dtype not in (torch.float16, torch.bfloat16, torch.float32)
    ):
        raise ValueError(
            f"{name} must be a (B, H, T, D) 16/32-bit tensor with unit channel stride; got "
            f"shape {tuple(src.shape)}, dtype {src.dtype}, strides {src.stride()}"
        )


def pack_key_pages(
    src: torch.Tensor,
    rows,
    src_tok,
    dst_page,
    *,
    lo: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    boost_bits: int = 4,
    hi: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    dynamic: bool = False,
    n_boost: int = 0,
    block_channels: int | None = None,
    num_warps: int | None = None,
) -> None:
    """Quantize pages ``src[rows[e], :, src_tok[e] : src_tok[e] + P]`` into page ``dst_page[e]``
    (entries with ``dst_page[e] < 0`` are skipped: a graph-captured decode step flushes no page).

    src: (B, H, T, D) keys; lo: (B, H, NP, P*bits/8, D) uint8; scale/zero: (B, H, NP, D) float16;
    hi: (B, H, NP, P*h/8, nb) uint8 or None (no boost); idx: ``dynamic`` -> (B, H, NP, nb) int16
    written with the per-page top-``n_boost`` channels (Kitty); else the static (H, nb) int16 mask.
    Each program quantizes ``block_channels`` channels of one page (default 32: more programs, few
    registers; Kitty: all D, its selection ranks every channel); ``num_warps`` is a launch setting
    only (default 4). The static mask's ``idx`` must be ascending
    (slot s holds channel ``idx[h, s]``, as :func:`fcboost.quant.mixed.boost_index` makes it).
    """
    _check_src(src, "src")
    B, H, NP, PB, D = lo.shape
    P = PB * 8 // bits
    if lo.dtype != torch.uint8 or scale.shape != (B, H, NP, D) or zero.shape != scale.shape:
        raise ValueError(
            f"lo {tuple(lo.shape)} {lo.dtype} / scale {tuple(scale.shape)} do not match (B,H,NP,D)"
        )
    if src.shape[1] != H or src.shape[3] != D:
        raise ValueError(f"src {tuple(src.shape)} does not match (H, D)=({H}, {D}) of the pages")
    rows, src_tok, dst_page = (_i32(a, src.device) for a in (rows, src_tok, dst_page))
    R = rows.numel()
    if R == 0:
        return
    boost = hi is not None
    nb = hi.shape[-1] if boost else 0
    if boost and nb != n_boost:
        raise ValueError(f"hi plane has {nb} slots but n_boost={n_boost}")
    hbits = storage_bits(boost_bits - bits) if boost else 1
    hi_t = hi if boost else lo
    idx_t = idx if idx is not None else lo
    hs = hi.stride()[:4] if boost else (0, 0, 0, 0)
    is_ = (
        idx.stride()[:3] if (idx is not None and dynamic) else (0, idx.stride(0) if idx is not None else 0, 0)
    )
    dyn = boost and dynamic
    BC = (D if dyn else min(D, 32)) if block_channels is None else block_channels
    if BC not in (16, 32, 64, 128, 256) or D % BC:
        raise ValueError(f"block_channels={BC}: expected a power of two >= 16 dividing head_dim={D}")
    if dyn and BC != D:
        raise ValueError(
            f"block_channels={BC}: Kitty's per-page selection ranks all {D} channels in one program"
        )
    _pack_key_page_kernel[(R, H, D // BC)](
        src,
        src.stride(0),
        src.stride(1),
        src.stride(2),
        rows,
        src_tok,
        dst_page,
        lo,
        *lo.stride()[:4],
        hi_t,
        *hs,
        idx_t,
        *is_,
        scale,
        zero,
        *scale.stride()[:3],
        P=P,
        D=D,
        BITS=bits,
        BOOST_BITS=boost_bits,
        HBITS=hbits,
        NB=nb,
        NB_PAD=max(16, triton.next_power_of_2(max(nb, 1))),
        BOOST=boost,
        DYN=dyn,
        BC=BC,
        num_warps=4 if num_warps is None else num_warps,
        enable_fp_fusion=False,
    )


def pack_values(
    src: torch.Tensor,
    rows,
    src_tok,
    dst_tok,
    count,
    *,
    lo: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    boost_bits: int = 4,
    hi: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    max_count: int | None = None,
) -> None:
    """Quantize value tokens ``src[rows[e], :, src_tok[e] + j]`` into ``dst_tok[e] + j``, ``j < count[e]``.

    src: (B, H, T, D); lo: (B, H, NV/64, 4, D*bits/8, 16) uint8 (interleaved: :mod:`fcboost.quant.layout`);
    scale/zero: (B, H, NV, G) float16 with G=2 when ``hi`` (B, H, NV/64, 4, ceil(nb*h/8), 16) and the
    static ``idx`` (H, nb) int16 (ascending: slot s holds channel ``idx[h, s]``) boost a channel group.
    """
    _check_src(src, "src")
    if lo.dim() != 6 or lo.shape[3] != 4 or lo.shape[5] != 16 or lo.stride()[3:] != (16 * lo.shape[4], 16, 1):
        raise ValueError(f"lo {tuple(lo.shape)} must be interleaved value bytes (B, H, NV/64, 4, C, 16)")
    B, H, NS, _, DB, _ = lo.shape
    NV = 64 * NS
    D = DB * 8 // bits
    G = scale.shape[-1]
    boost = hi is not None
    if G != (2 if boost else 1) or scale.shape[:3] != (B, H, NV):
        raise ValueError(f"scale {tuple(scale.shape)} must be (B, H, NV={NV}, {2 if boost else 1})")
    if boost and (hi.shape[:4] != (B, H, NS, 4) or hi.shape[5] != 16):
        raise ValueError(f"hi {tuple(hi.shape)} must be interleaved like lo: ({B}, {H}, {NS}, 4, C, 16)")
    if src.shape[1] != H or src.shape[3] != D:
        raise ValueError(f"src {tuple(src.shape)} does not match (H, D)=({H}, {D}) of the values")
    rows, src_tok, dst_tok, count = (_i32(a, src.device) for a in (rows, src_tok, dst_tok, count))
    R = rows.numel()
    if R == 0:
        return
    mc = int(count.max()) if max_count is None else max_count
    BT = 2 if mc <= 2 else 16  # decode steps flush one token per row; two variants, two compilations
    nb = idx.shape[-1] if boost else 0
    hbits = storage_bits(boost_bits - bits) if boost else 1
    nhb = hi.shape[4] if boost else 1
    idx_t = idx.contiguous() if boost else lo
    hi_t = hi if boost else lo
    hs = hi.stride()[:4] if boost else (0, 0, 0, 0)
    _pack_values_kernel[(R, H, triton.cdiv(mc, BT))](
        src,
        src.stride(0),
        src.stride(1),
        src.stride(2),
        rows,
        src_tok,
        dst_tok,
        count,
        lo,
        *lo.stride()[:4],
        hi_t,
        *hs,
        idx_t,
        scale,
        zero,
        *scale.stride()[:3],
        D=D,
        BITS=bits,
        BOOST_BITS=boost_bits,
        HBITS=hbits,
        NB=nb,
        NB_PAD=max(16, triton.next_power_of_2(max(nb, 1))),
        NHB=nhb,
        BOOST=boost,
        BT=BT,
        num_warps=1 if BT <= 4 else 4,
        enable_fp_fusion=False,
    )


def pack_keys_into(
    st,
    src: torch.Tensor,
    rows,
    src_tok,
    dst_page,
    num_warps: int | None = None,
    block_channels: int | None = None,
) -> None:
    """:func:`pack_key_pages` into a layer's storage ``st``: an object with ``cfg`` and the arrays
    ``k_lo``, ``k_scale``, ``k_zero``, ``k_hi`` (None: no boost), ``k_idx`` (Kitty, else None),
    ``boost_idx`` (a static mask's, else None) and ``n_boost`` (both cache layers and
    :class:`fcboost.kernels.state.PackedKVState` have them)."""
    c = st.cfg
    pack_key_pages(
        src,
        rows,
        src_tok,
        dst_page,
        lo=st.k_lo,
        scale=st.k_scale,
        zero=st.k_zero,
        bits=c.key_bits,
        boost_bits=c.boost_bits,
        hi=st.k_hi,
        idx=st.k_idx if st.k_idx is not None else st.boost_idx,
        dynamic=st.k_idx is not None,
        n_boost=st.n_boost if st.k_hi is not None else 0,
        block_channels=block_channels,
        num_warps=num_warps,
    )


def pack_values_into(
    st, src: torch.Tensor, rows, src_tok, dst_tok, count, max_count: int | None = None
) -> None:
    """:func:`pack_values` into a layer's storage ``st`` (``cfg``, ``v_lo``, ``v_scale``, ``v_zero``,
    ``v_hi`` (None unless a static mask boosts values) and ``boost_idx``)."""
    c = st.cfg
    pack_values(
        src,
        rows,
        src_tok,
        dst_tok,
        count,
        lo=st.v_lo,
        scale=st.v_scale,
        zero=st.v_zero,
        bits=c.value_bits,
        boost_bits=c.boost_bits,
        hi=st.v_hi,
        idx=st.boost_idx if st.v_hi is not None else None,
        max_count=max_count,
    )
