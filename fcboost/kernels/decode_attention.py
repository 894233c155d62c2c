"""Fused decode attention over the packed cache (flash-decoding: page tiles, the rest, a combine).

One new query token per row attends ``[16-bit sink | 2-bit key pages | 16-bit key buffer]`` /
``[16-bit sink | 2-bit values | 16-bit value window]`` plus the new token:

- page tiles, grid ``(B*H, NSPLIT)``: on CUDA (where :func:`gluon_unsupported` finds nothing
  against it) ``attention_page_gluon._page_kernel_gluon``, one-warp programs with explicit MMA
  fragment layouts and a ``cp.async`` pipeline (its module docstring); else the Triton
  ``_page_kernel`` below. Both write the same partials.
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
- the rest, grid ``(B*H, NREST)`` (:func:`n_rest`: one tile per program at small batch, one program
  per (row, head) at large batch; program j takes tiles j, j+NREST, ...), on CUDA on a side stream
  beside the page kernel, launched after it (so it fills the SMs the page kernel's last wave leaves
  instead of delaying its start). Default ``_rest_split_kernel``: the rest is an unordered token set, so it
  runs two branch-free loops: *16-bit tiles* (the sink, the key buffer / value window past both
  quantized ranges and the new token; each row's key/value pointer picked per token, one vector load
  each) and *quantized-tail tiles* (tokens past the last page tile with a quantized key or value,
  inside one key page, rows permuted so the interleaved value bytes load as vectors; every load
  issued up front; boosted keys as a K = 16 dot of ``(4 q scale)[idx]`` against the high bits,
  boosted values as a slot accumulator mapped onto the channels once). ``_rest={"impl": "tiles"}``:
  the session-5 ``_rest_kernel`` (``BT``-token tiles each reading the sources it meets). Keys and
  values are rounded to the model dtype as the reference does (the split kernel adds boosted keys'
  high bits in the logits instead); without page tiles (head_dim < 64 or page size not a multiple of
  ``BN``) the quantized tail is every quantized token. ``_rest={"parts": 2}``: the two loops as two
  launches side by side, the 16-bit one optionally in Gluon (``attention_rest_gluon``).
- mixed pages (the Gluon page kernel's ``MIXED``, by default at ``B x H >= 256``): the last key pages,
  whose values are still partly in the 16-bit window, as a launch of their own, one program per
  (row, head) on a third side stream, after the page kernel and beside the rest; the rest's quantized
  tail then starts at the end of the key pages (usually empty).
- ``_combine_kernel``, grid ``(B*H, G)``: merges the ``NSPLIT + NREST`` partials ``(acc, m, l)`` with
  log-sum-exp.

In the Triton kernels the G query heads of a KV head are the M dimension (padded to 16) of every dot
(the Gluon kernel makes them the N = 8 columns); logits never leave
registers. On the GPU a 2-bit code plane becomes fp16 in three instructions per four codes (``and``
plus two ``prmt``): each masked byte becomes the mantissa of a *subnormal* half, exact, with no
offset for the tensor cores' fp32 accumulation to lose (a ``1024 + code`` variant lost 7x in
precision on the H200); the interpreter uses plain integer codes. Supported: 2-bit keys/values
with a 4-bit boost, head_dim 32-256, ``P % 16 == 0``. Value codes are stored token-interleaved
(:mod:`fcboost.quant.layout`). Measured figures: ``benchmarks/results/bench_attention_s10b_h200.json``.
"""

from __future__ import annotations

import functools

import torch
import triton

from fcboost.kernels.attention_page import _page_kernel
from fcboost.kernels.attention_rest import _combine_kernel, _rest_kernel, _rest_split_kernel
from fcboost.kernels.state import PackedKVState

LOG2E = 1.4426950408889634


_SIDE: dict = {}


def _side_stream(device: torch.device, priority: int = 0, slot: int = 0) -> torch.cuda.Stream:
    """One side stream per device, priority and slot (created once, reused by graph replays): the
    rest kernel's (priority 0; slot 1: the second rest launch with ``_rest={"parts": 2}``; slot 2: the
    Gluon page kernel's mixed pages with ``_gluon={"mixed": True}``) and, with
    ``_launch={"priority": p}``, the page kernel's."""
    idx = torch.device(device).index
    key = (idx if idx is not None else torch.cuda.current_device(), priority, slot)
    if key not in _SIDE:
        _SIDE[key] = torch.cuda.Stream(device=device, priority=priority)
    return _SIDE[key]


