"""Triton kernel of the fused decode attention: page tiles (see :mod:`fcboost.kernels.decode_attention`).

Program ``(b*H + h, split)`` runs over a contiguous range of page tiles of row ``b``, KV head ``h``
(``BN = 4R`` tokens whose keys and values are both quantized) and writes its partial
``(acc, m, l)`` to slot ``split`` of the outputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fcboost.kernels.vlayout import vil_offset


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
    VLO, s_vlb, s_vlh, s_vls, s_vlj,  # (B, H, NV/64, 4, D/4, 16) uint8, interleaved (fcboost.quant.layout)
    VHI, s_vhb, s_vhh, s_vhs, s_vhj,  # (B, H, NV/64, 4, ceil(nb/4), 16) uint8, interleaved
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
            vb = tl.load(v_lo + vil_offset(t[:, None], cb[None, :], s_vls, s_vlj))  # (R, D/4) uint8
            s0 = s0q[j]
            z0 = z0q[j]
            s1 = s1q[j]
            z1 = z1q[j]
            if VBOOST:
                bhv = tl.load(
                    v_hi + vil_offset(t[:, None], sq[None, :], s_vhs, s_vhj), mask=vhm, other=0
                )  # (R, NBQ)
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
