"""Triton kernels of the fused decode attention: the 16-bit and ragged rest, and the combine
(see :mod:`fcboost.kernels.decode_attention`)."""

from __future__ import annotations

import triton
import triton.language as tl

from fcboost.kernels.vlayout import vil_offset


@triton.jit(do_not_specialize=["NSPLIT", "NREST", "NSLOT"])  # counts that vary with the batch
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
def _online_softmax(s, valid, m_i, l_i):
    """One tile of the running softmax (base 2): masked logits ``s`` (BM, BT) -> (p, alpha, m, l)."""
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit(do_not_specialize=["NSPLIT", "NREST", "NSLOT"])  # counts that vary with the batch
def _rest_split_kernel(
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
    BN: tl.constexpr, BTF: tl.constexpr, BTQ: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
    NBV: tl.constexpr, KBOOST: tl.constexpr, VBOOST: tl.constexpr, PAGED: tl.constexpr, HAS_NEW: tl.constexpr,
    KDYN: tl.constexpr, STAGES: tl.constexpr, ALIGNED: tl.constexpr, PART: tl.constexpr = 0,
    MIXED: tl.constexpr = False,
):  # fmt: skip
    """The rest in two lean loops (same arguments and partials as :func:`_rest_kernel`).

    A (row, head)'s rest tokens are an unordered set (softmax sums over them), split by class:
    *16-bit* tokens (the sink, the key buffer / value window past both quantized ranges, the new
    token), ``BTF`` per tile, each row's key / value pointer picked per token (one load each, no
    dequantization); and the *quantized tail* ``[a0, qe)`` (the tokens past the last page tile
    with a quantized key or value), ``BTQ``-token tiles inside one key page, each token's key and
    value dequantized or read from the 16-bit buffers under a mask (every load issued up front, no
    branches). Boosted keys add ``(4 q * scale)[idx] . hi`` (a K = NBP dot) to the logits; boosted
    values (a static mask's own scale group) add ``p . (v_boosted - v_dense)`` into a slot
    accumulator that one dot maps onto the channels at the end. Program ``j`` takes tiles
    ``j, j + NREST, ...`` of the list ``[16-bit tiles, tail tiles]`` (``PART`` 1: of the 16-bit tiles
    only; 2: of the tail tiles only; its partial goes to slot ``NSPLIT + j``). ``MIXED``: the page
    kernel took every page of quantized keys (the Gluon kernel's ``MIXED``), so the tail starts at
    the end of the key pages."""
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
    kq_end = S + npg * P
    vq_end = S + nvq
    if MIXED:
        qs = tl.minimum(kq_end, nreal)
    else:
        qs = tl.minimum(S + nft * BN, nreal)  # a0: the end of the page tiles (>= S once nreal > S)
    qe = tl.maximum(tl.minimum(tl.maximum(kq_end, vq_end), nreal), qs)
    n16 = ns + nreal + HAS_NEW - qe  # 16-bit tokens: the sink, [qe, nreal) and the new token
    n16t = tl.cdiv(n16, BTF)
    nqt = tl.cdiv(qe - qs, BTQ)
    m_ar = tl.arange(0, BM)
    d = tl.arange(0, D)
    q_ptr = Q + b * s_qb + (h * GQ + m_ar)[:, None] * s_qh
    qd = tl.load(q_ptr + d[None, :], mask=m_ar[:, None] < GQ, other=0.0).to(tl.float16)  # (BM, D)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, D), tl.float32)
    sk_ptr = SK + b * s_sb + h * s_sh
    sv_ptr = SV + b * s_sb + h * s_sh
    kb_ptr = KB + b * s_kbb + h * s_kbh
    vw_ptr = VW + b * s_vwb + h * s_vwh
    kn_ptr = KN + b * s_nb + h * s_nh
    vn_ptr = VN + b * s_nb + h * s_nh
    # 16-bit tokens: token u of the class is sink token u (u < ns), else token qe + u - ns
    tf = tl.arange(0, BTF)
    for i in tl.range(j, 0 if PART == 2 else n16t, NREST, num_stages=STAGES):
        u = i * BTF + tf
        ok = u < n16
        t = tl.where(u < ns, u, u - ns + qe)
        kp = tl.where(u < ns, sk_ptr + t * s_st, tl.where(t < nreal, kb_ptr + (t - kq_end) * s_kbt, kn_ptr))
        vp = tl.where(u < ns, sv_ptr + t * s_st, tl.where(t < nreal, vw_ptr + (t - vq_end) * s_vwt, vn_ptr))
        if ALIGNED:  # 16-bit rows start 16-byte aligned (the launcher checked): vector loads
            kp = tl.multiple_of(kp, 16)
            vp = tl.multiple_of(vp, 16)
        kt = tl.load(kp[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(tl.float16)
        vt_ = tl.load(vp[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(tl.float16)
        s = tl.dot(qd, tl.trans(kt)) * qk_scale
        p, alpha, m_i, l_i = _online_softmax(s, ok, m_i, l_i)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vt_)
    if PART != 1:
        # the quantized tail: BTQ-token tiles from qs, each inside one key page (BTQ | P, qs - S = k BN)
        # tile row r holds token t0 + 4 (r % (BTQ/4)) + r // (BTQ/4) (any order serves the softmax): the
        # value bytes of rows r..r+BTQ/4-1 are then consecutive in the interleaved layout (vector loads)
        tq = tl.arange(0, BTQ)
        tq = 4 * (tq % (BTQ // 4)) + tq // (BTQ // 4)
        sb = tl.arange(0, NBP)
        sb_ok = sb < NB
        klo_ptr = KLO + b * s_klb + h * s_klh
        khi_ptr = KHI + b * s_khb + h * s_khh
        kidx_ptr = KIDX + b * s_kib + h * s_kih
        ksc_ptr = KSC + b * s_ksb + h * s_ksh
        kzr_ptr = KZR + b * s_ksb + h * s_ksh
        vlo_ptr = VLO + b * s_vlb + h * s_vlh
        vhi_ptr = VHI + b * s_vhb + h * s_vhh
        vsc_ptr = VSC + b * s_vsb + h * s_vsh
        vzr_ptr = VZR + b * s_vsb + h * s_vsh
        q_ok = (m_ar < GQ)[:, None] & sb_ok[None, :]
        if KBOOST and not KDYN:  # a static mask: the same channels on every page
            kid0 = tl.load(kidx_ptr + sb, mask=sb_ok, other=0).to(tl.int32)
            q4b0 = tl.load(q_ptr + kid0[None, :], mask=q_ok, other=0.0).to(tl.float32) * 4.0  # (BM, NBP)
        if VBOOST:  # slots padded to 32 (an N = 16 dot would make Triton replicate the loop's MMAs 4x)
            sv = tl.arange(0, NBV)
            sv_ok = sv < NB
            vid = tl.load(VIDX + h * NB + sv, mask=sv_ok, other=0).to(tl.int32)
            acc_b = tl.zeros((BM, NBV), tl.float32)  # p . (v - v_dense) per boosted slot
        jq = j if PART == 2 else (j + NREST - n16t % NREST) % NREST
        for i in tl.range(jq, nqt, NREST, num_stages=STAGES):
            t0 = qs + i * BTQ
            t = t0 + tq
            rel = t - S
            ok = t < qe
            in_kq = ok & (t < kq_end)
            in_vq = ok & (t < vq_end)
            k16 = ok & (t >= kq_end)
            v16 = ok & (t >= vq_end)
            pg = (t0 - S) // P  # the tile's key page
            prow = rel - pg * P
            sh = (2 * (prow % 4))[:, None]
            pg_ok = (d * 0 + pg) < npg  # (a tensor mask: the interpreter mishandles scalar & tensor)
            kb8 = tl.load(
                klo_ptr + pg * s_klp + (prow // 4)[:, None] * s_klr + d[None, :], mask=in_kq[:, None], other=0
            )
            ksc = tl.load(ksc_ptr + pg * s_ksp + d, mask=pg_ok, other=0.0).to(tl.float32)
            kzr = tl.load(kzr_ptr + pg * s_ksp + d, mask=pg_ok, other=0.0).to(tl.float32)
            kx = tl.load(kb_ptr + (t - kq_end)[:, None] * s_kbt + d[None, :], mask=k16[:, None], other=0.0)
            # value bytes under a tile-wide mask (constant along tokens: vector loads; rows past the
            # quantized values read their step's unused bytes and get zero scales)
            tile_vq = (tl.zeros((BTQ, 1), tl.int32) + t0) < vq_end
            vo = vil_offset(rel[:, None], (d // 4)[None, :], s_vls, s_vlj)
            if ALIGNED:  # (and the step strides are multiples of 16: runs of BTQ/4 bytes from a multiple)
                vo = tl.max_contiguous(tl.multiple_of(vo, [BTQ // 4, 1]), [BTQ // 4, 1])
            vb8 = tl.load(vlo_ptr + vo, mask=tile_vq, other=0)
            vs0 = tl.load(vsc_ptr + rel * s_vst, mask=in_vq, other=0.0).to(tl.float32)
            vz0 = tl.load(vzr_ptr + rel * s_vst, mask=in_vq, other=0.0).to(tl.float32)
            vx = tl.load(vw_ptr + (t - vq_end)[:, None] * s_vwt + d[None, :], mask=v16[:, None], other=0.0)
            if KBOOST:
                sb_pg = sb_ok & ((sb * 0 + pg) < npg)
                if KDYN:  # Kitty: this page's channels
                    kid = tl.load(kidx_ptr + pg * s_kip + sb, mask=sb_pg, other=0).to(tl.int32)
                    q4b = tl.load(q_ptr + kid[None, :], mask=q_ok, other=0.0).to(tl.float32) * 4.0
                else:
                    kid = kid0
                    q4b = q4b0
                kscb = tl.load(ksc_ptr + pg * s_ksp + kid, mask=sb_pg, other=0.0).to(tl.float32)
                kh8 = tl.load(
                    khi_ptr + pg * s_khp + (prow // 4)[:, None] * s_khr + sb[None, :],
                    mask=in_kq[:, None] & sb_ok[None, :],
                    other=0,
                )
            if VBOOST:
                vok = tile_vq & sv_ok[None, :]
                lo_o = vil_offset(rel[:, None], (vid // 4)[None, :], s_vls, s_vlj)
                hi_o = vil_offset(rel[:, None], (sv // 4)[None, :], s_vhs, s_vhj)
                if ALIGNED:
                    lo_o = tl.max_contiguous(tl.multiple_of(lo_o, [BTQ // 4, 1]), [BTQ // 4, 1])
                    hi_o = tl.max_contiguous(tl.multiple_of(hi_o, [BTQ // 4, 1]), [BTQ // 4, 1])
                lb8 = tl.load(vlo_ptr + lo_o, mask=vok, other=0)
                hb8 = tl.load(vhi_ptr + hi_o, mask=vok, other=0)
                vs1 = tl.load(vsc_ptr + rel * s_vst + 1, mask=in_vq, other=0.0).to(tl.float32)
                vz1 = tl.load(vzr_ptr + rel * s_vst + 1, mask=in_vq, other=0.0).to(tl.float32)
            # keys, rounded to the model dtype as the reference does, then fp16 operands (exact for bf16
            # values within fp16's range: the interpreter has no bf16 dot and fp16 keeps p more precisely)
            kcode = (kb8.to(tl.int32) >> sh) & 3
            kf = tl.where(
                in_kq[:, None], kcode.to(tl.float32) * ksc[None, :] + kzr[None, :], kx.to(tl.float32)
            )
            s = tl.dot(qd, tl.trans(kf.to(Q.dtype.element_ty).to(tl.float16)))
            if KBOOST:  # + 4 hi * scale on the boosted channels: (4 q * scale)[idx] . hi
                hcode = (kh8.to(tl.int32) >> sh) & 3
                s = tl.dot((q4b * kscb[None, :]).to(tl.float16), tl.trans(hcode.to(tl.float16)), s)
            p, alpha, m_i, l_i = _online_softmax(s * qk_scale, ok, m_i, l_i)
            vcode = (vb8.to(tl.int32) >> (2 * (d % 4))[None, :]) & 3
            vf = vcode.to(tl.float32) * vs0[:, None] + vz0[:, None]  # 0 on rows past the quantized values
            p16 = p.to(tl.float16)
            vt = tl.where(in_vq[:, None], vf.to(Q.dtype.element_ty).to(tl.float16), vx.to(tl.float16))
            acc = acc * alpha[:, None] + tl.dot(p16, vt)
            if VBOOST:  # boosted channels: (lo + 4 hi) * s1 + z1 instead of lo * s0 + z0, both rounded
                lo_b = ((lb8.to(tl.int32) >> (2 * (vid % 4))[None, :]) & 3).to(tl.float32)
                hi_b = ((hb8.to(tl.int32) >> (2 * (sv % 4))[None, :]) & 3).to(tl.float32)
                vb = ((lo_b + 4.0 * hi_b) * vs1[:, None] + vz1[:, None]).to(Q.dtype.element_ty).to(tl.float32)
                vd = (lo_b * vs0[:, None] + vz0[:, None]).to(Q.dtype.element_ty).to(tl.float32)
                dv = tl.where(
                    sv_ok[None, :], vb - vd, 0.0
                )  # 0 on rows past the quantized values (zero scales)
                acc_b = acc_b * alpha[:, None] + tl.dot(p16, dv.to(tl.float16))
    if VBOOST and PART != 1:  # slots -> channels
        onehot = ((vid[:, None] == d[None, :]) & sv_ok[:, None]).to(tl.float32)  # (NBV, D)
        acc += tl.dot(acc_b, onehot, input_precision="ieee")
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