def split_count(B: int, H: int, max_tiles: int, n_sm: int, waves: float = 4.0, per_sm: int = 4) -> int:
    """Page-tile programs per (row, KV head), >= 4 tiles each.

    Small batches: about ``waves`` programs per SM. Once one program per (row, head) about fills
    the GPU, the split in 1..8 with the least idle tail: ``ceil(B*H*s / slots) * ceil(tiles / s)``
    tile-times, ``slots = per_sm * n_sm`` programs resident at once (wave quantization: 1096
    programs of 256 tiles on 264 slots run 5 waves for 4.15 waves of work; split 4 runs 17 of 64
    tiles, 15% less)."""
    if max_tiles == 0:
        return 0
    cap = max(1, -(-max_tiles // 4))
    want = round(waves * n_sm / (B * H))
    if want >= 2:
        return min(want, cap)
    slots = max(1, per_sm * n_sm)

    def cost(s: int) -> tuple:
        return (-(-B * H * s // slots)) * (-(-max_tiles // s)), s

    return min(range(1, min(8, cap) + 1), key=cost)


def n_rest(
    cfg, BN: int, BT: int, paged: bool, n_sm: int, B: int, H: int, per_sm: float = 2.0, BTQ: int | None = None
) -> int:
    """Rest programs per (row, KV head). With page tiles: about ``per_sm`` per SM in all, at most one
    per rest tile; each strides over the rest tiles, so a large batch pays one partial per (row, head)
    instead of one per tile (H200, 64 x 4K kivi: 257 -> 197 us). ``BTQ`` None: the tile kernel's
    tiles (``BT`` tokens: sink tiles + what can follow the last page tile: < BN tokens, the key
    buffer or value window (<= max(P, W) + 1) and the new token); else the split kernel's
    (``BT``-token 16-bit tiles: sink, buffer past both quantized ranges, new token; ``BTQ``-token
    tiles of the quantized tail, < BN + max(P, W) tokens). Without page tiles, enough programs to
    fill the GPU."""
    if paged:
        pw = max(cfg.page_size, cfg.window)
        if BTQ is None:
            tiles = -(-cfg.n_sink // BT) + -(-(BN + pw + 1) // BT)
        else:
            tiles = -(-(cfg.n_sink + pw + 2) // BT) + -(-(BN + pw) // BTQ)
        return max(1, min(tiles, round(per_sm * n_sm / (B * H))))
    return max(1, min(64, round(2 * per_sm * n_sm / (B * H))))


def n_rest_parts(
    cfg, BN: int, BT: int, BTQ: int, n_sm: int, B: int, H: int, per_sm: float, all16: bool = False
) -> tuple[int, int]:
    """Programs per (row, KV head) of the split rest kernel's two parts launched apart: the 16-bit
    tiles (at most ``ceil((S + max(P, W) + 2) / BT)``) and the quantized tail (at most
    ``ceil((BN + max(P, W)) / BTQ)``), each about ``per_sm`` per SM in all, at most one per tile;
    ``all16``: one program per 16-bit tile (the one-warp Gluon programs)."""
    pw = max(cfg.page_size, cfg.window)
    fill = round(per_sm * n_sm / (B * H))
    t16 = -(-(cfg.n_sink + pw + 2) // BT)
    return max(1, t16 if all16 else min(t16, fill)), max(1, min(-(-(BN + pw) // BTQ), fill))


def mixed_pages(
    B: int,
    H: int,
    vboost: bool,
    dup: bool,
    window_dtype: torch.dtype,
    knob: bool | None = None,
    window_aligned: bool = True,
) -> bool:
    """Whether the Gluon page kernel takes the mixed pages (the last key pages, values partly still in
    the 16-bit window) in a launch of its own, instead of the rest's quantized tail (given that the
    Gluon page kernel runs with page tiles and the split rest kernel). ``knob`` (``_gluon["mixed"]``)
    None: at B x H >= 256 (H200, mixed2_s8_h200.json: 64 x 4K static + values 125.6 -> 107.5 us, kivi
    93.1 -> 84.6, kitty 102.2 -> 90.5; 32 x 8K 1-3% faster; at B x H <= 64 its one program per (row,
    head), launched after the page kernel, was 7-11 us slower, and beside it 16-32 us slower at 8 x 32K,
    probe_s9b_h200.json). Never with boosted values without
    ``dup`` (their low bits are not in the plane accumulators), a window that is not fp16/bf16 (the
    operands of its window MMA) or whose rows are not 16-byte aligned and contiguous
    (``window_aligned``: its rows are copied with 16-byte ``cp.async``)."""
    want = B * H >= 256 if knob is None else bool(knob)
    return want and (dup or not vboost) and window_dtype in (torch.float16, torch.bfloat16) and window_aligned


@functools.lru_cache(maxsize=4096)  # (called per layer and step: the search is O(n_pages))
def gluon_split_waves(B: int, H: int, n_pages: int, slots: int) -> int:
    """Gluon page programs per (row, KV head) that fill whole waves: the split whose programs
    (``ceil(n_pages / ceil(n_pages / s))`` non-empty per row) run in the fewest page-times,
    ``ceil(programs / slots) * (ceil(n_pages / s) + 1/2)`` (``slots`` programs resident at once; half
    a page for a program's prologue and epilogue); ties go to fewer programs. Pages per program >= 2."""
    if slots < 1:
        raise ValueError(f"slots={slots}: expected >= 1 resident programs")
    if n_pages == 0:
        return 0

    def cost(s: int) -> tuple:
        per = -(-n_pages // s)
        return -(-B * H * -(-n_pages // per) // slots) * (per + 0.5), s

    return min(range(1, max(1, n_pages // 2) + 1), key=cost)


REST_KEYS = ("impl", "bt", "btq", "stages", "per_sm", "maxnreg", "parts", "impl16")


def rest_options(opts: dict | None, page_size: int) -> dict:
    """The rest kernel's knobs (``decode_attention(_rest=...)``), checked, defaults filled in.

    ``impl``: ``"split"`` (default; :func:`~fcboost.kernels.attention_rest._rest_split_kernel`:
    16-bit tokens and the quantized tail in two branch-free loops) or ``"tiles"`` (the session-5
    ``_rest_kernel``: token-range tiles, each reading the sources it meets). ``bt``: tokens per tile
    (``"tiles"``: 16, 32 or 64 dividing the page size, default 32 when it divides, else 16;
    ``"split"``: its 16-bit tiles, 16-128, default 64). ``btq``: the split kernel's quantized-tail
    tiles (16, 32 or 64 dividing the page size; default 32 when it divides, else 16). ``stages``: the
    split loops' software pipelining (``tl.range`` num_stages; 1, the default: none). ``per_sm``:
    rest programs per SM that :func:`n_rest` aims at (default 2). ``maxnreg``: register cap (None:
    none). ``parts``: 1 (default) or 2 (``"split"`` with page tiles: the 16-bit tiles and the
    quantized tail in two launches side by side, each with its own programs, see
    :func:`n_rest_parts`). ``impl16``: with two parts, the 16-bit part's kernel: ``"triton"`` (default)
    or ``"gluon"`` (:mod:`fcboost.kernels.attention_rest_gluon`, ``bt`` 16, 32 or 64; where it cannot
    serve the call, see :func:`rest16_gluon_unsupported`, the Triton one runs)."""
    o = dict(opts or {})
    bad = sorted(set(o) - set(REST_KEYS))
    if bad:
        raise ValueError(f"_rest: unknown keys {bad}; expected some of {list(REST_KEYS)}")
    fit = 32 if page_size % 32 == 0 else 16
    impl = o.get("impl", "split")
    o = {"impl": impl, "bt": 64 if impl == "split" else fit, "btq": fit, "stages": 1, "per_sm": 2.0,
         "maxnreg": None, "parts": 1, "impl16": "triton", **o}  # fmt: skip
    if impl not in ("split", "tiles"):
        raise ValueError(f"_rest impl={impl!r}: expected 'split' or 'tiles'")
    if impl == "tiles" and (o["bt"] not in (16, 32, 64) or page_size % o["bt"]):
        raise ValueError(
            f"_rest bt={o['bt']}: the tile kernel needs 16, 32 or 64 dividing page_size={page_size}"
        )
    if impl == "split" and o["bt"] not in (16, 32, 64, 128):
        raise ValueError(f"_rest bt={o['bt']}: expected 16, 32, 64 or 128")
    if o["btq"] not in (16, 32, 64) or page_size % o["btq"]:
        raise ValueError(f"_rest btq={o['btq']}: expected 16, 32 or 64 dividing page_size={page_size}")
    if o["stages"] not in (1, 2, 3, 4):
        raise ValueError(f"_rest stages={o['stages']}: expected 1..4")
    if not o["per_sm"] > 0:
        raise ValueError(f"_rest per_sm={o['per_sm']}: expected > 0")
    if o["parts"] not in (1, 2) or (o["parts"] == 2 and impl != "split"):
        raise ValueError(f"_rest parts={o['parts']}: expected 1, or 2 with impl 'split'")
    if o["impl16"] not in ("triton", "gluon") or (
        o["impl16"] == "gluon" and (o["parts"] != 2 or o["bt"] > 64)
    ):
        raise ValueError(
            f"_rest impl16={o['impl16']!r}: expected 'triton', or 'gluon' with parts 2 and bt <= 64"
        )
    if o["maxnreg"] is not None and o["maxnreg"] not in range(24, 256):
        raise ValueError(f"_rest maxnreg={o['maxnreg']}: expected None or 24..255")
    return o


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
    num_stages: int = 3,
    use_asm: bool | None = None,
    waves: float = 4.0,
    maxnreg: int | None = None,
    overlap: bool = True,
    rest_programs: int | None = None,
    rest_warps: int | None = None,
    page_impl: str = "auto",
    _gluon: dict | None = None,
    _rest: dict | None = None,
    _launch: dict | None = None,
) -> torch.Tensor:
    """Attention of one new query token per row over the packed state plus (optionally) the new token.

    q: (B, Hq, D) fp16/bf16. k_new/v_new: (B, H, D) the new token's key/value, attended in 16 bits
    after the state's ``n_real`` tokens (None: the state already holds it). Returns (B, Hq, D) in
    q's dtype. ``max_tiles`` (host int) bounds the 64-token page tiles per row, for the split count
    only (default: read from ``st``, a device sync). ``tile_rows`` R: page tiles of 4R tokens (16,
    32 or 64; default 32 when the page size allows, else 16). ``use_asm``: the inline-PTX code
    unpacking (default: on CUDA devices). ``waves``: page programs per SM the split count aims at.
    ``maxnreg``: register cap of the page kernel (more programs per SM; default 128 without boosted
    values, none with them, 0 for none). ``overlap``: on CUDA, run the rest kernel on a side stream
    beside the page kernel. ``rest_programs``: rest programs per (row, KV head), each striding over
    the rest tiles (default: :func:`n_rest`); ``rest_warps``: their warps (default 4; 2, with about 8
    programs per SM, at B x H >= 256 without boosted values). Defaults
    come from the H200 sweeps in ``benchmarks/results/`` (``tune_decode_attention_h200.json``,
    ``tune_rest_h200.json``). ``page_impl``: which kernel runs the page tiles: ``"gluon"``
    (:mod:`fcboost.kernels.attention_page_gluon`: one-warp programs with explicit MMA fragment
    layouts and a cp.async pipeline; 2-bit codes, page size 128, head_dim 128, up to 8 query heads per
    KV head, no boost or 16 boosted channels; CUDA, sm_80+), ``"triton"`` (every configuration; the
    interpreter too) or ``"auto"`` (default: Gluon where it serves the call, see
    :func:`gluon_unsupported`). ``_gluon``: its experiment knobs, ``stages`` (64-token steps in
    flight, default 2; 3 was 1-15% slower on the H200), ``maxnreg`` (default 168; with boosted
    values none; 0: none), ``dup`` (boosted values with GQA <= 4: the heads repeated in the padded
    columns, default True), ``mixed`` (the page kernel also takes the pages whose values are not all
    quantized yet, their 16-bit values from the window, in a launch of their own; the rest keeps what
    follows the last key page; default: at B x H >= 256; not with boosted values without ``dup``),
    ``split`` (``"waves"``, the default: :func:`gluon_split_waves` over
    ``resident`` programs per SM, default 12, with boosted values 8; ``"sm32"``: about 32 programs
    per SM, the session-6 rule).
    ``_rest``: the rest kernel's experiment knobs (:func:`rest_options`). ``_launch``: how the page
    and rest kernels share the GPU with ``overlap``: ``order`` ``"page"`` (default: the page kernel is
    launched first, the rest fills the SMs its last wave leaves) or ``"rest"`` (the rest first, as
    before session 7), ``priority`` (0: none; < 0: the page kernel on a side stream of that CUDA
    priority); ``combine_warps``: the combine programs' warps (default: 1 for at most 16 partials per
    program, else 4; one program per row and KV head over all its query heads was slower at every
    shape, up to 2.5x at batch 1: ``combine_s9_h200.json``); ``mixed``: the mixed pages' launch
    ``"after"`` the page kernel (default) or ``"beside"`` it.
    """
    if page_impl not in ("auto", "triton", "gluon"):
        raise ValueError(f"page_impl={page_impl!r}: expected 'auto', 'triton' or 'gluon'")
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
    if P % 16:
        raise ValueError(f"page_size={P} must be a multiple of 16 for the fused kernel")
    ro = rest_options(_rest, P)
    if (
        rest_warps is None
        and ro["impl"] == "split"
        and st.v_hi is None
        and B * H >= 256
        and "per_sm" not in (_rest or {})
    ):
        # large batches: 2-warp rest programs, about 8 per SM (H200, gluon_rest_s7_h200.json: kivi
        # 64 x 4K 104.2 -> 93.5 us, 32 x 8K 84.4 -> 80.4; 1-4% slower at B x H = 64; boosted values
        # 10% slower at 64 x 4K, so not with them)
        rest_warps, ro["per_sm"] = 2, 8.0
    paged = P % BN == 0 and D >= 64  # dots need R >= 16 tokens and D/4 >= 16 channels
    n_sm = _sm_count(q.device)
    if max_tiles is None:
        max_tiles = int((torch.minimum(st.n_pages * P, st.n_vq) // 64).max()) if paged else 0
    n_tiles = max_tiles * 64 // BN if paged else 0
    kboost = st.k_hi is not None
    vboost = st.v_hi is not None
    gk = dict(_gluon or {})
    if set(gk) - {"stages", "maxnreg", "dup", "split", "resident", "mixed"}:
        raise ValueError(
            f"_gluon={sorted(gk)}: only 'stages' / 'maxnreg' / 'dup' / 'split' / 'resident' / 'mixed'"
        )
    if gk.get("split", "sm32") not in ("sm32", "waves"):
        raise ValueError(f"_gluon split={gk['split']!r}: expected 'sm32' or 'waves'")
    if not isinstance(gk.get("resident", 1), int) or gk.get("resident", 1) < 1:
        raise ValueError(f"_gluon resident={gk['resident']!r}: expected an int >= 1 (programs per SM)")
    why_not = gluon_unsupported(q, st, tile_rows)
    if page_impl == "gluon" and why_not:
        raise ValueError(f"page_impl='gluon' cannot serve this call: {why_not}")
    gluon = page_impl == "gluon" or (page_impl == "auto" and not why_not)
    if gluon and gk.get("stages", 2) < 2:
        raise ValueError(f"_gluon stages={gk['stages']}: expected >= 2")
    if maxnreg is None:
        maxnreg = 0 if vboost else 128
    per_sm = max(1, 65536 // (32 * num_warps * (maxnreg or 255)))  # register-bound residency
    if n_splits is not None:
        ns = n_splits
    elif gluon and gk.get("split", "waves") == "waves":
        # whole waves of resident programs: 168 registers, 12 per SM; boosted values (uncapped, 207-211
        # registers: 9 by the register file) run best counted as 8 (the rest kernel's programs share
        # the SMs). H200 against "sm32" (gluon_rest_s7_h200.json): kivi 8 x 32K 71.1 -> 66.0 us,
        # static + values 97.1 -> 91.6, 8 x 128K 286.2 -> 275.1 (counted as 9: 99.3 / 295.5)
        ns = gluon_split_waves(B, H, n_tiles, gk.get("resident", 8 if vboost else 12) * n_sm)
    elif gluon:  # one-warp programs: about 32 per SM, >= 2 page tiles each (H200 sweep in gluon_probe)
        ns = min(max(1, round(32 * n_sm / (B * H))), max(1, n_tiles // 2)) if n_tiles else 0
    else:
        ns = split_count(B, H, n_tiles, n_sm, waves, per_sm)
    ns = ns if paged else 0
    split = ro["impl"] == "split"
    two = ro["parts"] == 2 and paged
    g16 = two and ro["impl16"] == "gluon" and not rest16_gluon_unsupported(q, st, kn, vn)
    if two:  # (rest_programs: per part)
        nr16, nrq = (
            n_rest_parts(c, BN, ro["bt"], ro["btq"], n_sm, B, H, ro["per_sm"], g16)
            if rest_programs is None
            else (rest_programs, rest_programs)
        )
        nr = nr16 + nrq
        rest_slots = {1: (ns, nr16), 2: (ns + nr16, nrq)}  # part -> (first slot, programs per row)
    elif rest_programs is None:
        nr = n_rest(c, BN, ro["bt"], paged, n_sm, B, H, ro["per_sm"], ro["btq"] if split else None)
    else:
        nr = rest_programs
    if nr < 1:
        raise ValueError(f"rest_programs={rest_programs}: expected >= 1")
    if not two:
        rest_slots = {0: (ns, nr)}
    dup = vboost and GQ <= 4 and gk.get("dup", True)
    mixed = (
        gluon
        and ns > 0
        and split
        and mixed_pages(B, H, vboost, dup, st.v_win.dtype, gk.get("mixed"), _rows_aligned(st.v_win))
    )
    nslot = ns + nr + int(mixed)  # (mixed: one slot per (row, head) for the mixed pages' launch)
    nb = st.n_boost
    NBP = max(16, triton.next_power_of_2(max(nb, 1)))
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
    vhs = st.v_hi.stride()[:4] if vboost else (0, 0, 0, 0)
    vidx = st.boost_idx.contiguous() if vboost else st.v_lo
    asm = (q.device.type == "cuda") if use_asm is None else use_asm
    BM = max(16, triton.next_power_of_2(GQ))
    packed = (
        st.k_lo, *st.k_lo.stride()[:4],
        khi, *khs,
        kidx, *kis,
        st.k_scale, st.k_zero, *st.k_scale.stride()[:3],
        st.v_lo, *st.v_lo.stride()[:4],
        vhi, *vhs,
        vidx,
        st.v_scale, st.v_zero, *st.v_scale.stride()[:3],
    )  # fmt: skip
    side = _side_stream(q.device) if (overlap and ns and q.device.type == "cuda") else None
    lo = {"order": "page", "priority": 0, "combine_warps": None, "mixed": "after", **(_launch or {})}
    if (
        set(lo) - {"order", "priority", "combine_warps", "mixed"}
        or lo["order"] not in ("page", "rest")
        or lo["priority"] > 0
        or lo["combine_warps"] not in (None, 1, 2, 4, 8)
        or lo["mixed"] not in ("after", "beside")
    ):
        raise ValueError(
            f"_launch={_launch}: expected order 'page'/'rest', priority <= 0, combine_warps 1/2/4/8, "
            "mixed 'after'/'beside'"
        )

    def launch_rest(part: int = 0):
        """The rest kernel; ``part`` 1 / 2: the 16-bit tiles / the quantized tail alone."""
        first, n_prog = rest_slots[part]
        rows16 = (  # the 16-bit rows' sources
            q, q.stride(0), q.stride(1),
            st.sink_k, st.sink_v, *st.sink_k.stride()[:3],
            st.k_buf, *st.k_buf.stride()[:3],
            st.v_win, *st.v_win.stride()[:3],
        )  # fmt: skip
        out_args = (
            kn, vn, *nstr,
            st.n_real, st.n_pages, st.n_vq,
            o_acc, o_m, o_l,
            scaling * LOG2E, H, first, n_prog, nslot,
        )  # fmt: skip
        if part == 1 and g16:
            from fcboost.kernels.attention_rest_gluon import _rest16_kernel_gluon

            _rest16_kernel_gluon[(B * H, n_prog)](
                *rows16, *out_args, GQ=GQ, D=D, S=S, P=P, BT=ro["bt"], HAS_NEW=has_new, num_warps=1
            )
            return
        common = (*rows16, *packed, *out_args)
        meta = dict(GQ=GQ, BM=BM, D=D, S=S, P=P, BN=BN, NB=nb, NBP=NBP, KBOOST=kboost, VBOOST=vboost,
                    PAGED=paged, HAS_NEW=has_new, KDYN=st.k_idx is not None, num_warps=rest_warps or 4,
                    **({"maxnreg": ro["maxnreg"]} if ro["maxnreg"] else {}))  # fmt: skip
        if split:
            _rest_split_kernel[(B * H, n_prog)](
                *common, BTF=ro["bt"], BTQ=ro["btq"], NBV=max(32, NBP), STAGES=ro["stages"], PART=part,
                ALIGNED=_rows_aligned(st.sink_k, st.sink_v, st.k_buf, st.v_win, kn, vn)
                and all(x % 16 == 0 for x in (*st.v_lo.stride()[2:4], *vhs[2:4])),
                num_stages=ro["stages"], MIXED=mixed, **meta,
            )  # fmt: skip
        else:
            _rest_kernel[(B * H, nr)](*common, BT=ro["bt"], num_stages=1, **meta)

    def launch_page(mixed_part: bool = False):
        """The page kernel; ``mixed_part``: the Gluon kernel's launch over the mixed pages (``mixed``:
        one program per (row, head), slot ``ns + nr``, uncapped registers)."""
        if ns and gluon:
            from fcboost.kernels.attention_page_gluon import _page_kernel_gluon

            # H200: boosted values run best uncapped (1-2% faster than 168 at every shape since the
            # session-6 kernel, gluon_regs_s6_h200.json); the rest with the 168-register cap
            reg = 0 if mixed_part else gk.get("maxnreg", 0 if vboost else 168)
            n_prog, slot0 = (1, ns + nr) if mixed_part else (ns, 0)
            _page_kernel_gluon[(B * H, n_prog)](
                q, q.stride(0), q.stride(1),
                st.k_lo, *st.k_lo.stride()[:4],
                st.k_scale, st.k_zero, *st.k_scale.stride()[:3],
                st.v_lo, *st.v_lo.stride()[:2],
                st.v_scale, st.v_zero, *st.v_scale.stride()[:2],
                khi, *khs,
                kidx, *kis,
                vhi, *vhi.stride()[:2],
                st.n_pages, st.n_vq,
                o_acc, o_m, o_l,
                scaling * LOG2E, H, n_prog, nslot, slot0,
                st.v_win, *st.v_win.stride()[:3],
                GQ=GQ, D=D, KBOOST=kboost, VBOOST=vboost, STAGES=gk.get("stages", 2), DUP=dup,
                MIXED=mixed_part, num_warps=1,
                **({"maxnreg": reg} if reg else {}),
            )  # fmt: skip
        elif ns:
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

    cur = torch.cuda.current_stream(q.device) if q.device.type == "cuda" else None
    if side is None:
        for part in (1, 2) if two else (0,):
            launch_rest(part)
        launch_page()
        if mixed:
            launch_page(True)
    else:  # the rest runs beside the page kernel (a graph capture records the forks and joins); the
        # outputs are freed only after the joins below, so no record_stream is needed
        side.wait_stream(cur)  # the rest depends on what came before the call, not on the page kernel
        pst = _side_stream(q.device, lo["priority"]) if lo["priority"] else cur
        if pst is not cur:
            pst.wait_stream(cur)
        side2 = _side_stream(q.device, 0, 1) if two else None
        if side2 is not None:
            side2.wait_stream(cur)
        side3 = _side_stream(q.device, 0, 2) if mixed else None
        if side3 is not None and lo["mixed"] == "beside":
            side3.wait_stream(cur)  # (before the page kernel is launched on cur)
        for part in ("page", "rest") if lo["order"] == "page" else ("rest", "page"):
            if part == "rest":
                with torch.cuda.stream(side):
                    launch_rest(1 if two else 0)
                if side2 is not None:  # the quantized tail beside the 16-bit tiles
                    with torch.cuda.stream(side2):
                        launch_rest(2)
            else:
                with torch.cuda.stream(pst):
                    launch_page()
        if side3 is not None:  # the mixed pages: after the page kernel (pst), beside the rest. H200,
            # probe_s9b_h200.json, against beside both (mixed="beside"): static + values 64 x 4K
            # 109.2 -> 102.3 us, 32 x 8K 102.8 -> 96.0, kivi 90.6 -> 78.1 / 89.0 -> 78.3 (their
            # 229-register programs slow the whole-wave page launch they would share the SMs with)
            if lo["mixed"] == "after":
                side3.wait_stream(pst)
            with torch.cuda.stream(side3):
                launch_page(True)
        if pst is not cur:
            cur.wait_stream(pst)
    if side is not None:
        torch.cuda.current_stream(q.device).wait_stream(side)
        if two:
            torch.cuda.current_stream(q.device).wait_stream(side2)
        if mixed:
            torch.cuda.current_stream(q.device).wait_stream(side3)
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    nsp = max(2, triton.next_power_of_2(nslot))
    if lo["combine_warps"] is None:
        # one warp while a program's partials are at most 16 x D (H200, probe_s9a_h200.json, one warp
        # against four: 64 x 4K 106.6 -> 102.5 us static + values, 84.8 -> 79.8 kivi; 32 x 8K 2-3%
        # faster); more slots (batch 1: about 130) spill in one or two warps (1 x 32K 28 -> 65-71 us)
        lo["combine_warps"] = 1 if nsp <= 16 else 4
    _combine_kernel[(B * H, GQ)](
        o_acc, o_m, o_l, out, nslot, GQ=GQ, NSP=nsp, D=D, num_warps=lo["combine_warps"]
    )  # fmt: skip
    return out


def rest16_gluon_unsupported(
    q: torch.Tensor, st: PackedKVState, kn: torch.Tensor, vn: torch.Tensor
) -> str | None:
    """Why the Gluon 16-bit rest kernel cannot serve a call (None: it can): CUDA sm_80+, Triton's
    Gluon, fp16/bf16 everywhere, at most 8 query heads per KV head, head_dim 64 or 128 and 16-byte
    aligned rows (its copies move 16 bytes per lane)."""
    if q.device.type != "cuda":
        return f"device {q.device.type}: the Gluon kernel runs on CUDA only"
    try:
        from triton.experimental import gluon  # noqa: F401
    except ImportError:
        return "this Triton has no Gluon"
    if torch.cuda.get_device_capability(q.device) < (8, 0):
        return "needs sm_80 or newer (mma.sync, cp.async)"
    if q.dtype not in (torch.float16, torch.bfloat16) or st.sink_k.dtype != q.dtype or kn.dtype != q.dtype:
        return f"dtypes q {q.dtype}, cache {st.sink_k.dtype}, new {kn.dtype}: expected one of fp16/bf16"
    GQ, D = q.shape[1] // st.sink_k.shape[1], q.shape[2]
    if GQ > 8 or D not in (64, 128):
        return f"GQA group {GQ}, head_dim {D}: expected <= 8 and 64 or 128"
    if not _rows_aligned(st.sink_k, st.sink_v, st.k_buf, st.v_win, kn, vn):
        return "16-bit rows not 16-byte aligned"
    return None


def gluon_unsupported(q: torch.Tensor, st: PackedKVState, tile_rows: int | None = None) -> str | None:
    """Why the Gluon page kernel cannot serve this call (None: it can)."""
    c, (_, H, _, D) = st.cfg, st.sink_k.shape
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) < (8, 0):
        return f"needs a CUDA device of compute capability 8.0+ (cp.async, mma.sync); got {q.device}"
    try:
        from triton.experimental import gluon  # noqa: F401
    except ImportError:
        return f"needs Triton with Gluon (3.5+); got triton {triton.__version__}"
    if c.page_size != 128 or D != 128 or tile_rows not in (None, 32):
        return f"serves page size 128, head_dim 128 and 32-row tiles; got {c.page_size}, {D}, {tile_rows}"
    if q.shape[1] // H > 8:
        return f"serves up to 8 query heads per KV head; got {q.shape[1] // H}"
    if st.k_hi is not None and st.n_boost != 16:
        return f"serves 0 or 16 boosted channels; got {st.n_boost}"
    if st.v_hi is not None and st.v_hi.shape[4] != 4:
        return f"boosted values need 4 high-bit bytes per token; got {st.v_hi.shape[4]}"
    G = st.v_scale.shape[-1]
    fp16_strides = [*st.v_scale.stride()[:2], *st.k_scale.stride()[:3]]
    byte_strides = [*st.k_lo.stride()[:4], *st.v_lo.stride()[:2]]
    if st.k_hi is not None:
        byte_strides += st.k_hi.stride()[:4]
    if st.v_hi is not None:
        byte_strides += st.v_hi.stride()[:2]
    if st.k_hi is not None:  # the slot -> channel map rides each step's copy: 16-element strides
        idx = st.k_idx if st.k_idx is not None else st.boost_idx
        byte_strides += [x for x in idx.stride()[:-1]]  # (elements: Triton specializes multiples of 16)
        if idx.dtype != torch.int16 or idx.stride(-1) != 1:
            return f"needs the boosted-channel map as contiguous int16 rows; got {idx.dtype}, strides {idx.stride()}"
    tensors = [st.k_lo, st.v_lo, st.k_scale, st.k_zero, st.v_scale, st.v_zero, st.k_hi, st.v_hi]
    if st.k_hi is not None:
        tensors.append(st.k_idx if st.k_idx is not None else st.boost_idx)
    if (
        st.v_scale.stride()[2:] != (G, 1)
        or st.k_scale.stride(-1) != 1
        or st.k_lo.stride(-1) != 1
        or any(x % 8 for x in fp16_strides)
        or any(x % 16 for x in byte_strides)
        or any(t is not None and t.data_ptr() % 16 for t in tensors)
    ):
        return "needs 16-byte aligned storage with contiguous rows (cp.async)"
    return None


def _rows_aligned(*ts: torch.Tensor) -> bool:
    """Every row (last dim) of these 16-bit tensors starts 16-byte aligned: pointers and all strides
    but the last are multiples of 16 bytes (the split rest kernel's vector-load hint)."""
    return all(
        t.data_ptr() % 16 == 0 and all(x * t.element_size() % 16 == 0 for x in t.stride()[:-1]) for t in ts
    )


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
