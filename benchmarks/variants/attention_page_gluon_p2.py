"""EXPERIMENTS (not used by fcboost; A/B them with ``benchmarks/gluon_probe.py --old-kernel`` and
``--old-kw '{"_gluon": {"stages": 4}}'``, as ``benchmarks/gpu_s10_probe.sh`` does): the Gluon page
kernel of :mod:`fcboost.kernels.attention_page_gluon` (its helpers imported from there) with the
page loop at page granularity.

p2 (this module's ``_page_kernel_gluon``): both 64-token steps' scores first (eight independent MMA
chains), one maximum and at most one rescale per page, then both steps' values; the next page's two
steps in flight while a page is computed (``STAGES`` must be 4). Motivation: the session-9 Nsight
profile of the step loop (``experiments/decode_attention.md``): dependent ALU/MMA chains at about two
warps per scheduler.

p3 (``PSTORE``; ``attention_page_gluon_p3.py`` launches it so): the value phase in two halves, a page's
eight weighted ``P^T`` tiles stored to their own shared-memory tiles, one barrier, then every value
MMA (the package kernel transposes each block through one scratch buffer, the transposes separated
by barriers: three per 64-token step in the sm_90 loop). The mixed pages' launch keeps p2's loop.

Compiled offline for sm_90 only (``tests/kernels/compile_sm90.py``); not yet run on a GPU. The
kernel's prologue and epilogue are the package kernel's, copied: only the page loop differs.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as _ac
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from fcboost.kernels.attention_page_gluon import (
    _col,
    _graw4,
    _graw_m,
    _issue_step,
    _perm4,
    _perm4_rows,
    _perm4_vec,
    _warp_sync,
)


@gluon.jit
def _scores(k_sm, kh_sm, qs, qh, bias, zero8, la4: gl.constexpr, KBOOST: gl.constexpr):
    """The four planes' scores ``S^T`` (16 byte rows x 8 heads) of one 64-token step in shared memory,
    scaled to the plane weights, with the boosted channels' high bits and the zeros' bias."""
    U: gl.constexpr = 16777216.0
    kb = k_sm.load(la4)  # (16, D) uint8
    k0, k1, k2, k3 = _graw4(kb)  # k (channels) in _perm4 order, as qs
    s0 = mma_v2(k0, qs, zero8)
    s1 = mma_v2(k1, qs, zero8)
    s2 = mma_v2(k2, qs, zero8)
    s3 = mma_v2(k3, qs, zero8)
    if KBOOST:
        khb = kh_sm.load(la4)  # (16, 16): k (slots) in _perm4 order, as qh
        h0, h1, h2, h3 = _graw4(khb)
        s0 = mma_v2(h0, qh, s0)
        s1 = mma_v2(h1, qh, s1)
        s2 = mma_v2(h2, qh, s2)
        s3 = mma_v2(h3, qh, s3)
    return (s0 * U + bias[None, :], s1 * (U / 4) + bias[None, :], s2 * (U / 16) + bias[None, :],
            s3 * (U / 64) + bias[None, :])  # fmt: skip


@gluon.jit
def _pick(st: gl.constexpr, j: gl.constexpr, a0, a1, a2, a3, b0, b1, b2, b3):
    """Step ``st``'s plane-``j`` score tile."""
    if st == 0:
        if j == 0:
            return a0
        elif j == 1:
            return a1
        elif j == 2:
            return a2
        else:
            return a3
    else:
        if j == 0:
            return b0
        elif j == 1:
            return b1
        elif j == 2:
            return b2
        else:
            return b3


@gluon.jit
def _weigh(pj, vs_t, vz_t, j: gl.constexpr, GS: gl.constexpr, DUP: gl.constexpr, c_hi, rows_l: gl.constexpr):
    """Value block ``j``'s ``P^T`` weighted by its value scales (fp16) and ``P^T`` times its zeros
    (``DUP``: columns 4-7 with the group-1 scales and zeros; a thread's two columns are on one side)."""
    vsj = _col(vs_t, j * GS, GS, rows_l)
    vzj = _col(vz_t, j * GS, GS, rows_l)
    if DUP:
        vsj2 = gl.where(c_hi, _col(vs_t, j * GS + 1, GS, rows_l)[:, None], vsj[:, None])
        vzj2 = gl.where(c_hi, _col(vz_t, j * GS + 1, GS, rows_l)[:, None], vzj[:, None])
    else:
        vsj2 = vsj[:, None]
        vzj2 = vzj[:, None]
    return (pj * vsj2).to(gl.float16), pj * vzj2


