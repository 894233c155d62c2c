"""The rest's 16-bit tokens in Gluon: one-warp programs, tensor-core dots in explicit MMA layouts.

A (row, KV head)'s 16-bit tokens (the fp16/bf16 sink, the key buffer / value window past both
quantized ranges, the new token; :func:`fcboost.kernels.attention_rest._rest_split_kernel`'s first
loop, the same list and order) are ``BT``-token tiles whose key and value rows are copied with
``cp.async`` straight from wherever each token lives (one row pointer per token) into shared memory,
then, as in the Gluon page kernel (:mod:`fcboost.kernels.attention_page_gluon`), the **tokens are
the MMA's M** and the query heads its N = 8 columns: ``S^T = K . q^T`` per 16-token block (A from
shared memory, ``ldmatrix``), the online softmax over the tile, and ``O^T += V^T . P^T`` (``V^T`` a
transposed view of the value tile, ``P^T`` the probabilities moved into the B operand). No
dequantization, no padding of GQA 4 to 16 rows, and a program is one warp (about 7 resident per SM
with 64-token tiles), so many tiles' copies are in flight at once.

The Triton split kernel keeps the quantized tail (``PART=2``); this kernel replaces its 16-bit loop
(``PART=1``) when :func:`fcboost.kernels.decode_attention.decode_attention` runs the rest in two parts
with ``_rest={"parts": 2, "impl16": "gluon"}``. Partials ``(acc, m, l)`` as the other kernels write
them (slot ``FIRST + j``), so the combine is shared.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as _ac
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from fcboost.kernels.attention_page_gluon import _cp_async, _warp_sync


@gluon.jit
def _rest16_kernel_gluon(
    Q, s_qb, s_qh,  # (B, Hq, D)
    SK, SV, s_sb, s_sh, s_st,  # (B, H, S, D) sink keys / values
    KB, s_kbb, s_kbh, s_kbt,  # (B, H, >=P+1, D) key buffer
    VW, s_vwb, s_vwh, s_vwt,  # (B, H, >=W+1, D) value window
    KN, VN, s_nb, s_nh,  # (B, H, D) the new token's key / value (HAS_NEW)
    NREAL, NPAGES, NVQ,  # (B,) int32
    O_ACC, O_M, O_L,  # (B*H, NSLOT, GQ, D) fp32, (B*H, NSLOT, GQ) fp32 x2
    qk_scale, H, FIRST, NPROG, NSLOT,
    GQ: gl.constexpr, D: gl.constexpr, S: gl.constexpr, P: gl.constexpr, BT: gl.constexpr,
    HAS_NEW: gl.constexpr,
):  # fmt: skip
    """Program ``(bh, j)``: 16-bit tiles ``j, j + NPROG, ...`` of row ``bh // H``, head ``bh % H``.
    Token ``u`` of the list is sink token ``u`` (``u < ns``), else token ``qe + u - ns`` (key buffer
    and value window rows past the quantized ranges; the last, with ``HAS_NEW``, the new token). ``qe``
    is the split kernel's (its ``max`` with the end of the page tiles never binds)."""
    dt: gl.constexpr = Q.dtype.element_ty
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    la: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    lb: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    rows_l: gl.constexpr = gl.SliceLayout(1, mma)
    cols_l: gl.constexpr = gl.SliceLayout(0, mma)
    bh = gl.program_id(0)
    j = gl.program_id(1)
    b = (bh // H).to(gl.int64)
    h = (bh % H).to(gl.int64)
    nreal = gl.load(NREAL + b)
    npg = gl.load(NPAGES + b)
    nvq = gl.load(NVQ + b)
    ns = gl.minimum(nreal, S)
    kq_end = S + npg * P
    vq_end = S + nvq
    qe = gl.minimum(gl.maximum(kq_end, vq_end), nreal)  # the end of both quantized ranges
    n16 = ns + nreal + HAS_NEW - qe
    n16t = gl.cdiv(n16, BT)
    # q^T: the B operand (D channels x 8 heads), heads >= GQ zero
    qc = gl.arange(0, D, layout=gl.SliceLayout(1, lb))
    qg = gl.arange(0, 8, layout=gl.SliceLayout(0, lb))
    qt = gl.load(
        Q + b * s_qb + (h * GQ + qg)[None, :] * s_qh + qc[:, None], mask=(qg < GQ)[None, :], other=0.0
    )
    # copies: 16 bytes per lane and piece, 8 rows x 64 bytes per instruction (a lane's rows: BT / 8,
    # so few per-token row pointers live in registers)
    lc: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0])
    cr = gl.arange(0, BT, layout=gl.SliceLayout(1, lc))
    cd = gl.arange(0, D, layout=gl.SliceLayout(0, lc))
    sk_ptr = SK + b * s_sb + h * s_sh
    sv_ptr = SV + b * s_sb + h * s_sh
    kb_ptr = KB + b * s_kbb + h * s_kbh
    vw_ptr = VW + b * s_vwb + h * s_vwh
    kn_ptr = KN + b * s_nb + h * s_nh
    vn_ptr = VN + b * s_nb + h * s_nh
    sw: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    k_s = gl.allocate_shared_memory(dt, [BT, D], sw)
    v_s = gl.allocate_shared_memory(dt, [BT, D], sw)
    m_i = gl.full([8], float("-inf"), gl.float32, layout=cols_l)
    l_i = gl.zeros([8], gl.float32, layout=cols_l)
    acc = gl.zeros([D, 8], gl.float32, layout=mma)
    zero = gl.zeros([16, 8], gl.float32, layout=mma)
    tr = gl.arange(0, 16, layout=rows_l)
    for i in range(j, n16t, NPROG):
        u = i * BT + cr
        ok = u < n16
        t = gl.where(u < ns, u, u - ns + qe)
        kp = gl.where(u < ns, sk_ptr + t * s_st, gl.where(t < nreal, kb_ptr + (t - kq_end) * s_kbt, kn_ptr))
        vp = gl.where(u < ns, sv_ptr + t * s_st, gl.where(t < nreal, vw_ptr + (t - vq_end) * s_vwt, vn_ptr))
        kp = gl.multiple_of(kp, 16)  # rows start 16-byte aligned (the launcher checks): 16-byte copies
        vp = gl.multiple_of(vp, 16)
        _warp_sync()  # every lane is done reading the previous tile
        _cp_async(k_s, kp[:, None] + cd[None, :], mask=ok[:, None])  # rows past the list: zeros
        _cp_async(v_s, vp[:, None] + cd[None, :], mask=ok[:, None])
        _ac.commit_group()
        _ac.wait_group(0)
        _warp_sync()
        s0 = mma_v2(k_s.slice(0, 16).load(la), qt, zero) * qk_scale
        s0 = gl.where((i * BT + tr < n16)[:, None], s0, float("-inf"))
        m_t = gl.max(s0, axis=0)
        if BT >= 32:
            s1 = mma_v2(k_s.slice(16, 16).load(la), qt, zero) * qk_scale
            s1 = gl.where((i * BT + 16 + tr < n16)[:, None], s1, float("-inf"))
            m_t = gl.maximum(m_t, gl.max(s1, axis=0))
        if BT == 64:
            s2 = mma_v2(k_s.slice(32, 16).load(la), qt, zero) * qk_scale
            s2 = gl.where((i * BT + 32 + tr < n16)[:, None], s2, float("-inf"))
            s3 = mma_v2(k_s.slice(48, 16).load(la), qt, zero) * qk_scale
            s3 = gl.where((i * BT + 48 + tr < n16)[:, None], s3, float("-inf"))
            m_t = gl.maximum(m_t, gl.maximum(gl.max(s2, axis=0), gl.max(s3, axis=0)))
        m_new = gl.maximum(m_i, m_t)  # finite: the tile holds at least one token
        alpha = gl.exp2(m_i - m_new)
        acc *= alpha[None, :]
        l_i *= alpha
        m_i = m_new
        for kb in gl.static_range(BT // 16):
            if kb == 0:
                sk = s0
            elif kb == 1:
                sk = s1
            elif kb == 2:
                sk = s2
            else:
                sk = s3
            p = gl.exp2(sk - m_i[None, :])  # (16 tokens, 8 heads)
            l_i += gl.sum(p, axis=0)
            pb = gl.convert_layout(p.to(dt), lb)  # P^T: the B operand (tokens, heads)
            va = v_s.slice(16 * kb, 16).permute([1, 0]).load(la)  # V^T: (D channels, 16 tokens)
            acc = mma_v2(va, pb, acc)
    o_base = (bh * NSLOT + FIRST + j) * GQ
    og = gl.arange(0, 8, layout=cols_l)
    oc = gl.arange(0, D, layout=rows_l)
    gl.store(O_ACC + (o_base + og)[None, :] * D + oc[:, None], acc, mask=(og < GQ)[None, :])
    gl.store(O_M + o_base + og, m_i, mask=og < GQ)
    gl.store(O_L + o_base + og, l_i, mask=og < GQ)
