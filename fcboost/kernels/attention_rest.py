"""Triton kernels of the fused decode attention: the 16-bit and ragged rest, and the combine
(see :mod:`fcboost.kernels.decode_attention`)."""

from __future__ import annotations

import triton
import triton.language as tl

from fcboost.kernels.vlayout import vil_offset


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
    VLO, s_vlb, s_vlh, s_vls, s_vlj,  # (B, H, NV/64, 4, D/4, 16) uint8, interleaved (fcboost.quant.layout)
    VHI, s_vhb, s_vhh, s_vhs, s_vhj,  # (B, H, NV/64, 4, ceil(nb/4), 16) uint8, interleaved
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
            t0 = i * BT
            t = t0 + tt
            valid = t < ns
            rel0 = nreal * 0 - P
        else:
            t0 = a0 + (i - n_c) * BT
            t = t0 + tt
            valid = t < n_end
            rel0 = nft * BN + (i - n_c) * BT
        t1 = t0 + BT
        in_sink = valid & (t < ns)
        rel = t - S
        in_kq = valid & (t >= S) & (t < kq_end)
        in_kb = valid & (t >= S) & (t >= kq_end) & (t < nreal)
        in_vq = valid & (t >= S) & (t < vq_end)
        in_vw = valid & (t >= S) & (t >= vq_end) & (t < nreal)
        in_new = valid & (t == nreal)
        # each source is read only by the tiles whose token range meets it (warp-uniform branches:
        # a tile holds one or two of the sink / quantized / 16-bit tail sources, not all of them)
        kf = tl.zeros((BT, D), tl.float32)
        vf = tl.zeros((BT, D), tl.float32)
        if t0 < ns:
            sk = tl.load(
                SK + b * s_sb + h * s_sh + t[:, None] * s_st + d[None, :], mask=in_sink[:, None], other=0.0
            )
            sv = tl.load(
                SV + b * s_sb + h * s_sh + t[:, None] * s_st + d[None, :], mask=in_sink[:, None], other=0.0
            )
            kf += sk.to(tl.float32)
            vf += sv.to(tl.float32)
        if (t1 > S) & (t1 > kq_end) & (t0 < nreal):
            kbf = tl.load(
                KB + b * s_kbb + h * s_kbh + (rel - npg * P)[:, None] * s_kbt + d[None, :],
                mask=in_kb[:, None],
                other=0.0,
            )
            kf += kbf.to(tl.float32)
        if (t1 > S) & (t1 > vq_end) & (t0 < nreal):
            vwf = tl.load(
                VW + b * s_vwb + h * s_vwh + (rel - nvq)[:, None] * s_vwt + d[None, :],
                mask=in_vw[:, None],
                other=0.0,
            )
            vf += vwf.to(tl.float32)
        if HAS_NEW:
            if (t0 <= nreal) & (nreal < t1):
                kn = tl.load(
                    KN + b * s_nb + h * s_nh + t[:, None] * 0 + d[None, :], mask=in_new[:, None], other=0.0
                )
                vn = tl.load(
                    VN + b * s_nb + h * s_nh + t[:, None] * 0 + d[None, :], mask=in_new[:, None], other=0.0
                )
                kf += kn.to(tl.float32)
                vf += vn.to(tl.float32)
        if (t1 > S) & (t0 < kq_end):  # quantized keys: one page per tile
            pg = rel0 // P  # the tile's key page
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
        if (t1 > S) & (t0 < vq_end):  # quantized values
            vrow = VLO + b * s_vlb + h * s_vlh
            vcode = (
                tl.load(
                    vrow + vil_offset(rel[:, None], (d // 4)[None, :], s_vls, s_vlj),
                    mask=in_vq[:, None],
                    other=0,
                ).to(tl.int32)
                >> (2 * (d % 4))[None, :]
            ) & 3
            vs_ptr = VSC + b * s_vsb + h * s_vsh + rel * s_vst
            vz_ptr = VZR + b * s_vsb + h * s_vsh + rel * s_vst
            vs0 = tl.load(vs_ptr, mask=in_vq, other=0.0).to(tl.float32)[:, None]
            vz0 = tl.load(vz_ptr, mask=in_vq, other=0.0).to(tl.float32)[:, None]
            if VBOOST:
                vh = tl.load(
                    VHI
                    + b * s_vhb
                    + h * s_vhh
                    + vil_offset(rel[:, None], (v_slot // 4)[None, :], s_vhs, s_vhj),
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
def _combine_kernel(O_ACC, O_M, O_L, OUT, NSLOT, GQ: tl.constexpr, NSP: tl.constexpr, D: tl.constexpr):
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
