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
``(entries, H, D / 32)`` for keys (per-channel statistics, so a program takes a 32-channel block;
Kitty's programs take all D channels and select the boosted ones in the same pass), ``(entries, H,
token tiles)`` for values (a 2-token tile on one warp for the one-token flush of a decode step, 16
tokens otherwise).

Key pages from 16-bit sources (session 6, ``_pack_key_pairs_kernel``): the page is read as int32
channel *pairs*, one pair per thread (loads do not vectorize: per-channel work, the two divisions of
each channel, is replicated over 8 lanes instead of 32, and over 2 channels instead of 8), as
``8 // bits`` token planes (tokens ``PER*r + j``, the tokens that share byte ``r``). Min/max run on
both halves at once (``min.bf16x2`` / ``min.f16x2``: exact, no conversion), codes round with one
``cvt.rmi.u32.f32`` (floor, and the clamp at 0 by saturation) and one integer min, and a pair's bytes,
scales and zeros leave in one store each. Kitty's top-NB channels come from a bitwise search for the
NB-th largest score (non-negative floats order like their bit patterns; one warp-wide count per bit,
stopping once exactly NB scores are >= the prefix) and the ascending slots from a D-bit mask and
popcounts, instead of a D x D rank comparison; static masks' slots from a bit mask of the block too.
The CPU interpreter runs the same kernel with plain Triton in place of the inline PTX (``ASM=False``).
The session-4 kernel (``_pack_key_page_kernel``) stays for 32-bit sources and pairs that are not
4-byte aligned (and as ``_variant="v4"``). Layouts were checked by compiling for sm_90 with Triton
3.6, the H200 image's version (``python benchmarks/pack_probe.py --sass``); 3.9 breaks some ties
between dimensions the other way (same results, a few more instructions).
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


# ---------------------------------------------------------------- key pages from 16-bit channel pairs
# A pair is an int32 holding channels 2i (low half) and 2i + 1 (high half) of a bf16 / fp16 row.


