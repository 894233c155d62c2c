"""The page-tile loop of the fused decode attention in Gluon (Triton with explicit layouts), the
default on CUDA for 2-bit codes, page size 128, head_dim 128, up to 8 query heads per KV head and no
boost, a static mask of 16 channels (keys; values too) or Kitty's 16 channels per page.

Why: Triton's ``tl.dot`` picks the MMA operand layouts itself. The Triton page kernel pads GQA 4 to the
16 rows of an ``mma.m16n8k16`` (a quarter of every MMA, accumulator and softmax lane does real work) and
rebuilds the query operand around every MMA (about a fifth of its loop instructions; see
``experiments/decode_attention.md``). Here each program is **one warp** and every tensor lives in an
MMA fragment layout: the **codes are the A operand** (16 tokens, or 16 value channel-bytes, per row
block) and the **query heads the N = 8 columns** (GQA 4 pads to 8: half the MMAs, accumulator
registers and softmax lanes), each thread reads exactly the bytes of its fragment (4 consecutive k per
32-bit word with ``k_width=4``; the value planes' interleaved storage, :mod:`fcboost.quant.layout`,
makes a thread's four tokens of a channel byte one word) and unpacks all four planes of a word in
place (one ``shr`` and eight ``and``: exact fp16 subnormals, :func:`_graw4`; the k order this leaves is
matched by permuting the other operand's rows, :func:`_perm4`), the probabilities go from the scores'
accumulator layout to the B operand of ``O^T = V^T . P^T`` through one ``stmatrix``/``ldmatrix``
transpose, no cross-warp reductions exist, and the accumulators are rescaled only when a head's
maximum grows.

**Pipelined**: every 64-token step's bytes (key and value codes, scales, boosted high bits, and
without ``DUP`` the boosted value rows gathered by the copy itself) go global -> shared memory with ``cp.async``
``STAGES - 1`` steps ahead of the step being computed, so a one-warp program always has loads in
flight (H200, 8 x 32K: KIVI 114 -> 80 us, static + values 183 -> 133 us against direct loads;
``benchmarks/results/gluon_stages_s5_h200.json``).

Writes the same partials ``(acc, m, l)`` as :func:`fcboost.kernels.attention_page._page_kernel` for
the same split, so the rest and combine kernels are shared (:func:`fcboost.kernels.decode_attention.decode_attention`).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as _ac
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

# Triton 3.6 (the H200 image) names these async_copy_global_to_shared / thread_barrier; later Triton
# async_load / barrier
_cp_async = getattr(_ac, "async_load", None) or _ac.async_copy_global_to_shared
_warp_sync = getattr(gl, "barrier", None) or gl.thread_barrier


# 4 packed uint8 ($8) -> the 4 code planes at once, 2 registers each: plane j is ``w & (3 << 2j)``
# per byte as fp16 *subnormals* (code * 4^j * 2^-24, exact: the masked byte is a half's mantissa under
# a zero exponent, no offset for the tensor cores' accumulation to lose precision on). Bytes 0 and 2
# fill the first register's halves and bytes 1 and 3 (one shift of the word) the second's, so a
# plane costs two ``and`` and the word one ``shr`` (the Triton kernel's ``and`` + 2 ``prmt`` per
# plane put the bytes in order: 12 instructions per word instead of 9). The price: a thread's 4
# consecutive k come out in the order (0, 2, 1, 3), so the other operand's k must be permuted
# alike (:func:`_perm4`).
G_RAW4: gl.constexpr = gl.constexpr(
    "{ .reg .b32 t;\nshr.b32 t, $8, 8;\n"
    "and.b32 $0, $8, 0x00030003;\nand.b32 $1, t, 0x00030003;\n"
    "and.b32 $2, $8, 0x000c000c;\nand.b32 $3, t, 0x000c000c;\n"
    "and.b32 $4, $8, 0x00300030;\nand.b32 $5, t, 0x00300030;\n"
    "and.b32 $6, $8, 0x00c000c0;\nand.b32 $7, t, 0x00c000c0; }"
)


@gluon.jit
def _graw4(x):
    """uint8 codes (a layout whose 4 consecutive register elements are one 32-bit word) -> the four
    fp16 planes ``(x & (3 << 2j)) * 2^-24``, j = 0..3, each with its k permuted by :func:`_perm4`
    (element 4i + e holds byte 4i + perm(e))."""
    return gl.inline_asm_elementwise(
        G_RAW4, "=r,=r,=r,=r,=r,=r,=r,=r,r", [x],
        dtype=(gl.float16, gl.float16, gl.float16, gl.float16), is_pure=True, pack=4,
    )  # fmt: skip


@gluon.jit
def _perm4(i):
    """The k order :func:`_graw4` leaves: positions 1 and 2 of each group of 4 swapped (an involution)."""
    return (i // 4) * 4 + (i % 2) * 2 + (i // 2) % 2


@gluon.jit
def _perm4_vec(buf, N: gl.constexpr, layout: gl.constexpr):
    """A (N,) shared-memory vector in ``layout`` with its elements in :func:`_perm4` order (permuted
    within each thread's 4 registers, then one layout conversion)."""
    x = buf.load(gl.BlockedLayout([4], [32], [1], [0]))
    x = gl.reshape(gl.permute(gl.reshape(x, [N // 4, 2, 2]), [0, 2, 1]), [N])
    return gl.convert_layout(x, layout)


@gluon.jit
def _perm4_rows(x, N: gl.constexpr, layout: gl.constexpr):
    """The (N, 8) operand ``x`` with its rows in :func:`_perm4` order, in ``layout``."""
    x = gl.reshape(gl.permute(gl.reshape(x, [N // 4, 2, 2, 8]), [0, 2, 1, 3]), [N, 8])
    return gl.convert_layout(x, layout)


G_RAWM: gl.constexpr = gl.constexpr(
    "{ .reg .b32 t, z;\nmov.b32 z, 0;\nand.b32 t, $2, $3;\nprmt.b32 $0, t, z, 0x4240;\nprmt.b32 $1, t, z, 0x4341; }"
)


@gluon.jit
def _graw_m(x, m):
    """One plane per row: ``(x & m) * 2^-24`` with a per-element mask ``m`` (uint8 ``3 << 2j``, the
    same for the 4 elements of a word: rows of one A operand taken from different planes), in
    :func:`_graw4`'s k order (bytes 0, 2 | 1, 3)."""
    return gl.inline_asm_elementwise(G_RAWM, "=r,=r,r,r", [x, m], dtype=gl.float16, is_pure=True, pack=4)


@gluon.jit
def _col(t, c: gl.constexpr, GS: gl.constexpr, layout: gl.constexpr):
    """Column ``c`` of a (16, 4 GS) tile whose lanes hold whole rows, as fp32 in ``layout`` (split in
    registers: no shuffles)."""
    if GS == 1:
        a, b = gl.split(gl.reshape(t, [16, 2, 2]))  # columns (0, 2), (1, 3)
        x = a if c % 2 == 0 else b
        y0, y1 = gl.split(x)
        y = y0 if c // 2 == 0 else y1
    else:
        a, b = gl.split(gl.reshape(t, [16, 4, 2]))
        x = a if c % 2 == 0 else b  # columns c % 2 + 2k
        p, q = gl.split(gl.reshape(x, [16, 2, 2]))  # k = (0, 2), (1, 3)
        z = p if (c // 2) % 2 == 0 else q
        y0, y1 = gl.split(z)
        y = y0 if c // 4 == 0 else y1
    return gl.convert_layout(y, layout).to(gl.float32)


@gluon.jit
def _issue_step(gs, ok, k_s, v_s, ks_s, kz_s, vs_s, vz_s, kh_s, ki_s, vl_s, vh_s, vw_s, k_base, s_klp, s_klr, KSC,
                KZR, ks_base, s_ksp, v_base, vs_base, vz_base, kh_base, s_khp, s_khr, vh_base, sidx, s_kip, vw_base,
                s_vwt, nvq, D: gl.constexpr, G: gl.constexpr, KBOOST: gl.constexpr, VBOOST: gl.constexpr,
                STAGES: gl.constexpr, VGATHER: gl.constexpr, MIXED: gl.constexpr):  # fmt: skip
    """cp.async of 64-token step ``gs`` (page gs // 2, key byte rows 16 (gs % 2) ...) into stage
    ``gs % STAGES``, one commit group: key bytes (16, D), value bytes (4 j x D/4 channel bytes, 16 m:
    the step's interleaved block), the page's key scales/zeros (D,), the step's value scales/zeros as
    (16, 4 G) ([m, j G + g] = token 4m + j, group g); with boosted keys their high bits (16, 16) and
    the page's slot -> channel map (16,); with boosted values, per j, the 16 slots' rows of the high
    value planes (64 = 16 j + slot, 16) and (``VGATHER``) of the low planes, gathered through the
    slot map ``sidx``. ``ok`` false: zero-filled (nothing read). ``MIXED``, for a step with tokens past
    the quantized values: the 16-bit window rows of its 64 tokens (64 = 16 j + m <- token
    4 perm(m) + j, the value blocks' k order; zeros before the window)."""
    slot = gs % STAGES
    pg = gs // 2
    r0 = 16 * (gs % 2)
    l16: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [1, 1], [1, 0])
    kr = gl.arange(0, 16, layout=gl.SliceLayout(1, l16))
    kc = gl.arange(0, D, layout=gl.SliceLayout(0, l16))
    kr = _perm4(kr)  # smem row r <- byte row perm(r): the scores' rows come out in the k order of the
    # value codes' unpacking (_graw4), so P^T feeds the value MMAs as it is
    _cp_async(k_s.index(slot), k_base + pg * s_klp + (r0 + kr)[:, None] * s_klr + kc[None, :], mask=ok)
    lv: gl.constexpr = gl.BlockedLayout([1, 16], [32, 1], [1, 1], [1, 0])
    vr = gl.arange(0, D, layout=gl.SliceLayout(1, lv))  # 4 j x D/4 channel bytes
    vm = gl.arange(0, 16, layout=gl.SliceLayout(0, lv))
    _cp_async(v_s.index(slot), v_base + gs * (D * 16) + vr[:, None] * 16 + vm[None, :], mask=ok)
    ls: gl.constexpr = gl.BlockedLayout([4], [32], [1], [0])
    sc = gl.arange(0, D, layout=ls)
    _cp_async(ks_s.index(slot), KSC + ks_base + pg * s_ksp + sc, mask=ok)
    _cp_async(kz_s.index(slot), KZR + ks_base + pg * s_ksp + sc, mask=ok)
    lt: gl.constexpr = gl.BlockedLayout([1, 2 * G], [16, 2], [1, 1], [1, 0])
    tm = gl.arange(0, 16, layout=gl.SliceLayout(1, lt))
    tc = gl.arange(0, 4 * G, layout=gl.SliceLayout(0, lt))
    t_off = (gs * 64 + 4 * _perm4(tm))[:, None] * G + tc[None, :]  # rows as the key rows
    _cp_async(vs_s.index(slot), vs_base + t_off, mask=ok)
    _cp_async(vz_s.index(slot), vz_base + t_off, mask=ok)
    if KBOOST:
        lh: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [1, 1], [1, 0])
        hr = gl.arange(0, 16, layout=gl.SliceLayout(1, lh))
        hc = gl.arange(0, 16, layout=gl.SliceLayout(0, lh))
        hr = _perm4(hr)
        _cp_async(kh_s.index(slot), kh_base + pg * s_khp + (r0 + hr)[:, None] * s_khr + hc[None, :], mask=ok)
        li: gl.constexpr = gl.BlockedLayout([4], [32], [1], [0])
        _cp_async(
            ki_s.index(slot), sidx + pg * s_kip + gl.arange(0, 16, layout=li), mask=ok
        )  # the page's map
    if VBOOST:
        gr = gl.arange(0, 64, layout=gl.SliceLayout(1, lv))  # 16 j + slot
        gsl = gr % 16
        if VGATHER:
            ch = gl.load(sidx + gsl).to(gl.int32)  # slot -> channel
            row = (gr // 16) * (D // 4) + ch // 4  # the channel's byte row in block j
            _cp_async(vl_s.index(slot), v_base + gs * (D * 16) + row[:, None] * 16 + vm[None, :], mask=ok)
        hrow = (gr // 16) * 4 + gsl // 4  # slot s: hi byte s // 4 of block j
        _cp_async(vh_s.index(slot), vh_base + gs * 256 + hrow[:, None] * 16 + vm[None, :], mask=ok)
    if MIXED:
        if ok & (64 * gs + 64 > nvq):  # (uniform)
            lw: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0])
            wr = gl.arange(0, 64, layout=gl.SliceLayout(1, lw))
            wc = gl.arange(0, D, layout=gl.SliceLayout(0, lw))
            wrow = 64 * gs + 4 * _perm4(wr % 16) + wr // 16 - nvq  # window row of the token
            wp = gl.multiple_of(vw_base + wrow * s_vwt, 16)  # (rows 16-byte aligned: see mixed_pages)
            _cp_async(vw_s.index(slot), wp[:, None] + wc[None, :], mask=(wrow >= 0)[:, None])
    _ac.commit_group()


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
    scales and zeros in registers (its codes add nothing) and its 16-bit value row from the window:
    a step with such tokens copies their window rows with the step's other bytes (``cp.async``, 16 KB
    a stage) and adds one ``(D, 16 tokens) x P^T`` MMA per value block (``ldmatrix`` of the transposed
    rows, ``P^T`` unweighted) into an accumulator of its own, channels in order, added to the partial at
    the end. The rest kernels then only take what follows the last key page. Not with boosted values
    without ``DUP``."""
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
        c_hi = (gl.arange(0, 8, layout=cols_l) >= 4)[None, :]  # DUP: the group-1 columns
    else:
        vh_base = v_base
    m_i = gl.full([8], float("-inf"), gl.float32, layout=cols_l)
    acc0 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc1 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc2 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    acc3 = gl.zeros([D // 4, 8], gl.float32, layout=mma)
    l_acc = gl.zeros([16, 8], gl.float32, layout=mma)
    z_acc = gl.zeros([16, 8], gl.float32, layout=mma)
    zero8 = gl.zeros([16, 8], gl.float32, layout=mma)
    U: gl.constexpr = 16777216.0
    w_dt: gl.constexpr = VW.dtype.element_ty
    vw_base = VW + b * s_vwb + h * s_vwh
    if MIXED:  # the 16-bit window values' own accumulator, channels in order (A tiles: (D, 16 tokens))
        la2: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        lb2: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        acc_w = gl.zeros([D, 8], gl.float32, layout=mma)
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
    if MIXED:  # [stage, 16 j + m, D]: the window rows of a step's tokens past the quantized values
        vw_s = gl.allocate_shared_memory(w_dt, [STAGES, 64, D], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    else:
        vw_s = v_s
    for d in gl.static_range(STAGES - 1):
        _issue_step(2 * i0 + d, 2 * i0 + d < 2 * i1, k_s, v_s, ks_s, kz_s, vs_s, vz_s, kh_s, ki_s, vl_s, vh_s,
                    vw_s, k_base, s_klp, s_klr, KSC, KZR, ks_base, s_ksp, v_base, vs_base, vz_base, kh_base, s_khp,
                    s_khr, vh_base, sidx, s_kip, vw_base, s_vwt, nvq, D, GS, KBOOST, VBOOST, STAGES, VGATHER,
                    MIXED)  # fmt: skip
    for pg in range(i0, i1):
        qf = gl.load(q_ptr, mask=qmask, other=0.0).to(gl.float32) * qk_scale
        if VGATHER:  # the boosted channels' plane masks (re-read per page, as below)
            vch = gl.load(sidx + vr + 0 * pg).to(gl.int32)
            lo_msk = ((3 << (2 * (vch % 4)))[:, None] + 0 * vm[None, :]).to(gl.uint8)
        for st in gl.static_range(2):  # 64 tokens: byte rows 16 st + m, planes j -> token 4(16 st + m) + j
            g = 2 * pg + st
            _ac.wait_group(STAGES - 2)  # step g landed (its group is the oldest outstanding)
            _warp_sync()  # ... for every lane; and every lane is done reading step g - 1's stage
            _issue_step(g + STAGES - 1, g + STAGES - 1 < 2 * i1, k_s, v_s, ks_s, kz_s, vs_s, vz_s, kh_s, ki_s,
                        vl_s, vh_s, vw_s, k_base, s_klp, s_klr, KSC, KZR, ks_base, s_ksp, v_base, vs_base, vz_base,
                        kh_base, s_khp, s_khr, vh_base, sidx, s_kip, vw_base, s_vwt, nvq, D, GS, KBOOST, VBOOST,
                        STAGES, VGATHER, MIXED)  # fmt: skip
            slot = g % STAGES
            if st == 0:
                sc = ks_s.index(slot).load(gl.SliceLayout(1, lb4)).to(gl.float32)
                zr = kz_s.index(slot).load(gl.SliceLayout(1, lb4)).to(gl.float32)
                qs0 = (qf * sc[:, None]).to(gl.float16)
                qs = _perm4_rows(qs0, D, lb4)  # k in _graw4's order
                bias = gl.convert_layout(gl.sum(qf * zr[:, None], axis=0), cols_l)
                if KBOOST:  # the boosted channels' rows of q s (x 4: high bits), slots in _graw4's order;
                    # the page's map came with the step's copy (was a global load per page; gathering
                    # the rows of qs0 in registers instead: +620 loop instructions of shuffles)
                    hch = _perm4_vec(ki_s.index(slot), 16, gl.SliceLayout(1, lb4)).to(gl.int32)
                    sch = gl.load(KSC + ks_base + pg * s_ksp + hch).to(gl.float32)
                    qfh = gl.load(qh_ptr + hch[:, None], mask=qmask, other=0.0).to(gl.float32)
                    qh = (qfh * sch[:, None] * (4.0 * qk_scale)).to(gl.float16)
            kb = k_s.index(slot).load(la4)  # (16, D) uint8
            vs_t = vs_s.index(slot).load(lrow)  # (16, 4 GS)
            vz_t = vz_s.index(slot).load(lrow)
            if MIXED:
                if 64 * g + 64 > nvq:  # (uniform) no codes past the quantized values: scales, zeros 0
                    tm = gl.arange(0, 16, layout=gl.SliceLayout(1, lrow))
                    tc = gl.arange(0, 4 * GS, layout=gl.SliceLayout(0, lrow))
                    tv = (64 * g + 4 * _perm4(tm))[:, None] + (tc // GS)[None, :] < nvq
                    vs_t = gl.where(tv, vs_t, 0.0)
                    vz_t = gl.where(tv, vz_t, 0.0)
            k0, k1, k2, k3 = _graw4(kb)  # k (channels) in _perm4 order, as qs
            s0 = mma_v2(k0, qs, zero8)
            s1 = mma_v2(k1, qs, zero8)
            s2 = mma_v2(k2, qs, zero8)
            s3 = mma_v2(k3, qs, zero8)
            if KBOOST:
                khb = kh_s.index(slot).load(la4)  # (16, 16): k (slots) in _perm4 order, as qh
                h0, h1, h2, h3 = _graw4(khb)
                s0 = mma_v2(h0, qh, s0)
                s1 = mma_v2(h1, qh, s1)
                s2 = mma_v2(h2, qh, s2)
                s3 = mma_v2(h3, qh, s3)
            s0 = s0 * U + bias[None, :]
            s1 = s1 * (U / 4) + bias[None, :]
            s2 = s2 * (U / 16) + bias[None, :]
            s3 = s3 * (U / 64) + bias[None, :]
            m_new = gl.maximum(m_i, gl.max(gl.maximum(gl.maximum(s0, s1), gl.maximum(s2, s3)), axis=0))
            if gl.max(m_new - m_i, axis=0) > 0:  # a head's maximum grew: rescale (else alpha = 1)
                alpha = gl.exp2(m_i - m_new)
                acc0 *= alpha[None, :]
                acc1 *= alpha[None, :]
                acc2 *= alpha[None, :]
                acc3 *= alpha[None, :]
                l_acc *= alpha[None, :]
                z_acc *= alpha[None, :]
                if MIXED:
                    acc_w *= alpha[None, :]
                if VBOOST:
                    if not DUP:
                        ob_lo *= alpha[None, :]
                    ob_hi *= alpha[None, :]
                    if not DUP:
                        z1_acc *= alpha[None, :]
                m_i = m_new
            for j in gl.static_range(4):
                if j == 0:
                    sj = s0
                elif j == 1:
                    sj = s1
                elif j == 2:
                    sj = s2
                else:
                    sj = s3
                pj = gl.exp2(sj - m_i[None, :])  # (16 tokens, 8 heads)
                vsj = _col(vs_t, j * GS, GS, rows_l)
                vzj = _col(vz_t, j * GS, GS, rows_l)
                l_acc += pj
                if DUP:  # columns 4-7: group 1 (a thread's two columns are on one side)
                    vsj2 = gl.where(c_hi, _col(vs_t, j * GS + 1, GS, rows_l)[:, None], vsj[:, None])
                    vzj2 = gl.where(c_hi, _col(vz_t, j * GS + 1, GS, rows_l)[:, None], vzj[:, None])
                else:
                    vsj2 = vsj[:, None]
                    vzj2 = vzj[:, None]
                z_acc += pj * vzj2
                pb = gl.convert_layout((pj * vsj2).to(gl.float16), lb4)  # B operand: (tokens, heads)
                va = v_s.index(slot).slice(j * (D // 4), D // 4).load(la4)  # (D/4 channel bytes, 16 tokens)
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
                        pt = gl.convert_layout(pj.to(w_dt), lb2)  # (unweighted)
                        wa = vw_s.index(slot).slice(16 * j, 16).permute([1, 0]).load(la2)  # (D, 16 tokens)
                        acc_w = mma_v2(wa, pt, acc_w)
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
    if MIXED:  # the window values' part, channels in order, added to the stores above
        _warp_sync()
        wch = gl.arange(0, D, layout=rows_l)
        w_pp = O_ACC + (o_base + og)[None, :] * D + wch[:, None]
        gl.store(w_pp, gl.load(w_pp, mask=msk, other=0.0) + acc_w, mask=msk)
    gl.store(O_M + o_base + og, m_i, mask=og < GQ)
    gl.store(O_L + o_base + og, l_i, mask=og < GQ)
