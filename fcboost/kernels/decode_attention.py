"""Fused decode attention over the packed cache (flash-decoding, three launches).

One new query token per row attends ``[16-bit sink | 2-bit key pages | 16-bit key buffer]`` /
``[16-bit sink | 2-bit values | 16-bit value window]`` plus the new token:

- ``_page_kernel``, grid ``(B*H, NSPLIT)``: each program takes a contiguous run of *page tiles*
  (``BN = 4R`` tokens whose keys and values are both quantized, inside one key page); Triton's
  pipeliner prefetches the byte tiles, the loop prefetches the scales itself. Key codes run along
  tokens (byte row r of a page holds tokens 4r..4r+3), so sub-tile ``j`` (tokens ``4r+j``) is one
  ``(BM, D) x (D, R)`` dot of ``q*scale`` (fp16) against its codes, plus ``q.zero``; boosted key
  channels add ``4 (q*scale)[idx] . hi``. Its probabilities ``p_j`` feed the value dots directly
  (rows ``4r+j`` of the value plane; codes run along channels, so four dots into the accumulators
  of channels ``{4c+k}``); the per-token value scale is folded into ``p``, the zero into a
  running ``sum(p*zero)``. Row sums (``l``, ``sum p*zero``) stay per column until the end; the only
  per-tile cross-warp reduction is the running max. Boosted value channels (a static mask's, with
  their own scale group) reuse the unpacked lo codes with ``p*s1`` and add ``4 (p*s1) . hi`` from
  the dense hi plane in slot order; the epilogue maps slots to channels.
- ``_rest_kernel``, grid ``(B*H, NREST)``: one ``BT``-token tile per program of what is left
  (sink, the partly quantized tail, key buffer, value window, new token), each token from
  whichever source holds it, rounded to the model dtype as the reference does; without page tiles
  (head_dim < 64 or page size not a multiple of ``BN``) programs stride over all of a row's tiles.
  On CUDA it runs on a side stream beside the page kernel.
- ``_combine_v3``, grid ``(B*H, G)``: merges the ``NSPLIT + NREST`` partials ``(acc, m, l)`` with
  log-sum-exp.

The G query heads of a KV head are the M dimension (padded to 16) of every dot; logits never leave
registers. On the GPU a 2-bit code plane becomes fp16 in three instructions per four codes (``and``
plus two ``prmt``): each masked byte becomes the mantissa of a *subnormal* half, exact, with no
offset for the tensor cores' fp32 accumulation to lose (a ``1024 + code`` variant lost 7x in
precision on the H200); the interpreter uses plain integer codes. Supported: 2-bit keys/values
with a 4-bit boost, head_dim 32-256, ``P % 16 == 0``. Measured figures:
``benchmarks/results/bench_attention_v3_h200.json``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcboost.kernels.state import PackedKVState

LOG2E = 1.4426950408889634


def _asm_raw(j: int) -> str:
    """PTX: 4 packed uint8 ($2) -> 4 fp16 *subnormals* ``(byte & (3 << 2j)) * 2^-24`` in $0 (elements
    0, 1), $1 (2, 3): the masked byte becomes a half's mantissa under a zero exponent (exact, and no
    offset for the tensor cores' accumulation to lose precision on)."""
    return (
        "{ .reg .b32 t, z;\nmov.b32 z, 0;\n"
        f"and.b32 t, $2, {hex(0x03030303 << (2 * j))};\n"
        "prmt.b32 $0, t, z, 0x4140;\nprmt.b32 $1, t, z, 0x4342; }"
    )


RAW0: tl.constexpr = tl.constexpr(_asm_raw(0))
RAW1: tl.constexpr = tl.constexpr(_asm_raw(1))
RAW2: tl.constexpr = tl.constexpr(_asm_raw(2))
RAW3: tl.constexpr = tl.constexpr(_asm_raw(3))