@triton.jit
def _f32_lo(v, F16: tl.constexpr):
    """fp32 value of the low 16-bit half of each pair ``v`` (int32)."""
    if F16:
        return v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        return (v << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_hi(v, F16: tl.constexpr):
    """fp32 value of the high 16-bit half of each pair ``v`` (int32)."""
    if F16:
        return (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        return (v & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _abs2(v, F16: tl.constexpr, SEP: tl.constexpr):
    """fp32 |low half|, |high half| of pairs ``v``; ``SEP``: through the sign-cleared pairs."""
    if SEP:
        a = v & 0x7FFF7FFF
        return _f32_lo(a, F16), _f32_hi(a, F16)
    else:
        return tl.abs(_f32_lo(v, F16)), tl.abs(_f32_hi(v, F16))


@triton.jit
def _pick2(a, b, F16: tl.constexpr, MAX: tl.constexpr):
    """Min (max) of both halves of pairs ``a``, ``b`` in plain Triton (the interpreter's path): the
    bits of the smaller (larger) half, unchanged."""
    al = _f32_lo(a, F16)
    bl = _f32_lo(b, F16)
    ah = _f32_hi(a, F16)
    bh = _f32_hi(b, F16)
    if MAX:
        lo_ = tl.where(bl > al, b, a) & 0xFFFF
        hi_ = tl.where(bh > ah, b, a) & -65536
    else:
        lo_ = tl.where(bl < al, b, a) & 0xFFFF
        hi_ = tl.where(bh < ah, b, a) & -65536
    return lo_ | hi_


@triton.jit
def _asm2(a, b, OP: tl.constexpr):
    return tl.inline_asm_elementwise(
        OP + " $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1
    )


@triton.jit
def _min_bf(a, b):
    return _asm2(a, b, "min.bf16x2")


@triton.jit
def _max_bf(a, b):
    return _asm2(a, b, "max.bf16x2")


@triton.jit
def _min_hf(a, b):
    return _asm2(a, b, "min.f16x2")


@triton.jit
def _max_hf(a, b):
    return _asm2(a, b, "max.f16x2")


@triton.jit
def _min_bf_ref(a, b):
    return _pick2(a, b, False, False)


@triton.jit
def _max_bf_ref(a, b):
    return _pick2(a, b, False, True)


@triton.jit
def _min_hf_ref(a, b):
    return _pick2(a, b, True, False)


@triton.jit
def _max_hf_ref(a, b):
    return _pick2(a, b, True, True)


@triton.jit
def _min2(a, b, F16: tl.constexpr, ASM: tl.constexpr):
    if ASM:
        if F16:
            return _min_hf(a, b)
        else:
            return _min_bf(a, b)
    else:
        return _pick2(a, b, F16, False)


@triton.jit
def _max2(a, b, F16: tl.constexpr, ASM: tl.constexpr):
    if ASM:
        if F16:
            return _max_hf(a, b)
        else:
            return _max_bf(a, b)
    else:
        return _pick2(a, b, F16, True)


@triton.jit
def _rowmin2(x, F16: tl.constexpr, ASM: tl.constexpr):
    """Min of both halves of pairs ``x`` (rows, groups, lanes) over the rows."""
    if ASM:
        if F16:
            return tl.reduce(x, 0, _min_hf)
        else:
            return tl.reduce(x, 0, _min_bf)
    else:
        if F16:
            return tl.reduce(x, 0, _min_hf_ref)
        else:
            return tl.reduce(x, 0, _min_bf_ref)


@triton.jit
def _rowmax2(x, F16: tl.constexpr, ASM: tl.constexpr):
    if ASM:
        if F16:
            return tl.reduce(x, 0, _max_hf)
        else:
            return tl.reduce(x, 0, _max_bf)
    else:
        if F16:
            return tl.reduce(x, 0, _max_hf_ref)
        else:
            return tl.reduce(x, 0, _max_bf_ref)


@triton.jit
def _code2(x, zr, inv, lv, ASM: tl.constexpr):
    """int32 codes ``min(max(floor((x - zero) * inv + 0.5), 0), lv)`` (``lv`` int32). On the GPU one
    ``cvt.rmi.u32.f32`` floors and clamps at 0 (it saturates: negatives and NaN give 0), then an
    unsigned min."""
    t = (x - zr) * inv + 0.5
    if ASM:  # one asm block: the compiler cannot see the codes' range, so packing adds stay adds (LEA)
        return tl.inline_asm_elementwise(
            "{ .reg .u32 t; cvt.rmi.u32.f32 t, $1; min.u32 $0, t, $2; }",
            "=r,r,r",
            [t, lv],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    else:
        return tl.minimum(tl.maximum(tl.math.floor(t), 0.0), lv.to(tl.float32)).to(tl.int32)


@triton.jit
def _qparams(mn, mx, lvf):
    """fp16 scale and zero of channels with fp32 ``mn``, ``mx`` and ``lvf`` levels, and fp32 1/scale."""
    sc = tl.math.div_rn(mx - mn, lvf).to(tl.float16)
    sc = tl.where(sc == 0, 1.0, sc).to(tl.float16)
    zr = mn.to(tl.float16)
    inv = tl.math.div_rn(tl.full(mn.shape, 1.0, tl.float32), sc.to(tl.float32))
    return sc, zr, inv


@triton.jit
def _sum2(x):
    """Sum of a (groups, lanes) tensor: over the groups in each thread first, then one warp reduction."""
    return tl.sum(tl.sum(x, axis=0), axis=0)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _popc(x, ASM: tl.constexpr):
    """Set bits of int32 ``x``."""
    if ASM:
        return tl.inline_asm_elementwise(
            "popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1
        )
    else:
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        return ((x * 0x01010101) >> 24) & 255


@triton.jit
def _count_below(fl, fh, cl, D: tl.constexpr, ASM: tl.constexpr):
    """For flags ``fl`` / ``fh`` of channels ``cl`` / ``cl + 1`` (every channel of 0..D once, in any
    order): the number of flagged channels below ``cl``. Through a D-bit mask (32-bit words, one
    OR-reduction each) and popcounts."""
    wd = cl // 32
    bl = cl % 32  # even: both channels of a pair share a word
    bits = (fl.to(tl.int32) << bl) | (fh.to(tl.int32) << (bl + 1))
    n = tl.zeros_like(cl)
    for w in tl.static_range((D + 31) // 32):
        word = tl.reduce(tl.reduce(tl.where(wd == w, bits, 0), 0, _or), 0, _or)
        part = tl.where(wd == w, word & ((1 << bl) - 1), word)
        n += tl.where(wd >= w, _popc(part, ASM), 0)
    return n


@triton.jit
def _block_slots(si, cl, c0, BC: tl.constexpr, ASM: tl.constexpr):
    """Static masks: of channels ``cl`` / ``cl + 1`` in the block ``c0 .. c0 + BC`` and the ascending
    boosted channels ``si`` (padding: >= c0 + BC), whether each is boosted and the slot of ``cl``
    (boosted channels below it). One bit mask per 32 channels of the block (an OR-reduction each)."""
    rel = si - c0
    slot = tl.zeros_like(cl) + tl.sum((rel < 0).to(tl.int32), axis=0)  # boosted channels below the block
    c = cl - c0  # even
    bit = c % 32
    isl = cl < 0
    ish = isl
    for w in tl.static_range((BC + 31) // 32):
        inw = (rel >= 32 * w) & (rel < 32 * w + 32)
        word = tl.reduce(tl.where(inw, 1 << (rel - 32 * w), 0), 0, _or)
        here = c // 32 == w
        slot += tl.where(c // 32 > w, _popc(word, ASM), 0)
        slot += tl.where(here, _popc(word & ((1 << bit) - 1), ASM), 0)
        isl |= here & (((word >> bit) & 1) != 0)
        ish |= here & (((word >> (bit + 1)) & 1) != 0)
    return isl, ish, slot


@triton.jit
def _top_channels(suml, sumh, cl, P: tl.constexpr, D: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr):
    """Kitty's selection over all D channels (``cl`` / ``cl + 1`` with their sums of |k| over the page):
    the top-NB by mean |k|, ties to the lower channel (``DynamicMagnitude``'s stable sort). Returns the
    flags and ascending slots of ``cl`` and ``cl + 1``.

    Scores are >= 0, so they order like their int32 bit patterns: the NB-th largest comes from a
    search bit by bit from the top (one warp-wide count per bit), stopped once exactly NB scores are
    >= the prefix found (random data: about 20 bits); only exact ties at the NB-th score need the
    channel order (the lowest-numbered of them)."""
    if (P & (P - 1)) == 0:
        sl = suml * (1.0 / P)  # exact: the division's value (a power of two)
        sh = sumh * (1.0 / P)
    else:
        sl = tl.math.div_rn(suml, tl.full(suml.shape, P, tl.float32))
        sh = tl.math.div_rn(sumh, tl.full(sumh.shape, P, tl.float32))
    kl = sl.to(tl.int32, bitcast=True)
    kh = sh.to(tl.int32, bitcast=True)
    t = 0
    n = D  # keys >= t
    i = 30
    while (i >= 0) & (n > NB):
        cand = t | (1 << i)
        c = D + _sum2(((kl - cand) >> 31) + ((kh - cand) >> 31))  # keys >= cand (keys, cand < 2**31)
        t = tl.where(c >= NB, cand, t)
        n = tl.where(c >= NB, c, n)
        i -= 1
    isl = kl >= t
    ish = kh >= t
    if n > NB:  # ties at the NB-th largest score t: the lowest-numbered of them
        el = kl == t
        eh = kh == t
        need = NB - n + _sum2(el.to(tl.int32) + eh.to(tl.int32))  # NB - #{keys > t}
        pl = _count_below(el, eh, cl, D, ASM)
        isl = (kl > t) | (el & (pl < need))
        ish = (kh > t) | (eh & (pl + el.to(tl.int32) < need))
    slotl = _count_below(isl, ish, cl, D, ASM)
    return isl, ish, slotl, slotl + isl.to(tl.int32)


@triton.jit
def _squeeze2(t):
    """2-bit fields at bits 4i..4i+1 of each 16-bit half -> side by side: the low half's 8 bits at bits
    0-7, the high half's at 8-15."""
    t = (t | (t >> 2)) & 0x0F0F0F0F
    t = (t | (t >> 4)) & 0x00FF00FF
    return (t | (t >> 8)) & 0xFFFF


@triton.jit
def _pair_codes(x0, x1, x2, x3, zl, zh, il, ih, vl, vh, PER: tl.constexpr, BITS: tl.constexpr,
                HBITS: tl.constexpr, BOOST: tl.constexpr, HB: tl.constexpr, NIB: tl.constexpr,
                F16: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """Bytes of the token planes ``x0..`` (pairs): lo with the low channel's byte in bits 0-7 and the
    high channel's in 8-15, and (``HB``) hi bytes likewise (boosted codes' high bits, same tokens)."""
    LO: tl.constexpr = 2**BITS - 1
    acc = tl.zeros_like(x0)
    hacc = tl.zeros_like(x0)
    for j in tl.static_range(PER):
        if j == 0:
            x = x0
        elif j == 1:
            x = x1
        elif j == 2:
            x = x2
        else:
            x = x3
        c0 = _code2(_f32_lo(x, F16), zl, il, vl, ASM)
        c1 = _code2(_f32_hi(x, F16), zh, ih, vh, ASM)
        if NIB:  # 2 + 2 bits: 4-bit codes side by side (16 bits a channel), split into lo / hi after
            acc += (c0 << (4 * j)) + (c1 << (16 + 4 * j))
        elif BOOST:
            acc |= ((c0 & LO) << (BITS * j)) | ((c1 & LO) << (8 + BITS * j))
            if HB:
                hacc |= ((c0 >> BITS) << (HBITS * j)) | ((c1 >> BITS) << (8 + HBITS * j))
        else:
            acc += (c0 << (BITS * j)) + (c1 << (8 + BITS * j))
    if NIB:
        hacc = _squeeze2((acc >> 2) & 0x33333333)
        acc = _squeeze2(acc & 0x33333333)
    return acc, hacc


@triton.jit
def _store_t(p, v, m):
    """Masked store of (rows, groups, lanes) tensors, transposed to (lanes, rows, groups)."""
    m = tl.broadcast_to(m, p.shape)
    tl.store(tl.permute(p, (2, 0, 1)), tl.permute(v, (2, 0, 1)), mask=tl.permute(m, (2, 0, 1)))


@triton.jit
def _store_pair_bytes(p_lo, p_hi, acc, hacc, slotl, sloth, isl, ish, LO16: tl.constexpr, HB: tl.constexpr):
    """Lo bytes at ``p_lo`` (the low channel's; the high channel's follows) and, ``HB``, hi bytes at
    ``p_hi + slot`` of the boosted channels."""
    if LO16:
        tl.store(p_lo, acc.to(tl.int16))
    else:
        tl.store(p_lo, acc.to(tl.uint8))
        tl.store(p_lo + 1, (acc >> 8).to(tl.uint8))
    if HB:  # slot-indexed addresses are contiguous along no dimension; Triton 3.6 then makes the first
        # dimension the fastest: (lanes, rows, groups) keeps the codes' layout (no shared-memory shuffle)
        _store_t(p_hi + slotl, hacc.to(tl.uint8), isl)
        _store_t(p_hi + sloth, (hacc >> 8).to(tl.uint8), ish)


@triton.jit(do_not_specialize=["s_sh", "s_lh", "s_qh"])
def _pack_key_pairs_kernel(
    src, s_sb, s_sh, s_st,  # (B, H, T, D) 16-bit keys as int32 channel pairs: strides in pairs
    rows, src_tok, dst_page,  # (R,) int32 entries
    lo, s_lb, s_lh, s_lp, s_lr,  # (B, H, NP, P*b/8, D) uint8 (LO16: strides in 16-bit units)
    hi, s_hb, s_hh, s_hp, s_hr,  # (B, H, NP, P*h/8, nb) uint8
    idx, s_ib, s_ih, s_ip,  # (B, H, NP, nb) int16 per page (Kitty) or (H, nb) with zero b/p strides
    scale, zero, s_qb, s_qh, s_qp,  # (B, H, NP, D) float16 (Q32: strides in pairs)
    P: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, BOOST_BITS: tl.constexpr, HBITS: tl.constexpr,
    NB: tl.constexpr, NB_PAD: tl.constexpr, BOOST: tl.constexpr, DYN: tl.constexpr, BC: tl.constexpr,
    F16: tl.constexpr, ASM: tl.constexpr, HOLD: tl.constexpr, RCH: tl.constexpr, LO16: tl.constexpr,
    Q32: tl.constexpr, NIB_OK: tl.constexpr,
):  # fmt: skip
    """Program (entry, head, channel block) of ``BC`` channels (Kitty: all D), read as int32 pairs in a
    (row, group, lane) tile, the lanes of a warp along consecutive pairs and the warps along rows only:
    per-pair vectors (reduced over the rows) are whole in every warp, so Kitty's counts are warp
    reductions. The head strides are not specialized (``do_not_specialize``): the compiler cannot prove
    16-byte alignment, so loads and stores stay one pair (4 bytes) a thread instead of vectorizing to 4
    pairs (per-channel work, the divisions, would be replicated over 4x the channels). ``HOLD``: the
    codes pass reuses the loaded planes (else reloads them, cache hits); ``RCH < P*b/8``: the codes
    pass runs over row chunks in a loop (fewer live registers: Kitty); ``LO16`` / ``Q32``: lo bytes
    and scales / zeros leave a pair at a time (16 / 32-bit stores; strides in those units);
    ``NIB_OK``: 2 + 2-bit codes pack through 4-bit fields."""
    e = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(rows + e).to(tl.int64)
    t0 = tl.load(src_tok + e).to(tl.int64)
    pg = tl.load(dst_page + e).to(tl.int64)
    if pg < 0:  # no page to flush for this entry (decode steps without a flush)
        return
    PER: tl.constexpr = 8 // BITS
    RL: tl.constexpr = P // PER  # bytes (rows) of the lo plane
    NP2: tl.constexpr = BC // 2
    GW: tl.constexpr = 32 if NP2 > 32 else NP2  # pairs per group (a warp's lanes)
    NG: tl.constexpr = NP2 // GW
    r = tl.arange(0, RL)[:, None, None]
    k = tl.arange(0, NG)[:, None] * GW + tl.arange(0, GW)[None, :]  # (NG, GW) pair in the block
    cl = tl.program_id(2) * BC + 2 * k  # the low channel of each pair
    ch = cl + 1
    base = src.to(tl.pointer_type(tl.int32)) + b * s_sb + h * s_sh + t0 * s_st
    kp = (tl.program_id(2) * NP2 + k)[None, :, :]
    rows0 = base + PER * s_st * r + kp  # plane 0 (tokens PER*r)
    # statistics: min/max elementwise over the planes (both halves at once), one reduction over rows
    x0 = tl.load(rows0)
    mn2 = x0
    mx2 = x0
    x1 = x0
    x2 = x0
    x3 = x0
    if PER > 1:
        x1 = tl.load(rows0 + s_st)
        mn2 = _min2(mn2, x1, F16, ASM)
        mx2 = _max2(mx2, x1, F16, ASM)
    if PER > 2:
        x2 = tl.load(rows0 + 2 * s_st)
        x3 = tl.load(rows0 + 3 * s_st)
        mn2 = _min2(mn2, _min2(x2, x3, F16, ASM), F16, ASM)
        mx2 = _max2(mx2, _max2(x2, x3, F16, ASM), F16, ASM)
    mn2 = _rowmin2(mn2, F16, ASM)
    mx2 = _rowmax2(mx2, F16, ASM)
    LO: tl.constexpr = 2**BITS - 1
    i_ptr = idx + b * s_ib + h * s_ih + pg * s_ip
    if DYN:  # Kitty: top-NB channels by mean |k|, ascending list to idx
        # |k| summed over the planes. Holding the planes for the codes pass, the sign bits are cleared
        # before unpacking (other values than the codes pass's: the compiler does not keep those alive
        # through the selection); else unpacked values with |.| (free on the FADD)
        SEP: tl.constexpr = HOLD and RCH >= RL
        al, ah = _abs2(x0, F16, SEP)
        if PER > 1:
            bl, bh = _abs2(x1, F16, SEP)
            al += bl
            ah += bh
        if PER > 2:
            bl, bh = _abs2(x2, F16, SEP)
            al += bl
            ah += bh
            bl, bh = _abs2(x3, F16, SEP)
            al += bl
            ah += bh
        isl, ish, slotl, sloth = _top_channels(tl.sum(al, axis=0), tl.sum(ah, axis=0), cl, P, D, NB, ASM)
        tl.store(i_ptr + slotl, cl.to(tl.int16), mask=isl)
        tl.store(i_ptr + sloth, ch.to(tl.int16), mask=ish)
    elif BOOST:  # static mask (ascending): the block's boosted channels as a bit mask
        s = tl.arange(0, NB_PAD)
        isl, ish, slotl = _block_slots(tl.load(i_ptr + s, mask=s < NB, other=D).to(tl.int32), cl,
                                       tl.program_id(2) * BC, BC, ASM)  # fmt: skip
        sloth = slotl + isl.to(tl.int32)
    else:
        isl = cl < 0
        ish = isl
        slotl = cl
        sloth = cl
    lvl = tl.where(isl, 2**BOOST_BITS - 1, LO)
    lvh = tl.where(ish, 2**BOOST_BITS - 1, LO)
    scl, zrl, invl = _qparams(_f32_lo(mn2, F16), _f32_lo(mx2, F16), lvl.to(tl.float32))
    sch, zrh, invh = _qparams(_f32_hi(mn2, F16), _f32_hi(mx2, F16), lvh.to(tl.float32))
    if Q32:  # both channels' scales (zeros) in one int32 store: strides in pairs
        q_off = b * s_qb + h * s_qh + pg * s_qp + tl.program_id(2) * NP2 + k
        sc2 = scl.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF | (
            sch.to(tl.int16, bitcast=True).to(tl.int32) << 16
        )
        zr2 = zrl.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF | (
            zrh.to(tl.int16, bitcast=True).to(tl.int32) << 16
        )
        tl.store(scale.to(tl.pointer_type(tl.int32)) + q_off, sc2)
        tl.store(zero.to(tl.pointer_type(tl.int32)) + q_off, zr2)
    else:
        q_off = b * s_qb + h * s_qh + pg * s_qp + cl
        tl.store(scale + q_off, scl)
        tl.store(scale + q_off + 1, sch)
        tl.store(zero + q_off, zrl)
        tl.store(zero + q_off + 1, zrh)
    zl = zrl.to(tl.float32)[None, :, :]
    zh = zrh.to(tl.float32)[None, :, :]
    il = invl[None, :, :]
    ih = invh[None, :, :]
    vl = lvl[None, :, :]
    vh = lvh[None, :, :]
    HPER: tl.constexpr = 8 // HBITS
    HB: tl.constexpr = BOOST and HPER == PER  # hi bytes hold the same tokens as lo bytes (2 + 2 bits)
    NIB: tl.constexpr = HB and BITS == 2 and HBITS == 2 and NIB_OK
    if LO16:  # lo strides in 16-bit units: a pair's two bytes at once
        l_base = lo.to(tl.pointer_type(tl.int16)) + b * s_lb + h * s_lh + pg * s_lp + kp
    else:
        l_base = lo + b * s_lb + h * s_lh + pg * s_lp + 2 * kp
    h_base = hi + b * s_hb + h * s_hh + pg * s_hp
    sl3 = slotl[None, :, :]
    sh3 = sloth[None, :, :]
    il3 = isl[None, :, :]
    ih3 = ish[None, :, :]
    # codes pass: OR each plane's codes into the bytes of its row
    if RCH >= RL:
        if not HOLD:
            x0 = tl.load(rows0)
            if PER > 1:
                x1 = tl.load(rows0 + s_st)
            if PER > 2:
                x2 = tl.load(rows0 + 2 * s_st)
                x3 = tl.load(rows0 + 3 * s_st)
        acc, hacc = _pair_codes(
            x0, x1, x2, x3, zl, zh, il, ih, vl, vh, PER, BITS, HBITS, BOOST, HB, NIB, F16, ASM
        )
        _store_pair_bytes(l_base + r * s_lr, h_base + r * s_hr, acc, hacc, sl3, sh3, il3, ih3, LO16, HB)
    else:  # row chunks in a loop (reloads, cache hits): fewer values live at once
        for rc in range(0, RL, RCH):
            rr = rc + tl.arange(0, RCH)[:, None, None]
            pr = base + PER * s_st * rr + kp
            y0 = tl.load(pr)
            y1 = y0
            y2 = y0
            y3 = y0
            if PER > 1:
                y1 = tl.load(pr + s_st)
            if PER > 2:
                y2 = tl.load(pr + 2 * s_st)
                y3 = tl.load(pr + 3 * s_st)
            acc, hacc = _pair_codes(
                y0, y1, y2, y3, zl, zh, il, ih, vl, vh, PER, BITS, HBITS, BOOST, HB, NIB, F16, ASM
            )
            _store_pair_bytes(l_base + rr * s_lr, h_base + rr * s_hr, acc, hacc, sl3, sh3, il3, ih3, LO16, HB)
    if BOOST and not HB:  # another token grouping for the hi bytes (e.g. 2 + 6 bits: one token per byte)
        RH: tl.constexpr = P // HPER
        rh = tl.arange(0, RH)[:, None, None]
        hrow0 = base + HPER * s_st * rh + kp
        hq = tl.zeros((RH, NG, GW), tl.int32)
        for j in tl.static_range(HPER):
            x = tl.load(hrow0 + j * s_st)
            hq |= (_code2(_f32_lo(x, F16), zl, il, vl, ASM) >> BITS) << (HBITS * j)
            hq |= (_code2(_f32_hi(x, F16), zh, ih, vh, ASM) >> BITS) << (8 + HBITS * j)
        hrow = h_base + rh * s_hr
        tl.store(hrow + sl3, hq.to(tl.uint8), mask=il3 & (rh >= 0))
        tl.store(hrow + sh3, (hq >> 8).to(tl.uint8), mask=ih3 & (rh >= 0))


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


# Options of _pack_key_pairs_kernel by name, for A/B tests on the GPU (``_variant`` of pack_key_pages /
# pack_keys_into; names join with "+"; benchmarks/pack_probe.py). "v4": the session-4 kernel.
KEY_VARIANTS = {
    "pairs": {},  # the defaults below
    "reload": {"HOLD": False},  # the codes pass reloads the planes (cache hits) instead of holding them
    "rch4": {"RCH": 4},  # the codes pass over chunks of 4 / 8 / 16 byte rows in a loop
    "rch8": {"RCH": 8},
    "rch16": {"RCH": 16},
    "rchall": {"RCH": 1 << 20},  # no loop (kivi / static default)
    "u8": {"LO16": False},  # lo bytes as two 8-bit stores
    "nonib": {"NIB_OK": False},  # 2 + 2-bit codes packed per field instead of through 4-bit fields
}


def _key_options(variant: str | None, dyn: bool) -> dict | None:
    """Kernel options of a ``_variant`` name (None: the session-4 kernel, "v4")."""
    opts = {"HOLD": True, "RCH": 16 if dyn else 1 << 20, "LO16": True, "NIB_OK": True}
    for name in (variant or "pairs").split("+"):
        if name == "v4":
            return None
        if name not in KEY_VARIANTS:
            raise ValueError(f"unknown key-pack variant {name!r}; expected v4 or {sorted(KEY_VARIANTS)}")
        opts.update(KEY_VARIANTS[name])
    return opts


def _key_pack_plan(
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
    _variant: str | None = None,
) -> tuple | None:
    """:func:`pack_key_pages`'s kernel, grid, arguments and launch keywords (None: nothing to do)."""
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
        return None
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
    BC = (D if dyn else min(D, 64)) if block_channels is None else block_channels
    if BC not in (16, 32, 64, 128, 256) or D % BC:
        raise ValueError(f"block_channels={BC}: expected a power of two >= 16 dividing head_dim={D}")
    if dyn and BC != D:
        raise ValueError(
            f"block_channels={BC}: Kitty's per-page selection ranks all {D} channels in one program"
        )
    opts = _key_options(_variant, dyn)
    consts = dict(
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
    ss = src.stride()[:3]
    pairs = (
        opts is not None
        and src.dtype in (torch.float16, torch.bfloat16)
        and src.data_ptr() % 4 == 0
        and all(x % 2 == 0 for x in ss)
        and P * ss[2] < 2**31  # in-page offsets are int32
    )
    if pairs:
        RL = P * bits // 8
        lo16 = opts["LO16"] and lo.data_ptr() % 2 == 0 and all(x % 2 == 0 for x in lo.stride()[:4])
        qs = scale.stride()[:3]
        q32 = (
            zero.stride()[:3] == qs
            and all(x % 2 == 0 for x in qs)
            and scale.data_ptr() % 4 == zero.data_ptr() % 4 == 0
        )
        ls = tuple(x // 2 for x in lo.stride()[:4]) if lo16 else lo.stride()[:4]
        args = (src, *(x // 2 for x in ss), rows, src_tok, dst_page, lo, *ls, hi_t, *hs, idx_t, *is_,
                scale, zero, *(tuple(x // 2 for x in qs) if q32 else qs))  # fmt: skip
        consts.update(
            F16=src.dtype == torch.float16,
            ASM=src.device.type == "cuda",
            HOLD=opts["HOLD"],
            RCH=min(opts["RCH"], RL),
            LO16=lo16,
            Q32=q32,
            NIB_OK=opts["NIB_OK"],
        )
        return _pack_key_pairs_kernel, (R, H, D // BC), args, consts
    args = (src, *ss, rows, src_tok, dst_page, lo, *lo.stride()[:4], hi_t, *hs, idx_t, *is_,
            scale, zero, *scale.stride()[:3])  # fmt: skip
    return _pack_key_page_kernel, (R, H, D // BC), args, consts


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
    _variant: str | None = None,
) -> None:
    """Quantize pages ``src[rows[e], :, src_tok[e] : src_tok[e] + P]`` into page ``dst_page[e]``
    (entries with ``dst_page[e] < 0`` are skipped: a graph-captured decode step flushes no page).

    src: (B, H, T, D) keys; lo: (B, H, NP, P*bits/8, D) uint8; scale/zero: (B, H, NP, D) float16;
    hi: (B, H, NP, P*h/8, nb) uint8 or None (no boost); idx: ``dynamic`` -> (B, H, NP, nb) int16
    written with the per-page top-``n_boost`` channels (Kitty); else the static (H, nb) int16 mask.
    Each program quantizes ``block_channels`` channels of one page (default 64: on the H200 at batch
    64, 4 warps, the fastest of 16/32/64 in every benchmark run of sessions 7-9, e.g. kivi 13.3 us
    against 15.4 for 32 and static 15.6 against 16.9, ``bench_attention_s9b_h200.json``; as the
    default in session 10: kivi 12.9, static 15.3, ``bench_pack_s10_h200.json``; Kitty: all
    D, its selection ranks every channel); ``num_warps`` is a launch setting only (default 4). The
    static mask's ``idx`` must be ascending (slot s holds channel ``idx[h, s]``, as
    :func:`fcboost.quant.mixed.boost_index` makes it).
    16-bit sources with 4-byte aligned channel pairs take the pair kernel, others (fp32) the
    session-4 kernel; ``_variant`` (private) picks kernel options by name (:data:`KEY_VARIANTS`).
    """
    plan = _key_pack_plan(
        src,
        rows,
        src_tok,
        dst_page,
        lo=lo,
        scale=scale,
        zero=zero,
        bits=bits,
        boost_bits=boost_bits,
        hi=hi,
        idx=idx,
        dynamic=dynamic,
        n_boost=n_boost,
        block_channels=block_channels,
        num_warps=num_warps,
        _variant=_variant,
    )
    if plan is not None:
        kernel, grid, args, consts = plan
        kernel[grid](*args, **consts)


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
    _variant: str | None = None,
) -> None:
    """:func:`pack_key_pages` into a layer's storage ``st``: an object with ``cfg`` and the arrays
    ``k_lo``, ``k_scale``, ``k_zero``, ``k_hi`` (None: no boost), ``k_idx`` (Kitty, else None),
    ``boost_idx`` (a static mask's, else None) and ``n_boost`` (both cache layers and
    :class:`fcboost.kernels.state.PackedKVState` have them)."""
    pack_key_pages(
        src, rows, src_tok, dst_page, **key_storage(st), block_channels=block_channels, num_warps=num_warps,
        _variant=_variant,
    )  # fmt: skip


def key_storage(st) -> dict:
    """:func:`pack_key_pages`'s storage keywords for a layer's storage ``st`` (see :func:`pack_keys_into`)."""
    return dict(
        lo=st.k_lo,
        scale=st.k_scale,
        zero=st.k_zero,
        bits=st.cfg.key_bits,
        boost_bits=st.cfg.boost_bits,
        hi=st.k_hi,
        idx=st.k_idx if st.k_idx is not None else st.boost_idx,
        dynamic=st.k_idx is not None,
        n_boost=st.n_boost if st.k_hi is not None else 0,
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
