"""Fused decode attention over the packed cache, v2: fewer instructions per 2-bit code.

Same contract as :func:`fcboost.kernels.decode_attention.decode_attention` (one query token per
row over ``[16-bit sink | 2-bit pages | 16-bit buffers]`` plus the new token). Grid
``(B*H, 1 + NSPLIT)``: program 0 of each (row, KV head) takes the 16-bit parts and the ragged
ends (sink, partly quantized tail, key buffer, value window, new token) in ``[BT, D]`` tiles, and
is launched first so it is no straggler; programs ``1..NSPLIT`` take contiguous runs of page
tiles (``BN = 4R`` tokens, keys and values both quantized, inside one key page). A combine
kernel merges the ``(acc, m, l)`` partials with log-sum-exp.

Per page tile, what changed against v1:

- keys: the lo plane tile ``(R, D)`` bytes is read once; sub-tile ``j`` (tokens ``4r+j``) is one
  ``(BM, D) x (D, R)`` dot of ``q*scale`` (fp16, scale folded per page) against its codes, plus
  ``q.zero``; boosted channels add ``4 (q*scale)[idx] . hi_j``.
- the four sub-tiles' probabilities are interleaved back to token order (``join``/``reshape``) so
  P.V is four ``(BM, BN) x (BN, D/4)`` dots with ``K = BN`` (v1: sixteen with ``K = R``);
  boosted value channels take one ``(BM, BN) x (BN, nb)`` dot in slot space.
- on the GPU a code plane becomes fp16 with an inline-asm bit trick (``and`` + ``prmt`` into
  ``0x64xx`` = ``1024 + c*4^j``, then one ``fma.f16x2``): 5 instructions per 4 codes instead of
  a shift, a mask and an int->float conversion (quarter rate) per code. The interpreter, which has
  no inline asm, uses the plain expression (``ASM=False``); both give the exact code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fcboost.kernels.decode_attention import _combine_kernel, _sm_count
from fcboost.kernels.decode_attention import decode_attention_reference as decode_attention_reference
from fcboost.kernels.state import PackedKVState

LOG2E = 1.4426950408889634


def _asm(j: int) -> str:
    """PTX: 4 packed uint8 ($2) -> 4 fp16 ((byte >> 2j) & 3) in $0 (elements 0, 1), $1 (2, 3)."""
    mask = 0x03030303 << (2 * j)
    sc = {0: 0x3C00, 1: 0x3400, 2: 0x2C00, 3: 0x2400}[j]  # 4^-j
    zr = {0: 0xE400, 1: 0xDC00, 2: 0xD400, 3: 0xCC00}[j]  # -1024 * 4^-j
    return (
        "{ .reg .b32 t, s, z, m;\n"
        f"mov.b32 m, 0x64646464;\nmov.b32 s, {hex(sc << 16 | sc)};\nmov.b32 z, {hex(zr << 16 | zr)};\n"
        f"and.b32 t, $2, {hex(mask)};\n"
        "prmt.b32 $0, t, m, 0x4140;\nprmt.b32 $1, t, m, 0x4342;\n"
        "fma.rn.f16x2 $0, $0, s, z;\nfma.rn.f16x2 $1, $1, s, z; }"
    )


ASM0: tl.constexpr = tl.constexpr(_asm(0))
ASM1: tl.constexpr = tl.constexpr(_asm(1))
ASM2: tl.constexpr = tl.constexpr(_asm(2))
ASM3: tl.constexpr = tl.constexpr(_asm(3))


@triton.jit
def _codes(x, J: tl.constexpr, ASM: tl.constexpr):
    """uint8 tensor -> fp16 2-bit field J: ``(x >> 2J) & 3`` (exact)."""
    if ASM:
        if J == 0:
            c = tl.inline_asm_elementwise(ASM0, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        elif J == 1:
            c = tl.inline_asm_elementwise(ASM1, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        elif J == 2:
            c = tl.inline_asm_elementwise(ASM2, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
        else:
            c = tl.inline_asm_elementwise(ASM3, "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
    else:
        c = ((x >> (2 * J)) & 3).to(tl.float16)
    return c


@triton.jit
def _kscore(qs, kb, qh, hb, bias, J: tl.constexpr, KBOOST: tl.constexpr, ASM: tl.constexpr):
    """Scores (BM, R) of the sub-tile of tokens 4r+J (log2 units)."""
    s = tl.dot(qs, tl.trans(_codes(kb, J, ASM))) + bias[:, None]
    if KBOOST:
        s += tl.dot(qh, tl.trans(_codes(hb, J, ASM)))
    return s


@triton.jit
def _decode_kernel_v2(
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
    O_ACC, O_M, O_L,  # (B*H, NSPLIT+1, GQ, D) fp32, (B*H, NSPLIT+1, GQ) fp32 x2
    qk_scale, H, NSPLIT,
    GQ: tl.constexpr, BM: tl.constexpr, D: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
    R: tl.constexpr, BT: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
    KBOOST: tl.constexpr, VBOOST: tl.constexpr, PAGED: tl.constexpr, HAS_NEW: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    split = tl.program_id(1)  # 0: the 16-bit parts and ragged ends; 1..NSPLIT: page tiles
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    nreal = tl.load(NREAL + b)
    npg = tl.load(NPAGES + b)
    nvq = tl.load(NVQ + b)
    ns = tl.minimum(nreal, S)
    BN: tl.constexpr = 4 * R
    nft = nreal * 0  # page tiles: full BN-token tiles whose keys and values are both quantized
    if PAGED:
        nft = tl.minimum(npg * P, nvq) // BN
    m_ar = tl.arange(0, BM)
    d = tl.arange(0, D)
    q_ptr = Q + b * s_qb + (h * GQ + m_ar)[:, None] * s_qh
    qf = tl.load(q_ptr + d[None, :], mask=m_ar[:, None] < GQ, other=0.0).to(tl.float32) * qk_scale  # (BM, D)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    o_base = (bh * (NSPLIT + 1) + split) * GQ
    sb = tl.arange(0, NBP)
    if split > 0:
        D4: tl.constexpr = D // 4
        acc0 = tl.zeros((BM, D4), tl.float32)
        acc1 = tl.zeros((BM, D4), tl.float32)
        acc2 = tl.zeros((BM, D4), tl.float32)
        acc3 = tl.zeros((BM, D4), tl.float32)
        accb = tl.zeros((BM, NBP), tl.float32)
        zs0 = tl.zeros((BM,), tl.float32)
        zs1 = tl.zeros((BM,), tl.float32)
        per = tl.cdiv(nft, NSPLIT)
        i0 = (split - 1) * per
        i1 = tl.minimum(i0 + per, nft)
        rr = tl.arange(0, R)
        tn = tl.arange(0, BN)
        cb = tl.arange(0, D4)
        vid = sb
        if VBOOST:
            vid = tl.load(VIDX + h * NB + sb, mask=sb < NB, other=0).to(tl.int32)
        k_base = KLO + b * s_klb + h * s_klh
        ks_base = b * s_ksb + h * s_ksh
        v_lo = VLO + b * s_vlb + h * s_vlh
        v_hi = VHI + b * s_vhb + h * s_vhh
        v_sc = VSC + b * s_vsb + h * s_vsh
        v_zr = VZR + b * s_vsb + h * s_vsh
        for i in range(i0, i1):
            tok0 = i * BN  # relative to S
            pg = tok0 // P
            r0 = (tok0 % P) // 4
            kb = tl.load(k_base + pg * s_klp + (r0 + rr)[:, None] * s_klr + d[None, :])  # (R, D) uint8
            vt = tok0 + tn  # (BN,) value tokens in order
            vb = tl.load(v_lo + vt[:, None] * s_vlt + cb[None, :])  # (BN, D/4) uint8
            s0 = tl.load(v_sc + vt * s_vst).to(tl.float32)
            z0 = tl.load(v_zr + vt * s_vst).to(tl.float32)
            sc = tl.load(KSC + ks_base + pg * s_ksp + d).to(tl.float32)
            zr = tl.load(KZR + ks_base + pg * s_ksp + d).to(tl.float32)
            qs = (qf * sc[None, :]).to(tl.float16)
            bias = tl.sum(qf * zr[None, :], axis=1)
            if KBOOST:
                kid = tl.load(KIDX + b * s_kib + h * s_kih + pg * s_kip + sb, mask=sb < NB, other=0).to(
                    tl.int32
                )
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
            mx = tl.maximum(
                tl.maximum(tl.max(s_0, 1), tl.max(s_1, 1)), tl.maximum(tl.max(s_2, 1), tl.max(s_3, 1))
            )
            m_new = tl.maximum(m_i, mx)
            alpha = tl.math.exp2(m_i - m_new)
            # (BM, R, 2, 2) -> (BM, BN): element [r, a, c] is p_{2a+c}, token 4r + 2a + c
            pj = tl.join(
                tl.join(tl.math.exp2(s_0 - m_new[:, None]), tl.math.exp2(s_2 - m_new[:, None])),
                tl.join(tl.math.exp2(s_1 - m_new[:, None]), tl.math.exp2(s_3 - m_new[:, None])),
            )
            p = tl.reshape(pj, (BM, BN))
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
            ps = (p * s0[None, :]).to(tl.float16)
            acc0 = acc0 * alpha[:, None] + tl.dot(ps, _codes(vb, 0, ASM))
            acc1 = acc1 * alpha[:, None] + tl.dot(ps, _codes(vb, 1, ASM))
            acc2 = acc2 * alpha[:, None] + tl.dot(ps, _codes(vb, 2, ASM))
            acc3 = acc3 * alpha[:, None] + tl.dot(ps, _codes(vb, 3, ASM))
            zs0 = zs0 * alpha + tl.sum(p * z0[None, :], axis=1)
            if VBOOST:
                s1 = tl.load(v_sc + vt * s_vst + 1).to(tl.float32)
                z1 = tl.load(v_zr + vt * s_vst + 1).to(tl.float32)
                blo = tl.load(v_lo + vt[:, None] * s_vlt + (vid // 4)[None, :]).to(tl.int32)
                bhi = tl.load(
                    v_hi + vt[:, None] * s_vht + (sb // 4)[None, :], mask=(sb < NB)[None, :], other=0
                )
                bc = ((blo >> (2 * (vid % 4))[None, :]) & 3) + 4 * (
                    (bhi.to(tl.int32) >> (2 * (sb % 4))[None, :]) & 3
                )
                accb = accb * alpha[:, None] + tl.dot((p * s1[None, :]).to(tl.float16), bc.to(tl.float16))
                zs1 = zs1 * alpha + tl.sum(p * z1[None, :], axis=1)
        o_pp = O_ACC + (o_base + m_ar)[:, None] * D
        om = m_ar[:, None] < GQ
        if VBOOST:
            xb = accb + zs1[:, None]  # (BM, NBP) boosted channels' final sums, slot order
            for k in tl.static_range(4):
                if k == 0:
                    a = acc0
                elif k == 1:
                    a = acc1
                elif k == 2:
                    a = acc2
                else:
                    a = acc3
                ch = 4 * cb + k
                hit = (vid[:, None] == ch[None, :]) & (sb[:, None] < NB)  # (NBP, D/4)
                isb = tl.sum(hit.to(tl.int32), axis=0) > 0
                boosted = tl.sum(tl.where(hit[None, :, :], xb[:, :, None], 0.0), axis=1)  # (BM, D/4)
                out = tl.where(isb[None, :], boosted, a + zs0[:, None])
                tl.store(o_pp + ch[None, :], out, mask=om)
        else:
            tl.store(o_pp + 4 * cb[None, :], acc0 + zs0[:, None], mask=om)
            tl.store(o_pp + 4 * cb[None, :] + 1, acc1 + zs0[:, None], mask=om)
            tl.store(o_pp + 4 * cb[None, :] + 2, acc2 + zs0[:, None], mask=om)
            tl.store(o_pp + 4 * cb[None, :] + 3, acc3 + zs0[:, None], mask=om)
    else:
        # rest: sink [0, ns) then [A0, nreal), tiles of BT tokens, each inside one key page
        acc = tl.zeros((BM, D), tl.float32)
        qd = tl.load(q_ptr + d[None, :], mask=m_ar[:, None] < GQ, other=0.0).to(tl.float16)  # (BM, D)
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
        for i in range(0, n_c + n_ab):
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
                kid = tl.load(KIDX + b * s_kib + h * s_kih + pg * s_kip + sb, mask=pg_oks, other=-1)
                kid = kid.to(tl.int32)
                khit = kid[:, None] == d[None, :]
                k_isb = tl.sum(khit.to(tl.int32), axis=0) > 0
                k_slot = tl.sum(tl.where(khit, sb[:, None], 0), axis=0)
                kh = tl.load(
                    KHI + b * s_khb + h * s_khh + pg * s_khp + (prow // 4)[:, None] * s_khr + k_slot[None, :],
                    mask=in_kq[:, None] & k_isb[None, :],
                    other=0,
                ).to(tl.int32)
                kcode += ((kh >> (2 * (prow % 4))[:, None]) & 3) << 2
            ksc = tl.load(KSC + b * s_ksb + h * s_ksh + pg * s_ksp + d, mask=pg_ok, other=0.0)
            kzr = tl.load(KZR + b * s_ksb + h * s_ksh + pg * s_ksp + d, mask=pg_ok, other=0.0)
            ksc = ksc.to(tl.float32)
            kzr = kzr.to(tl.float32)
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
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vt_)
            m_i = m_new
        o_ptr = O_ACC + (o_base + m_ar)[:, None] * D + d[None, :]
        tl.store(o_ptr, acc, mask=m_ar[:, None] < GQ)
    tl.store(O_M + o_base + m_ar, m_i, mask=m_ar < GQ)
    tl.store(O_L + o_base + m_ar, l_i, mask=m_ar < GQ)


def n_splits_v2(B: int, H: int, max_tiles: int, n_sm: int, waves: float = 4.0) -> int:
    """Page-tile programs per (row, KV head): about ``waves`` programs per SM, >= 4 tiles each."""
    if max_tiles == 0:
        return 1
    want = max(1, round(waves * n_sm / (B * H)))
    return max(1, min(want, -(-max_tiles // 4)))


def decode_attention(
    q: torch.Tensor,
    st: PackedKVState,
    scaling: float,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    n_splits: int | None = None,
    tile_rows: int = 16,
    max_tiles: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    use_asm: bool | None = None,
) -> torch.Tensor:
    """Attention of one new query token per row over the packed state plus (optionally) the new token.

    q: (B, Hq, D) fp16/bf16. k_new/v_new: (B, H, D) the new token's key/value, attended in 16 bits
    after the state's ``n_real`` tokens (None: the state already holds it). Returns (B, Hq, D) in
    q's dtype. ``max_tiles`` (host int) bounds the 64-token page tiles per row, for the split count
    only (default: read from ``st``). ``tile_rows`` R: page tiles of 4R tokens (16 or 32).
    ``use_asm``: the inline-PTX code unpacking (default: on CUDA devices).
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
    if tile_rows not in (16, 32):
        raise ValueError(f"tile_rows={tile_rows}: expected 16 or 32")
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
    paged = P % BN == 0 and D >= 64  # dots need R >= 16 tokens and D/4 >= 16 channels
    BT = 32 if P % 32 == 0 else 16
    if P % BT:
        raise ValueError(f"page_size={P} must be a multiple of 16 for the fused kernel")
    if max_tiles is None:
        max_tiles = int((torch.minimum(st.n_pages * P, st.n_vq) // 64).max()) if paged else 0
    ns = n_splits_v2(B, H, max_tiles * 64 // BN, _sm_count(q.device)) if n_splits is None else n_splits
    ns = ns if paged else 0
    nb = st.n_boost
    NBP = max(16, triton.next_power_of_2(max(nb, 1)))
    kboost = st.k_hi is not None
    vboost = st.v_hi is not None
    o_acc = torch.empty(B * H, ns + 1, GQ, D, dtype=torch.float32, device=q.device)
    o_m = torch.empty(B * H, ns + 1, GQ, dtype=torch.float32, device=q.device)
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
    _decode_kernel_v2[(B * H, ns + 1)](
        q, q.stride(0), q.stride(1),
        st.sink_k, st.sink_v, *st.sink_k.stride()[:3],
        st.k_buf, *st.k_buf.stride()[:3],
        st.v_win, *st.v_win.stride()[:3],
        st.k_lo, *st.k_lo.stride()[:4],
        khi, *khs,
        kidx, *kis,
        st.k_scale, st.k_zero, *st.k_scale.stride()[:3],
        st.v_lo, *st.v_lo.stride()[:3],
        vhi, *vhs,
        vidx,
        st.v_scale, st.v_zero, *st.v_scale.stride()[:3],
        kn, vn, *nstr,
        st.n_real, st.n_pages, st.n_vq,
        o_acc, o_m, o_l,
        scaling * LOG2E, H, ns,
        GQ=GQ, BM=max(16, triton.next_power_of_2(GQ)), D=D, S=S, P=P, R=R, BT=BT, NB=nb, NBP=NBP,
        KBOOST=kboost, VBOOST=vboost, PAGED=paged, HAS_NEW=has_new, ASM=asm,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    _combine_kernel[(B * H,)](o_acc, o_m, o_l, out, ns + 1, GQ=GQ, GP=max(2, triton.next_power_of_2(GQ)), D=D)
    return out