@triton.jit
def _raw(x, J: tl.constexpr, ASM: tl.constexpr):
    """uint8 tensor -> fp16 ``(x & (3 << 2J)) * U`` = code * 4^J * U, exact, with ``U`` = :func:`_unit`:
    2^-24 on the inline-PTX path (subnormal halves, 3 instructions per 4 codes), 1 otherwise. Callers
    scale the dot products by ``4^-J / U``."""
    if ASM:
        if J == 0:
            c = tl.inline_asm_elementwise(RAW0, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        elif J == 1:
            c = tl.inline_asm_elementwise(RAW1, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        elif J == 2:
            c = tl.inline_asm_elementwise(RAW2, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        else:
            c = tl.inline_asm_elementwise(RAW3, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
    else:
        c = (x & (3 << (2 * J))).to(tl.float16)
    return c


@triton.jit
def _unit(ASM: tl.constexpr):
    """1 / U of :func:`_raw`: the factor that turns its dot products back into code units."""
    if ASM:
        u: tl.constexpr = 16777216.0
    else:
        u: tl.constexpr = 1.0
    return u


@triton.jit
def _interleave4(x0, x1, x2, x3, M: tl.constexpr, N: tl.constexpr):
    """Four (M, N) tensors -> (M, 4N) with column 4n+j = x_j[:, n]."""
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (M, 4 * N))


@triton.jit
def _kscore(qs, kb, qh, hb, bias, J: tl.constexpr, KBOOST: tl.constexpr, ASM: tl.constexpr):
    """Scores (BM, R) of the sub-tile of tokens 4r+J (log2 units)."""
    f = _unit(ASM) / (1 << (2 * J))
    s = tl.dot(qs, tl.trans(_raw(kb, J, ASM))) * f + bias[:, None]
    if KBOOST:
        s += tl.dot(qh, tl.trans(_raw(hb, J, ASM))) * f
    return s


@triton.jit
def _pv(p, s0, z0, s1, z1, vb, bhv, a0, a1, a2, a3, b0, b1, b2, b3, accb, l_a, z0_a, z1_a,
        R: tl.constexpr, NBQ: tl.constexpr, VBOOST: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """One sub-tile's P.V: p (BM, R) probabilities of tokens 4r+j, s0/z0 (R,) their value scales
    and zeros (s1/z1 group 1), vb (R, D/4) their value bytes (bhv (R, NBQ) hi bytes). Accumulates
    raw-code dots into a0..a3 (b0..b3 and, in slot order, accb for the boosted group) and per-column
    partial sums (reduced
    over the row once, after the loop): l_a = sum p, z0_a = sum p z0 (z1_a: group 1)."""
    ps = (p * s0[None, :]).to(tl.float16)
    a0 = tl.dot(ps, _raw(vb, 0, ASM), a0)
    a1 = tl.dot(ps, _raw(vb, 1, ASM), a1)
    a2 = tl.dot(ps, _raw(vb, 2, ASM), a2)
    a3 = tl.dot(ps, _raw(vb, 3, ASM), a3)
    l_a += p
    z0_a += p * z0[None, :]
    if VBOOST:
        ps1 = (p * s1[None, :]).to(tl.float16)
        b0 = tl.dot(ps1, _raw(vb, 0, ASM), b0)
        b1 = tl.dot(ps1, _raw(vb, 1, ASM), b1)
        b2 = tl.dot(ps1, _raw(vb, 2, ASM), b2)
        b3 = tl.dot(ps1, _raw(vb, 3, ASM), b3)
        hc = _interleave4(_raw(bhv, 0, ASM), _raw(bhv, 1, ASM), _raw(bhv, 2, ASM), _raw(bhv, 3, ASM), R, NBQ)
        accb = tl.dot(ps1, hc, accb)  # (BM, 4 NBQ): slot 4c+j holds sums of hi * 4^j * U
        z1_a += p * z1[None, :]
    return a0, a1, a2, a3, b0, b1, b2, b3, accb, l_a, z0_a, z1_a


@triton.jit
def _scales(tok0, ksc, kzr, s_ksp, v_sc, v_zr, s_vst, P: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
            VBOOST: tl.constexpr):  # fmt: skip
    """The page tile at ``tok0``'s key scales/zeros (D,) and value scales/zeros (BN,) in fp32
    (group 1's too with VBOOST, else group 0's again)."""
    d = tl.arange(0, D)
    t = tok0 + tl.arange(0, BN)
    pg = tok0 // P
    sc = tl.load(ksc + pg * s_ksp + d).to(tl.float32)
    zr = tl.load(kzr + pg * s_ksp + d).to(tl.float32)
    s0 = tl.load(v_sc + t * s_vst).to(tl.float32)
    z0 = tl.load(v_zr + t * s_vst).to(tl.float32)
    if VBOOST:
        s1 = tl.load(v_sc + t * s_vst + 1).to(tl.float32)
        z1 = tl.load(v_zr + t * s_vst + 1).to(tl.float32)
    else:
        s1 = s0
        z1 = z0
    return sc, zr, s0, z0, s1, z1


@triton.jit
def _split4(x, R: tl.constexpr):
    """(4R,) -> the four (R,) vectors x[4r + j], j = 0..3."""
    a, b = tl.split(tl.reshape(x, (R, 2, 2)))  # [r, h, l] -> l = 0 / 1: (R, 2) over h
    x0, x2 = tl.split(a)
    x1, x3 = tl.split(b)
    return x0, x1, x2, x3


@triton.jit
def _page_kernel(
    Q, s_qb, s_qh,  # (B, Hq, D)
    KLO, s_klb, s_klh, s_klp, s_klr,  # (B, H, NP, P/4, D) uint8
    KHI, s_khb, s_khh, s_khp, s_khr,  # (B, H, NP, P/4, nb) uint8
    KIDX, s_kib, s_kih, s_kip,  # (B, H, NP, nb) int16 (Kitty) or (H, nb) with zero b/p strides
    KSC, KZR, s_ksb, s_ksh, s_ksp,  # (B, H, NP, D) float16
    VLO, s_vlb, s_vlh, s_vlt,  # (B, H, NV, D/4) uint8
    VHI, s_vhb, s_vhh, s_vht,  # (B, H, NV, ceil(nb/4)) uint8
    VIDX,  # (H, nb) int16
    VSC, VZR, s_vsb, s_vsh, s_vst,  # (B, H, NV, G) float16
    NPAGES, NVQ,  # (B,) int32
    O_ACC, O_M, O_L,  # (B*H, NSLOT, GQ, D) fp32, (B*H, NSLOT, GQ) fp32 x2
    qk_scale, H, NSPLIT, NSLOT,
    GQ: tl.constexpr, BM: tl.constexpr, D: tl.constexpr, P: tl.constexpr, R: tl.constexpr,
    NB: tl.constexpr, NBP: tl.constexpr, NBQ: tl.constexpr,
    KBOOST: tl.constexpr, VBOOST: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    BN: tl.constexpr = 4 * R
    D4: tl.constexpr = D // 4
    nft = tl.minimum(tl.load(NPAGES + b) * P, tl.load(NVQ + b)) // BN
    per = tl.cdiv(nft, NSPLIT)
    i0 = split * per
    i1 = tl.minimum(i0 + per, nft)
    m_ar = tl.arange(0, BM)
    d = tl.arange(0, D)
    rr = tl.arange(0, R)
    cb = tl.arange(0, D4)
    sb = tl.arange(0, NBP)
    sq = tl.arange(0, NBQ)
    q_ptr = Q + b * s_qb + (h * GQ + m_ar)[:, None] * s_qh
    qf = tl.load(q_ptr + d[None, :], mask=m_ar[:, None] < GQ, other=0.0).to(tl.float32) * qk_scale  # (BM, D)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    a0 = tl.zeros((BM, D4), tl.float32)
    a1 = tl.zeros((BM, D4), tl.float32)
    a2 = tl.zeros((BM, D4), tl.float32)
    a3 = tl.zeros((BM, D4), tl.float32)
    l_a = tl.zeros((BM, R), tl.float32)  # per-column partial sums, rescaled like the accumulators
    z0_a = tl.zeros((BM, R), tl.float32)
    b0 = a0
    b1 = a0
    b2 = a0
    b3 = a0
    z1_a = l_a
    accb = tl.zeros((BM, 4 * NBQ), tl.float32)
    k_base = KLO + b * s_klb + h * s_klh
    ks_base = b * s_ksb + h * s_ksh
    v_lo = VLO + b * s_vlb + h * s_vlh
    v_hi = VHI + b * s_vhb + h * s_vhh
    v_sc = VSC + b * s_vsb + h * s_vsh
    v_zr = VZR + b * s_vsb + h * s_vsh
    vhm = (sq < (NB + 3) // 4)[None, :]
    # the first tile's scales (clamped: an empty run loads a valid tile and never uses it); the
    # loop loads tile i+1's while computing tile i (the pipeliner only prefetches the byte tiles)
    tc = tl.maximum(tl.minimum(i0, nft - 1), 0) * BN
    sc_n, zr_n, s0_n, z0_n, s1_n, z1_n = _scales(
        tc, KSC + ks_base, KZR + ks_base, s_ksp, v_sc, v_zr, s_vst, P, D, BN, VBOOST
    )
    for i in range(i0, i1):
        tok0 = i * BN  # relative to the sink's end
        pg = tok0 // P
        r0 = (tok0 % P) // 4
        kb = tl.load(k_base + pg * s_klp + (r0 + rr)[:, None] * s_klr + d[None, :])  # (R, D) uint8
        sc, zr, s0t, z0t, s1t, z1t = sc_n, zr_n, s0_n, z0_n, s1_n, z1_n
        sc_n, zr_n, s0_n, z0_n, s1_n, z1_n = _scales(
            tl.minimum(i + 1, i1 - 1) * BN,
            KSC + ks_base,
            KZR + ks_base,
            s_ksp,
            v_sc,
            v_zr,
            s_vst,
            P,
            D,
            BN,
            VBOOST,
        )
        s0q = _split4(s0t, R)
        z0q = _split4(z0t, R)
        if VBOOST:
            s1q = _split4(s1t, R)
            z1q = _split4(z1t, R)
        else:
            s1q = s0q
            z1q = z0q
        qs = (qf * sc[None, :]).to(tl.float16)
        bias = tl.sum(qf * zr[None, :], axis=1)
        if KBOOST:
            kid = tl.load(KIDX + b * s_kib + h * s_kih + pg * s_kip + sb, mask=sb < NB, other=0).to(tl.int32)
            ksc_h = tl.load(KSC + ks_base + pg * s_ksp + kid).to(tl.float32)
            qg = tl.load(q_ptr + kid[None, :], mask=(m_ar[:, None] < GQ) & (sb[None, :] < NB), other=0.0)
            qh = (qg.to(tl.float32) * (4.0 * qk_scale) * ksc_h[None, :]).to(tl.float16)  # (BM, NBP)
            hb = tl.load(
                KHI + b * s_khb + h * s_khh + pg * s_khp + (r0 + rr)[:, None] * s_khr + sb[None, :],
                mask=sb[None, :] < NB,
                other=0,
            )  # (R, NBP) uint8
        else:
            qh = qs
            hb = kb
        s_0 = _kscore(qs, kb, qh, hb, bias, 0, KBOOST, ASM)
        s_1 = _kscore(qs, kb, qh, hb, bias, 1, KBOOST, ASM)
        s_2 = _kscore(qs, kb, qh, hb, bias, 2, KBOOST, ASM)
        s_3 = _kscore(qs, kb, qh, hb, bias, 3, KBOOST, ASM)
        m_new = tl.maximum(m_i, tl.max(tl.maximum(tl.maximum(s_0, s_1), tl.maximum(s_2, s_3)), 1))
        alpha = tl.math.exp2(m_i - m_new)
        m_i = m_new
        a0 *= alpha[:, None]
        a1 *= alpha[:, None]
        a2 *= alpha[:, None]
        a3 *= alpha[:, None]
        l_a *= alpha[:, None]
        z0_a *= alpha[:, None]
        if VBOOST:
            b0 *= alpha[:, None]
            b1 *= alpha[:, None]
            b2 *= alpha[:, None]
            b3 *= alpha[:, None]
            accb *= alpha[:, None]
            z1_a *= alpha[:, None]
        for j in tl.static_range(4):
            if j == 0:
                s_j = s_0
            elif j == 1:
                s_j = s_1
            elif j == 2:
                s_j = s_2
            else:
                s_j = s_3
            t = tok0 + 4 * rr + j  # (R,) the sub-tile's tokens
            vb = tl.load(v_lo + t[:, None] * s_vlt + cb[None, :])  # (R, D/4) uint8
            s0 = s0q[j]
            z0 = z0q[j]
            s1 = s1q[j]
            z1 = z1q[j]
            if VBOOST:
                bhv = tl.load(v_hi + t[:, None] * s_vht + sq[None, :], mask=vhm, other=0)  # (R, NBQ)
            else:
                bhv = vb
            a0, a1, a2, a3, b0, b1, b2, b3, accb, l_a, z0_a, z1_a = _pv(
                tl.math.exp2(s_j - m_new[:, None]), s0, z0, s1, z1, vb, bhv,
                a0, a1, a2, a3, b0, b1, b2, b3, accb, l_a, z0_a, z1_a, R, NBQ, VBOOST, ASM,
            )  # fmt: skip
    l_i = tl.sum(l_a, 1)
    zs0 = tl.sum(z0_a, 1)
    o_base = (bh * NSLOT + split) * GQ
    o_pp = O_ACC + (o_base + m_ar)[:, None] * D
    om = m_ar[:, None] < GQ
    if VBOOST:
        zs1 = tl.sum(z1_a, 1)
        sv = tl.arange(0, 4 * NBQ)
        vid = tl.load(VIDX + h * NB + sv, mask=sv < NB, other=-1).to(tl.int32)
        fs = 4.0 * _unit(ASM) / (1 << (2 * (sv % 4))).to(tl.float32)  # slot 4c+j: 4 * 4^-j / U
        xb = accb * fs[None, :] + zs1[:, None]  # (BM, 4 NBQ) hi part + zeros, slot order
    for k in tl.static_range(4):
        if k == 0:
            a = a0
            a1_ = b0
        elif k == 1:
            a = a1
            a1_ = b1
        elif k == 2:
            a = a2
            a1_ = b2
        else:
            a = a3
            a1_ = b3
        f = _unit(ASM) / (1 << (2 * k))
        out = a * f + zs0[:, None]
        ch = 4 * cb + k
        if VBOOST:
            hit = (vid[:, None] == ch[None, :]).to(tl.float32)  # (4 NBQ, D/4) slot -> channel
            isb = tl.sum(hit, axis=0) > 0
            hi = tl.dot(xb, hit, input_precision="ieee")  # (BM, D/4), exact: at most one 1 per column
            out = tl.where(isb[None, :], a1_ * f + hi, out)
        tl.store(o_pp + ch[None, :], out, mask=om)
    tl.store(O_M + o_base + m_ar, m_i, mask=m_ar < GQ)
    tl.store(O_L + o_base + m_ar, l_i, mask=m_ar < GQ)


@triton.jit
def _rest_kernel(
    Q, s_qb, s_qh,  # (B, Hq, D)
    SK, SV, s_sb, s_sh, s_st,  # (B, H, S, D) sink keys / values
    KB, s_kbb, s_kbh, s_kbt,  # (B, H, >=P+1, D) key buffer
    VW, s_vwb, s_vwh, s_vwt,  # (B, H, >=W+1, D) value window
    KLO, s_klb, s_klh, s_klp, s_klr,  # (B, H, NP, P/4, D) uint8
    KHI, s_khb, s_khh, s_khp, s_khr,  # (B, H, NP, P/4, nb) uint8
    KIDX, s_kib, s_kih, s_kip,  # (B, H, NP, nb) int16 (Kitty) or (H, nb) with zero b/p strides
    KSC, KZR, s_ksb, s_ksh, s_ksp,  # (B, H, NP, D) float16
    VLO, s_vlb, s_vlh, s_vlt,  # (B, H, NV, D/4) uint8
    VHI, s_vhb, s_vhh, s_vht,  # (B, H, NV, ceil(nb/4)) uint8
    VIDX,  # (H, nb) int16
    VSC, VZR, s_vsb, s_vsh, s_vst,  # (B, H, NV, G) float16
    KN, VN, s_nb, s_nh,  # (B, H, D) the new token's key / value (HAS_NEW)
    NREAL, NPAGES, NVQ,  # (B,) int32
    O_ACC, O_M, O_L,  # (B*H, NSLOT, GQ, D) fp32, (B*H, NSLOT, GQ) fp32 x2
    qk_scale, H, NSPLIT, NREST, NSLOT,
    GQ: tl.constexpr, BM: tl.constexpr, D: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
    BN: tl.constexpr, BT: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
    KBOOST: tl.constexpr, VBOOST: tl.constexpr, PAGED: tl.constexpr, HAS_NEW: tl.constexpr,
    KDYN: tl.constexpr,
):  # fmt: skip
    """Program ``(bh, j)`` takes the rest's tiles ``j, j + NREST, ...``: the sink's tiles, then
    tiles from ``a0`` (the end of the page tiles) to the new token, each inside one key page."""
    bh = tl.program_id(0)
    j = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    nreal = tl.load(NREAL + b)
    npg = tl.load(NPAGES + b)
    nvq = tl.load(NVQ + b)
    ns = tl.minimum(nreal, S)
    nft = nreal * 0
    if PAGED:
        nft = tl.minimum(npg * P, nvq) // BN
    m_ar = tl.arange(0, BM)
    d = tl.arange(0, D)
    q_ptr = Q + b * s_qb + (h * GQ + m_ar)[:, None] * s_qh
    qd = tl.load(q_ptr + d[None, :], mask=m_ar[:, None] < GQ, other=0.0).to(tl.float16)  # (BM, D)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, D), tl.float32)
    sb = tl.arange(0, NBP)
    a0 = tl.minimum(S + nft * BN, nreal)  # page-tile aligned once nreal >= S
    n_end = nreal + HAS_NEW
    n_c = tl.cdiv(ns, BT)
    n_ab = tl.cdiv(n_end - a0, BT)
    kq_end = S + npg * P
    vq_end = S + nvq
    tt = tl.arange(0, BT)
    if VBOOST:
        vid2 = tl.load(VIDX + h * NB + sb, mask=sb < NB, other=-1).to(tl.int32)
        vhit = vid2[:, None] == d[None, :]  # (NBP, D)
        v_isb = tl.sum(vhit.to(tl.int32), axis=0) > 0
        v_slot = tl.sum(tl.where(vhit, sb[:, None], 0), axis=0)  # (D,)
    if KBOOST and not KDYN:  # a static mask: the same boosted channels on every page
        kid0 = tl.load(KIDX + h * s_kih + sb, mask=sb < NB, other=-1).to(tl.int32)
        khit0 = kid0[:, None] == d[None, :]
        k_isb0 = tl.sum(khit0.to(tl.int32), axis=0) > 0
        k_slot0 = tl.sum(tl.where(khit0, sb[:, None], 0), axis=0)
    for i in range(j, n_c + n_ab, NREST):
        if i < n_c:
            t = i * BT + tt
            valid = t < ns
            rel0 = nreal * 0 - P
        else:
            t = a0 + (i - n_c) * BT + tt
            valid = t < n_end
            rel0 = nft * BN + (i - n_c) * BT
        in_sink = valid & (t < ns)
        rel = t - S
        in_kq = valid & (t >= S) & (t < kq_end)
        in_kb = valid & (t >= S) & (t >= kq_end) & (t < nreal)
        in_vq = valid & (t >= S) & (t < vq_end)
        in_vw = valid & (t >= S) & (t >= vq_end) & (t < nreal)
        sk = tl.load(
            SK + b * s_sb + h * s_sh + t[:, None] * s_st + d[None, :], mask=in_sink[:, None], other=0.0
        )
        kbf = tl.load(
            KB + b * s_kbb + h * s_kbh + (rel - npg * P)[:, None] * s_kbt + d[None, :],
            mask=in_kb[:, None],
            other=0.0,
        )
        kf = sk.to(tl.float32) + kbf.to(tl.float32)
        in_new = valid & (t == nreal)
        if HAS_NEW:
            kn = tl.load(
                KN + b * s_nb + h * s_nh + t[:, None] * 0 + d[None, :], mask=in_new[:, None], other=0.0
            )
            kf += kn.to(tl.float32)
        # quantized keys: one page per tile
        pg = rel0 // P  # the tile's key page (-1 for sink tiles)
        pg_d = d * 0 + pg  # (D,) (a tensor mask: the interpreter mishandles scalar & tensor)
        pg_ok = (pg_d >= 0) & (pg_d < npg)
        pg_s = sb * 0 + pg
        pg_oks = (pg_s >= 0) & (pg_s < npg) & (sb < NB)
        prow = rel % P
        kcode = (
            tl.load(
                KLO + b * s_klb + h * s_klh + pg * s_klp + (prow // 4)[:, None] * s_klr + d[None, :],
                mask=in_kq[:, None],
                other=0,
            ).to(tl.int32)
            >> (2 * (prow % 4))[:, None]
        ) & 3
        if KBOOST:
            if KDYN:  # Kitty: this page's channels
                kid = tl.load(KIDX + b * s_kib + h * s_kih + pg * s_kip + sb, mask=pg_oks, other=-1).to(
                    tl.int32
                )
                khit = kid[:, None] == d[None, :]
                k_isb = tl.sum(khit.to(tl.int32), axis=0) > 0
                k_slot = tl.sum(tl.where(khit, sb[:, None], 0), axis=0)
            else:
                k_isb = k_isb0
                k_slot = k_slot0
            kh = tl.load(
                KHI + b * s_khb + h * s_khh + pg * s_khp + (prow // 4)[:, None] * s_khr + k_slot[None, :],
                mask=in_kq[:, None] & k_isb[None, :],
                other=0,
            ).to(tl.int32)
            kcode += ((kh >> (2 * (prow % 4))[:, None]) & 3) << 2
        ksc = tl.load(KSC + b * s_ksb + h * s_ksh + pg * s_ksp + d, mask=pg_ok, other=0.0).to(tl.float32)
        kzr = tl.load(KZR + b * s_ksb + h * s_ksh + pg * s_ksp + d, mask=pg_ok, other=0.0).to(tl.float32)
        kf += tl.where(in_kq[:, None], kcode.to(tl.float32) * ksc[None, :] + kzr[None, :], 0.0)
        sv = tl.load(
            SV + b * s_sb + h * s_sh + t[:, None] * s_st + d[None, :], mask=in_sink[:, None], other=0.0
        )
        vwf = tl.load(
            VW + b * s_vwb + h * s_vwh + (rel - nvq)[:, None] * s_vwt + d[None, :],
            mask=in_vw[:, None],
            other=0.0,
        )
        vf = sv.to(tl.float32) + vwf.to(tl.float32)
        if HAS_NEW:
            vn = tl.load(
                VN + b * s_nb + h * s_nh + t[:, None] * 0 + d[None, :], mask=in_new[:, None], other=0.0
            )
            vf += vn.to(tl.float32)
        vrow = VLO + b * s_vlb + h * s_vlh + rel[:, None] * s_vlt
        vcode = (
            tl.load(vrow + (d // 4)[None, :], mask=in_vq[:, None], other=0).to(tl.int32)
            >> (2 * (d % 4))[None, :]
        ) & 3
        vs_ptr = VSC + b * s_vsb + h * s_vsh + rel * s_vst
        vz_ptr = VZR + b * s_vsb + h * s_vsh + rel * s_vst
        vs0 = tl.load(vs_ptr, mask=in_vq, other=0.0).to(tl.float32)[:, None]
        vz0 = tl.load(vz_ptr, mask=in_vq, other=0.0).to(tl.float32)[:, None]
        if VBOOST:
            vh = tl.load(
                VHI + b * s_vhb + h * s_vhh + rel[:, None] * s_vht + (v_slot // 4)[None, :],
                mask=in_vq[:, None] & v_isb[None, :],
                other=0,
            ).to(tl.int32)
            vcode += ((vh >> (2 * (v_slot % 4))[None, :]) & 3) << 2
            vs1 = tl.load(vs_ptr + 1, mask=in_vq, other=0.0).to(tl.float32)[:, None]
            vz1 = tl.load(vz_ptr + 1, mask=in_vq, other=0.0).to(tl.float32)[:, None]
            vs0 = tl.where(v_isb[None, :], vs1, vs0)
            vz0 = tl.where(v_isb[None, :], vz1, vz0)
        vf += tl.where(in_vq[:, None], vcode.to(tl.float32) * vs0 + vz0, 0.0)
        # round to the model dtype as the reference does, then fp16 operands (exact for bf16 values
        # within fp16's range: the interpreter has no bf16 dot and fp16 keeps p more precisely)
        kt = kf.to(Q.dtype.element_ty).to(tl.float16)
        vt_ = vf.to(Q.dtype.element_ty).to(tl.float16)
        s = tl.dot(qd, tl.trans(kt)) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vt_)
        m_i = m_new
    o_base = (bh * NSLOT + NSPLIT + j) * GQ
    tl.store(O_ACC + (o_base + m_ar)[:, None] * D + d[None, :], acc, mask=m_ar[:, None] < GQ)
    tl.store(O_M + o_base + m_ar, m_i, mask=m_ar < GQ)
    tl.store(O_L + o_base + m_ar, l_i, mask=m_ar < GQ)


@triton.jit
def _combine_v3(O_ACC, O_M, O_L, OUT, NSLOT, GQ: tl.constexpr, NSP: tl.constexpr, D: tl.constexpr):
    """out[bh, g] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s; program (bh, g), all slots at once."""
    bh = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.arange(0, NSP)
    d = tl.arange(0, D)
    base = (bh * NSLOT + s) * GQ + g  # (NSP,)
    ok = s < NSLOT
    m_s = tl.load(O_M + base, mask=ok, other=float("-inf"))
    l_s = tl.load(O_L + base, mask=ok, other=0.0)
    m = tl.max(m_s, 0)
    w = tl.where(m_s == float("-inf"), 0.0, tl.math.exp2(m_s - m))  # (NSP,)
    a = tl.load(O_ACC + base[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)  # (NSP, D)
    out = tl.sum(a * w[:, None], 0) / tl.sum(l_s * w, 0)
    tl.store(OUT + (bh * GQ + g) * D + d, out.to(OUT.dtype.element_ty))


_SIDE: dict = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for the rest kernel (created once, reused by graph replays)."""
    key = (
        torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    )
    if key not in _SIDE:
        _SIDE[key] = torch.cuda.Stream(device=device)
    return _SIDE[key]


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def split_count(B: int, H: int, max_tiles: int, n_sm: int, waves: float = 4.0) -> int:
    """Page-tile programs per (row, KV head): about ``waves`` programs per SM, >= 4 tiles each."""
    if max_tiles == 0:
        return 0
    want = max(1, round(waves * n_sm / (B * H)))
    return max(1, min(want, -(-max_tiles // 4)))


def n_rest(cfg, BN: int, BT: int, paged: bool, n_sm: int, B: int, H: int) -> int:
    """Rest programs per (row, KV head): every rest tile its own program when pages take the bulk
    (sink tiles + what can follow the last page tile: < BN tokens, the key buffer or value window
    (<= max(P, W) + 1) and the new token); without page tiles, enough programs to fill the GPU."""
    if paged:
        return -(-cfg.n_sink // BT) + -(-(BN + max(cfg.page_size, cfg.window) + 1) // BT)
    return max(1, min(64, round(4 * n_sm / (B * H))))


def decode_attention(
    q: torch.Tensor,
    st: PackedKVState,
    scaling: float,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    n_splits: int | None = None,
    tile_rows: int | None = None,
    max_tiles: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
    use_asm: bool | None = None,
    waves: float = 4.0,
    maxnreg: int | None = None,
    overlap: bool = True,
) -> torch.Tensor:
    """Attention of one new query token per row over the packed state plus (optionally) the new token.

    q: (B, Hq, D) fp16/bf16. k_new/v_new: (B, H, D) the new token's key/value, attended in 16 bits
    after the state's ``n_real`` tokens (None: the state already holds it). Returns (B, Hq, D) in
    q's dtype. ``max_tiles`` (host int) bounds the 64-token page tiles per row, for the split count
    only (default: read from ``st``, a device sync). ``tile_rows`` R: page tiles of 4R tokens (16,
    32 or 64; default 32 when the page size allows, else 16). ``use_asm``: the inline-PTX code unpacking (default: on CUDA devices). ``waves``:
    page programs per SM the split count aims at.
    ``maxnreg``: register cap of the page kernel (more programs per SM; default 128 without boosted
    values, none with them, 0 for none). ``num_stages``: default 3. The
    defaults are the fastest of the H200 sweep in ``benchmarks/results/tune_decode_attention_h200.json``. ``overlap``: on CUDA, run
    the rest kernel on a side stream beside the page kernel.
    """
    st.check()
    B, Hq, D = q.shape
    H = st.sink_k.shape[1]
    if q.dtype not in (torch.float16, torch.bfloat16) or q.dtype != st.sink_k.dtype:
        raise ValueError(f"q dtype {q.dtype} must be fp16/bf16 and match the cache's {st.sink_k.dtype}")
    if B != st.sink_k.shape[0] or D != st.sink_k.shape[3] or Hq % H:
        raise ValueError(
            f"q {tuple(q.shape)} does not match the cache (B, H, D)={(st.sink_k.shape[0], H, D)}"
        )
    if tile_rows is None:
        tile_rows = 32 if st.cfg.page_size % 128 == 0 else 16
    if tile_rows not in (16, 32, 64):
        raise ValueError(f"tile_rows={tile_rows}: expected 16, 32 or 64")
    if q.stride(-1) != 1:
        q = q.contiguous()
    GQ = Hq // H
    has_new = k_new is not None
    if has_new:
        if k_new.shape != (B, H, D) or v_new is None or v_new.shape != k_new.shape or k_new.dtype != q.dtype:
            raise ValueError(
                f"k_new/v_new must be ({B}, {H}, {D}) {q.dtype}; got k_new {tuple(k_new.shape)} "
                f"{k_new.dtype}, v_new {None if v_new is None else tuple(v_new.shape)}"
            )
        if k_new.stride() != v_new.stride() or k_new.stride(-1) != 1:
            k_new, v_new = k_new.contiguous(), v_new.contiguous()
        kn, vn, nstr = k_new, v_new, (k_new.stride(0), k_new.stride(1))
    else:
        kn, vn, nstr = q, q, (0, 0)
    c = st.cfg
    S, P = c.n_sink, c.page_size
    R = tile_rows
    BN = 4 * R
    BT = 32 if P % 32 == 0 else 16
    if P % BT:
        raise ValueError(f"page_size={P} must be a multiple of 16 for the fused kernel")
    paged = P % BN == 0 and D >= 64  # dots need R >= 16 tokens and D/4 >= 16 channels
    n_sm = _sm_count(q.device)
    if max_tiles is None:
        max_tiles = int((torch.minimum(st.n_pages * P, st.n_vq) // 64).max()) if paged else 0
    n_tiles = max_tiles * 64 // BN if paged else 0
    ns = split_count(B, H, n_tiles, n_sm, waves) if n_splits is None else n_splits
    ns = ns if paged else 0
    nr = n_rest(c, BN, BT, paged, n_sm, B, H)
    nslot = ns + nr
    nb = st.n_boost
    NBP = max(16, triton.next_power_of_2(max(nb, 1)))
    kboost = st.k_hi is not None
    vboost = st.v_hi is not None
    if maxnreg is None:
        maxnreg = 0 if vboost else 128
    if num_stages is None:
        num_stages = 3
    o_acc = torch.empty(B * H, nslot, GQ, D, dtype=torch.float32, device=q.device)
    o_m = torch.empty(B * H, nslot, GQ, dtype=torch.float32, device=q.device)
    o_l = torch.empty_like(o_m)
    if st.k_idx is not None:
        kidx, kis = st.k_idx, (st.k_idx.stride(0), st.k_idx.stride(1), st.k_idx.stride(2))
    elif st.boost_idx is not None:
        kidx, kis = st.boost_idx, (0, st.boost_idx.stride(0), 0)
    else:
        kidx, kis = st.k_lo, (0, 0, 0)
    khi = st.k_hi if kboost else st.k_lo
    khs = st.k_hi.stride()[:4] if kboost else (0, 0, 0, 0)
    vhi = st.v_hi if vboost else st.v_lo
    vhs = st.v_hi.stride()[:3] if vboost else (0, 0, 0)
    vidx = st.boost_idx.contiguous() if vboost else st.v_lo
    asm = (q.device.type == "cuda") if use_asm is None else use_asm
    BM = max(16, triton.next_power_of_2(GQ))
    packed = (
        st.k_lo, *st.k_lo.stride()[:4],
        khi, *khs,
        kidx, *kis,
        st.k_scale, st.k_zero, *st.k_scale.stride()[:3],
        st.v_lo, *st.v_lo.stride()[:3],
        vhi, *vhs,
        vidx,
        st.v_scale, st.v_zero, *st.v_scale.stride()[:3],
    )  # fmt: skip
    side = _side_stream(q.device) if (overlap and ns and q.device.type == "cuda") else None

    def launch_rest():
        _rest_kernel[(B * H, nr)](
            q, q.stride(0), q.stride(1),
            st.sink_k, st.sink_v, *st.sink_k.stride()[:3],
            st.k_buf, *st.k_buf.stride()[:3],
            st.v_win, *st.v_win.stride()[:3],
            *packed,
            kn, vn, *nstr,
            st.n_real, st.n_pages, st.n_vq,
            o_acc, o_m, o_l,
            scaling * LOG2E, H, ns, nr, nslot,
            GQ=GQ, BM=BM, D=D, S=S, P=P, BN=BN, BT=BT, NB=nb, NBP=NBP,
            KBOOST=kboost, VBOOST=vboost, PAGED=paged, HAS_NEW=has_new, KDYN=st.k_idx is not None,
            num_warps=8 if BT == 32 else 4, num_stages=1,
        )  # fmt: skip

    if side is None:
        launch_rest()
    else:  # the rest runs beside the page kernel (a graph capture records the fork and join); the
        # outputs are freed only after the join below, so no record_stream is needed
        cur = torch.cuda.current_stream(q.device)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            launch_rest()
    if ns:
        _page_kernel[(B * H, ns)](
            q, q.stride(0), q.stride(1),
            *packed,
            st.n_pages, st.n_vq,
            o_acc, o_m, o_l,
            scaling * LOG2E, H, ns, nslot,
            GQ=GQ, BM=BM, D=D, P=P, R=R, NB=nb, NBP=NBP, NBQ=max(8, triton.next_power_of_2(-(-nb // 4))),
            KBOOST=kboost, VBOOST=vboost, ASM=asm,
            num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}),
        )  # fmt: skip
    if side is not None:
        torch.cuda.current_stream(q.device).wait_stream(side)
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    _combine_v3[(B * H, GQ)](
        o_acc, o_m, o_l, out, nslot, GQ=GQ, NSP=max(2, triton.next_power_of_2(nslot)), D=D
    )
    return out


_SM: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    if device not in _SM:
        _SM[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM[device]


def decode_attention_reference(
    q: torch.Tensor,
    st: PackedKVState,
    scaling: float,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: dequantize each row's real tokens from the packed state (fp32 -> model dtype, as the
    reference read path), append the new token (B, H, D), softmax attention in fp32.
    q (B, Hq, D) -> (B, Hq, D) fp32."""
    B, Hq, D = q.shape
    out = torch.empty(B, Hq, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        k, v = st.dequantized(b)  # (H, n, D) model dtype
        if k_new is not None:
            k, v = torch.cat([k, k_new[b, :, None]], 1), torch.cat([v, v_new[b, :, None]], 1)
        g = Hq // k.shape[0]
        k = k.float().repeat_interleave(g, 0)  # (Hq, n, D)
        v = v.float().repeat_interleave(g, 0)
        s = torch.einsum("hd,hnd->hn", q[b].float(), k) * scaling
        out[b] = torch.einsum("hn,hnd->hd", s.softmax(-1), v)
    return out