@gluon.jit
def _page_kernel_gluon(
    Q, s_qb, s_qh,  # (B, Hq, D)
    KLO, s_klb, s_klh, s_klp, s_klr,  # (B, H, NP, P/4, D) uint8
    KSC, KZR, s_ksb, s_ksh, s_ksp,  # (B, H, NP, D) float16
    VLO, s_vlb, s_vlh,  # (B, H, NV/64, 4, D/4, 16) uint8, interleaved (fcboost.quant.layout)
    VSC, VZR, s_vsb, s_vsh,  # (B, H, NV, G) float16, G = 2 with VBOOST (group 1: the boosted channels)
    KHI, s_khb, s_khh, s_khp, s_khr,  # (B, H, NP, P/4, 16) uint8 boosted keys' high bits (KBOOST)
    KIDX, s_kib, s_kih, s_kip,  # boosted channels, ascending: Kitty's (B, H, NP, 16) or a static mask's (H, 16)
    VHI, s_vhb, s_vhh,  # (B, H, NV/64, 4, 4, 16) boosted values' high bits, interleaved (VBOOST)
    NPAGES, NVQ,  # (B,) int32
    O_ACC, O_M, O_L,  # (B*H, NSLOT, GQ, D) fp32, (B*H, NSLOT, GQ) fp32 x2
    qk_scale, H, NSPLIT, NSLOT, SLOT0,  # partials of program (bh, j): slot SLOT0 + j
    VW, s_vwb, s_vwh, s_vwt,  # (B, H, >=W+1, D) the 16-bit value window (MIXED)
    GQ: gl.constexpr, D: gl.constexpr, KBOOST: gl.constexpr = False, VBOOST: gl.constexpr = False,
    STAGES: gl.constexpr = 2, DUP: gl.constexpr = False, MIXED: gl.constexpr = False,
    PSTORE: gl.constexpr = False,
):  # fmt: skip
    """Transposed: the codes are the MMA's A operand (16 tokens or 16 channel bytes per row block)
    and the query heads its N = 8 columns. Per 64-token step (byte rows 16 st + m of a key page; key
    code plane j of row r is token 4 r + j): S^T = K . (q s)^T per plane, P^T feeds O^T = V^T . P^T
    after a register transpose (``convert_layout``); the value block j (D/4 channel bytes x the 16
    tokens 4 m + j) comes from the interleaved storage as it is.

    Boosts (16 channels): ``KBOOST`` adds one K = 16 MMA per key block (the high bits times the boosted
    channels' ``4 q s``; the channels per page from ``KIDX``: Kitty's, or a static mask's with page
    stride 0); ``VBOOST`` (static masks) adds, per value block, a 16-row A tile of the boosted
    channels' high bits against ``P^T`` weighted by the group-1 scales, and without ``DUP`` one of
    their low bits (rows gathered by the copy, a plane mask per row).

    ``DUP`` (boosted values, GQ <= 4): the N = 8 columns carry the GQ heads twice (columns 4 + g repeat
    head g: the same scores and probabilities), and ``P^T`` is weighted per column, by the group-0
    value scales in columns 0-3 and the group-1 scales in columns 4-7, so one transpose feeds both the
    plane MMAs (columns 0-3 kept) and the boosted-value MMAs (columns 4-7 kept), and the zeros of both
    groups share one accumulator; else the boosted values take a second ``P^T`` of their own. With
    ``DUP`` the plane MMAs' columns 4-7 already hold every channel's low bits against the group-1
    ``P^T``: the boosted channels' low bits are taken from there at the end (no gathered low-plane
    rows, no MMA of their own), only their high bits have A tiles.

    ``MIXED``: instead of the pages with quantized keys and values, the pages after them with quantized
    keys (the last one or two: values leave the 16-bit window a token at a time), launched apart (its
    registers do not weigh on the main launch); a token past the quantized values gets zero value
    scales and zeros in registers (its codes add nothing) and its 16-bit value row from the window
    through one extra K = 16 MMA per plane and value block (rows gathered from global memory, in the
    planes' channel order, ``P^T`` unweighted). The rest kernels then only take what follows the last
    key page. Not with boosted values without ``DUP``."""
    P: gl.constexpr = 128
    NB: gl.constexpr = 16
    GS: gl.constexpr = 2 if VBOOST else 1  # value scale groups
    VGATHER: gl.constexpr = VBOOST and not DUP  # boosted values' low-plane rows copied apart
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    la4: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    lb4: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    rows_l: gl.constexpr = gl.SliceLayout(1, mma)
    cols_l: gl.constexpr = gl.SliceLayout(0, mma)
    lrow: gl.constexpr = gl.BlockedLayout([1, 4 * GS], [8, 4], [1, 1], [1, 0])  # lanes hold whole rows
    bh = gl.program_id(0)
    split = gl.program_id(1)
    b = (bh // H).to(gl.int64)
    h = (bh % H).to(gl.int64)
    nvq = gl.load(NVQ + b)
    npg = gl.load(NPAGES + b)
    nft = gl.minimum(npg * P, nvq) // P  # pages with quantized keys and values
    if MIXED:  # the pages after those: quantized keys, values partly in the 16-bit window
        p_lo = nft
        nft = npg
    else:
        p_lo = nft * 0
    per = gl.cdiv(nft - p_lo, NSPLIT)
    i0 = p_lo + split * per
    i1 = gl.minimum(i0 + per, nft)
    # (q s)^T: B operand (D channels x 8 heads), heads >= GQ zero
    qc = gl.arange(0, D, layout=gl.SliceLayout(1, lb4))
    qg = gl.arange(0, 8, layout=gl.SliceLayout(0, lb4))
    qhd = qg % 4 if DUP else qg  # column -> head (DUP: columns 4 + g repeat head g)
    q_ptr = Q + b * s_qb + (h * GQ + qhd)[None, :] * s_qh + qc[:, None]
    qmask = (qhd < GQ)[None, :]
    k_base = KLO + b * s_klb + h * s_klh
    ks_base = b * s_ksb + h * s_ksh
    v_base = VLO + b * s_vlb + h * s_vlh
    vs_base = VSC + b * s_vsb + h * s_vsh
    vz_base = VZR + b * s_vsb + h * s_vsh
    sidx = KIDX + b * s_kib + h * s_kih  # + page * s_kip: the page's slot -> channel map
    if KBOOST:  # the boosted channels as the K of the high-bit MMA: (16 slots x 8 heads) B operand
        qh_ptr = Q + b * s_qb + (h * GQ + qhd)[None, :] * s_qh
        kh_base = KHI + b * s_khb + h * s_khh
    else:
        kh_base = k_base
    if VBOOST:  # A tiles with the 16 slots as rows; each row's plane from its own mask
        vr = gl.arange(0, NB, layout=gl.SliceLayout(1, la4))
        vm = gl.arange(0, 16, layout=gl.SliceLayout(0, la4))
        hi_msk = ((3 << (2 * (vr % 4)))[:, None] + 0 * vm[None, :]).to(gl.uint8)  # slot s: bits 2 (s % 4)
        vh_base = VHI + b * s_vhb + h * s_vhh
        if not DUP:
            ob_lo = gl.zeros([NB, 8], gl.float32, layout=mma)
        ob_hi = gl.zeros([NB, 8], gl.float32, layout=mma)
        z1_acc = gl.zeros([16, 8], gl.float32, layout=mma)
    else:
        vh_base = v_base
    c_hi = (gl.arange(0, 8, layout=cols_l) >= 4)[None, :]  # DUP: the group-1 columns
    m_i = gl.full([8], float("-inf"), gl.float32, layout=cols_l)
    acc0 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc1 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc2 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc3 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    l_acc = gl.zeros([16, 8], gl.float32, layout=mma)
    z_acc = gl.zeros([16, 8], gl.float32, layout=mma)
    zero8 = gl.zeros([16, 8], gl.float32, layout=mma)
    U: gl.constexpr = 16777216.0
    if MIXED:  # A tiles of 16-bit window values: (D/4 channels 4 i + k, 16 tokens), from global memory
        w_dt: gl.constexpr = VW.dtype.element_ty
        la2: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        lb2: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        wi = gl.arange(0, D // 4, layout=gl.SliceLayout(1, la2))
        wr = _perm4(gl.arange(0, 16, layout=gl.SliceLayout(0, la2)))  # P^T's rows: byte rows perm(r)
        vw_base = VW + b * s_vwb + h * s_vwh
        zero32 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    # shared memory: STAGES 64-token steps in flight (see _issue_step)
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    flat1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    k_s = gl.allocate_shared_memory(gl.uint8, [STAGES, 16, D], gl.SwizzledSharedLayout(16, 1, 8, [1, 0]))
    v_s = gl.allocate_shared_memory(gl.uint8, [STAGES, D, 16], flat)
    ks_s = gl.allocate_shared_memory(gl.float16, [STAGES, D], flat1)
    kz_s = gl.allocate_shared_memory(gl.float16, [STAGES, D], flat1)
    vs_s = gl.allocate_shared_memory(gl.float16, [STAGES, 16, 4 * GS], flat)
    vz_s = gl.allocate_shared_memory(gl.float16, [STAGES, 16, 4 * GS], flat)
    if KBOOST:
        kh_s = gl.allocate_shared_memory(gl.uint8, [STAGES, 16, 16], flat)
        ki_s = gl.allocate_shared_memory(KIDX.dtype.element_ty, [STAGES, 16], flat1)
    else:  # (unused stand-ins)
        kh_s = k_s
        ki_s = ks_s
    if VBOOST:
        vh_s = gl.allocate_shared_memory(gl.uint8, [STAGES, 64, 16], flat)  # [stage, 16 j + slot, m]
    else:
        vh_s = v_s
    if VGATHER:
        vl_s = gl.allocate_shared_memory(gl.uint8, [STAGES, 64, 16], flat)
    else:
        vl_s = v_s
    if PSTORE:
        p_s = gl.allocate_shared_memory(gl.float16, [8, 16, 8], flat)  # p3: a page's weighted P^T tiles
    else:
        p_s = v_s
    if PSTORE and VGATHER:
        p1_s = gl.allocate_shared_memory(gl.float16, [8, 16, 8], flat)  # ... with the group-1 scales
    else:
        p1_s = p_s
    gl.static_assert(STAGES == 4, "the page-at-once loop keeps two pages (four steps) in shared memory")
    for d in gl.static_range(2):  # page i0's two steps
        _issue_step(2 * i0 + d, 2 * i0 + d < 2 * i1, k_s, v_s, ks_s, kz_s, vs_s, vz_s, kh_s, ki_s, vl_s, vh_s,
                    k_base, s_klp, s_klr, KSC, KZR, ks_base, s_ksp, v_base, vs_base, vz_base, kh_base, s_khp,
                    s_khr, vh_base, sidx, s_kip, D, GS, KBOOST, VBOOST, STAGES, VGATHER)  # fmt: skip
    for pg in range(i0, i1):
        qf = gl.load(q_ptr, mask=qmask, other=0.0).to(gl.float32) * qk_scale
        if VGATHER:  # the boosted channels' plane masks (re-read per page, as below)
            vch = gl.load(sidx + vr + 0 * pg).to(gl.int32)
            lo_msk = ((3 << (2 * (vch % 4)))[:, None] + 0 * vm[None, :]).to(gl.uint8)
        _ac.wait_group(0)  # page pg's two steps landed
        _warp_sync()  # ... for every lane; and every lane is done reading page pg - 1's stages
        for d in gl.static_range(2):  # page pg + 1 in flight while page pg is computed
            _issue_step(2 * pg + 2 + d, 2 * pg + 2 + d < 2 * i1, k_s, v_s, ks_s, kz_s, vs_s, vz_s, kh_s, ki_s,
                        vl_s, vh_s, k_base, s_klp, s_klr, KSC, KZR, ks_base, s_ksp, v_base, vs_base, vz_base,
                        kh_base, s_khp, s_khr, vh_base, sidx, s_kip, D, GS, KBOOST, VBOOST, STAGES, VGATHER)  # fmt: skip
        slot0 = (2 * pg) % STAGES
        sc = ks_s.index(slot0).load(gl.SliceLayout(1, lb4)).to(gl.float32)
        zr = kz_s.index(slot0).load(gl.SliceLayout(1, lb4)).to(gl.float32)
        qs0 = (qf * sc[:, None]).to(gl.float16)
        qs = _perm4_rows(qs0, D, lb4)  # k in _graw4's order
        bias = gl.convert_layout(gl.sum(qf * zr[:, None], axis=0), cols_l)
        if KBOOST:  # the boosted channels' rows of q s (x 4: high bits), slots in _graw4's order
            hch = _perm4_vec(ki_s.index(slot0), 16, gl.SliceLayout(1, lb4)).to(gl.int32)
            sch = gl.load(KSC + ks_base + pg * s_ksp + hch).to(gl.float32)
            qfh = gl.load(qh_ptr + hch[:, None], mask=qmask, other=0.0).to(gl.float32)
            qh = (qfh * sch[:, None] * (4.0 * qk_scale)).to(gl.float16)
        else:
            qh = qs
        # the scores of both 64-token steps first (8 independent MMA chains), one maximum and at most
        # one rescale per page, then both steps' values
        a0, a1, a2, a3 = _scores(k_s.index(slot0), kh_s.index(slot0), qs, qh, bias, zero8, la4, KBOOST)
        b0, b1, b2, b3 = _scores(
            k_s.index(slot0 + 1), kh_s.index(slot0 + 1), qs, qh, bias, zero8, la4, KBOOST
        )
        t = gl.maximum(gl.maximum(gl.maximum(a0, a1), gl.maximum(a2, a3)),
                       gl.maximum(gl.maximum(b0, b1), gl.maximum(b2, b3)))  # fmt: skip
        m_new = gl.maximum(m_i, gl.max(t, axis=0))
        if gl.max(m_new - m_i, axis=0) > 0:  # a head's maximum grew: rescale (else alpha = 1)
            alpha = gl.exp2(m_i - m_new)
            acc0 *= alpha[None, :]
            acc1 *= alpha[None, :]
            acc2 *= alpha[None, :]
            acc3 *= alpha[None, :]
            l_acc *= alpha[None, :]
            z_acc *= alpha[None, :]
            if VBOOST:
                if not DUP:
                    ob_lo *= alpha[None, :]
                    z1_acc *= alpha[None, :]
                ob_hi *= alpha[None, :]
            m_i = m_new
        if MIXED or not PSTORE:  # p2 (the mixed pages' launch too)
            for st in gl.static_range(2):  # byte rows 16 st + m, planes j -> token 4(16 st + m) + j
                g = 2 * pg + st
                slot = slot0 + st
                vs_t = vs_s.index(slot).load(lrow)  # (16, 4 GS)
                vz_t = vz_s.index(slot).load(lrow)
                if MIXED:
                    if 64 * g + 64 > nvq:  # (uniform) no codes past the quantized values: scales, zeros 0
                        tm = gl.arange(0, 16, layout=gl.SliceLayout(1, lrow))
                        tc = gl.arange(0, 4 * GS, layout=gl.SliceLayout(0, lrow))
                        tv = (64 * g + 4 * _perm4(tm))[:, None] + (tc // GS)[None, :] < nvq
                        vs_t = gl.where(tv, vs_t, 0.0)
                        vz_t = gl.where(tv, vz_t, 0.0)
                for j in gl.static_range(4):
                    sj = _pick(st, j, a0, a1, a2, a3, b0, b1, b2, b3)
                    pj = gl.exp2(sj - m_i[None, :])  # (16 tokens, 8 heads)
                    pw, pz = _weigh(pj, vs_t, vz_t, j, GS, DUP, c_hi, rows_l)
                    l_acc += pj
                    z_acc += pz
                    pb = gl.convert_layout(pw, lb4)  # B operand: (tokens, heads)
                    va = (
                        v_s.index(slot).slice(j * (D // 4), D // 4).load(la4)
                    )  # (D/4 channel bytes, 16 tokens)
                    v0, v1, v2, v3 = _graw4(va)  # k (tokens m) in _perm4 order, as the rows of P^T
                    acc0 = mma_v2(v0, pb, acc0)
                    acc1 = mma_v2(v1, pb, acc1)
                    acc2 = mma_v2(v2, pb, acc2)
                    acc3 = mma_v2(v3, pb, acc3)
                    if VBOOST:
                        vhb = vh_s.index(slot).slice(16 * j, 16).load(la4)  # (16 slots, 16 tokens)
                        if DUP:  # the low bits are in acc0-3's columns 4-7
                            pb1 = pb
                        else:
                            vlb = vl_s.index(slot).slice(16 * j, 16).load(la4)
                            vs1 = _col(vs_t, j * GS + 1, GS, rows_l)
                            vz1 = _col(vz_t, j * GS + 1, GS, rows_l)
                            z1_acc += pj * vz1[:, None]
                            pb1 = gl.convert_layout((pj * vs1[:, None]).to(gl.float16), lb4)
                            ob_lo = mma_v2(_graw_m(vlb, lo_msk), pb1, ob_lo)
                        ob_hi = mma_v2(_graw_m(vhb, hi_msk), pb1, ob_hi)
                    if MIXED:
                        if 64 * g + 64 > nvq:  # (uniform) tokens past the quantized values: 16-bit rows
                            pt = gl.convert_layout(pj.to(w_dt), lb2)
                            wrow = 64 * g + 4 * wr + j - nvq  # window row of the step's token 4 perm(r) + j
                            wp = vw_base + (wrow * s_vwt)[None, :] + 4 * wi[:, None]
                            wok = (wrow >= 0)[None, :]
                            acc0 += mma_v2(gl.load(wp, mask=wok, other=0.0), pt, zero32) * (1.0 / U)
                            acc1 += mma_v2(gl.load(wp + 1, mask=wok, other=0.0), pt, zero32) * (4.0 / U)
                            acc2 += mma_v2(gl.load(wp + 2, mask=wok, other=0.0), pt, zero32) * (16.0 / U)
                            acc3 += mma_v2(gl.load(wp + 3, mask=wok, other=0.0), pt, zero32) * (64.0 / U)
        else:  # p3: probabilities of both steps, their sums, and the weighted P^T into 8 shared tiles,
            # then one barrier, then all value MMAs
            for st in gl.static_range(2):
                slot = slot0 + st
                vs_t = vs_s.index(slot).load(lrow)  # (16, 4 GS)
                vz_t = vz_s.index(slot).load(lrow)
                for j in gl.static_range(4):
                    sj = _pick(st, j, a0, a1, a2, a3, b0, b1, b2, b3)
                    pj = gl.exp2(sj - m_i[None, :])  # (16 tokens, 8 heads)
                    pw, pz = _weigh(pj, vs_t, vz_t, j, GS, DUP, c_hi, rows_l)
                    l_acc += pj
                    z_acc += pz
                    p_s.index(4 * st + j).store(pw)
                    if VGATHER:
                        vs1 = _col(vs_t, j * GS + 1, GS, rows_l)
                        vz1 = _col(vz_t, j * GS + 1, GS, rows_l)
                        z1_acc += pj * vz1[:, None]
                        p1_s.index(4 * st + j).store((pj * vs1[:, None]).to(gl.float16))
            _warp_sync()  # every lane's P^T tiles stored
            for st in gl.static_range(2):
                slot = slot0 + st
                for j in gl.static_range(4):
                    pb = p_s.index(4 * st + j).load(lb4)  # B operand: (tokens, heads)
                    va = (
                        v_s.index(slot).slice(j * (D // 4), D // 4).load(la4)
                    )  # (D/4 channel bytes, 16 tokens)
                    v0, v1, v2, v3 = _graw4(va)  # k (tokens m) in _perm4 order, as the rows of P^T
                    acc0 = mma_v2(v0, pb, acc0)
                    acc1 = mma_v2(v1, pb, acc1)
                    acc2 = mma_v2(v2, pb, acc2)
                    acc3 = mma_v2(v3, pb, acc3)
                    if VBOOST:
                        vhb = vh_s.index(slot).slice(16 * j, 16).load(la4)  # (16 slots, 16 tokens)
                        if DUP:  # the low bits are in acc0-3's columns 4-7
                            pb1 = pb
                        else:
                            vlb = vl_s.index(slot).slice(16 * j, 16).load(la4)
                            pb1 = p1_s.index(4 * st + j).load(lb4)
                            ob_lo = mma_v2(_graw_m(vlb, lo_msk), pb1, ob_lo)
                        ob_hi = mma_v2(_graw_m(vhb, hi_msk), pb1, ob_hi)
    _ac.wait_group(0)  # nothing may land in a freed stage after the program ends
    l_i = gl.sum(l_acc, axis=0)  # (8,) per head
    zs0 = gl.sum(z_acc, axis=0)
    o_base = (bh * NSLOT + SLOT0 + split) * GQ
    og = gl.arange(0, 8, layout=cols_l)
    oc = gl.arange(0, D // 4, layout=rows_l)
    o_pp = O_ACC + (o_base + og)[None, :] * D + 4 * oc[:, None]
    msk = (og < GQ)[None, :]
    if VBOOST:  # boosted channels: the low bits from ob_lo (DUP: the planes' columns 4-7), the high
        # bits from ob_hi (the slot map is read after the loop: read before it, it stayed live across
        # the loop and cost about 80 registers in the sm_90 compile)
        after = (gl.max(l_i, axis=0) * 0).to(gl.int32)
        es = gl.arange(0, NB, layout=cols_l)
        ech = gl.load(sidx + es + after).to(gl.int32)  # (16,) along columns
        e4 = 4 * oc[:, None]
        nb0 = gl.max((ech[None, :] == e4).to(gl.int32), axis=1) == 0
        nb1 = gl.max((ech[None, :] == e4 + 1).to(gl.int32), axis=1) == 0
        nb2 = gl.max((ech[None, :] == e4 + 2).to(gl.int32), axis=1) == 0
        nb3 = gl.max((ech[None, :] == e4 + 3).to(gl.int32), axis=1) == 0
        bs = gl.arange(0, NB, layout=rows_l)
        bch = gl.load(sidx + bs + after).to(gl.int32)
        f_hi = 4.0 * U / (1 << (2 * (bs % 4))).to(gl.float32)  # high bits weigh 4
        if DUP:  # column c < 4: head c's unboosted channels; column 4 + g: head g's boosted channels'
            # low bits and group-1 zeros; then their high bits are added
            oh = og % 4
            o_pp = O_ACC + (o_base + oh)[None, :] * D + 4 * oc[:, None]
            hm = (oh < GQ)[None, :]
            lo_c = (og < 4)[None, :]
            gl.store(o_pp, acc0 * U + zs0[None, :], mask=hm & (lo_c == nb0[:, None]))
            gl.store(o_pp + 1, acc1 * (U / 4) + zs0[None, :], mask=hm & (lo_c == nb1[:, None]))
            gl.store(o_pp + 2, acc2 * (U / 16) + zs0[None, :], mask=hm & (lo_c == nb2[:, None]))
            gl.store(o_pp + 3, acc3 * (U / 64) + zs0[None, :], mask=hm & (lo_c == nb3[:, None]))
            _warp_sync()  # the stores above (other lanes') before the read-modify-write below
            b_pp = O_ACC + (o_base + og - 4)[None, :] * D + bch[:, None]
            bmsk = ((og >= 4) & (og - 4 < GQ))[None, :]
            gl.store(b_pp, gl.load(b_pp, mask=bmsk, other=0.0) + ob_hi * f_hi[:, None], mask=bmsk)
        else:
            gl.store(o_pp, acc0 * U + zs0[None, :], mask=msk & nb0[:, None])
            gl.store(o_pp + 1, acc1 * (U / 4) + zs0[None, :], mask=msk & nb1[:, None])
            gl.store(o_pp + 2, acc2 * (U / 16) + zs0[None, :], mask=msk & nb2[:, None])
            gl.store(o_pp + 3, acc3 * (U / 64) + zs0[None, :], mask=msk & nb3[:, None])
            f_lo = U / (1 << (2 * (bch % 4))).to(gl.float32)  # row s: code * 4^(channel % 4) * 2^-24
            ob = ob_lo * f_lo[:, None] + ob_hi * f_hi[:, None] + gl.sum(z1_acc, axis=0)[None, :]
            gl.store(O_ACC + (o_base + og)[None, :] * D + bch[:, None], ob, mask=msk)
    else:
        gl.store(o_pp, acc0 * U + zs0[None, :], mask=msk)
        gl.store(o_pp + 1, acc1 * (U / 4) + zs0[None, :], mask=msk)
        gl.store(o_pp + 2, acc2 * (U / 16) + zs0[None, :], mask=msk)
        gl.store(o_pp + 3, acc3 * (U / 64) + zs0[None, :], mask=msk)
    gl.store(O_M + o_base + og, m_i, mask=og < GQ)
    gl.store(O_L + o_base + og, l_i, mask=og < GQ)
