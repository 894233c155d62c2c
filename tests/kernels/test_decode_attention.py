"""Fused decode attention vs the PyTorch reference (dequantize + fp32 softmax attention).

Tolerances (relative L2 over the batch): the kernel folds scales into fp16 operands and rounds
its output to the model dtype, so fp16 lands near 2e-4 and bf16 near 1.7e-3 (bf16's output
rounding); we require 1e-3 and 6e-3, the worst row within 2x. On the CPU the interpreter runs the plain code-unpacking path (it has no inline asm); the GPU run
(`-m gpu`) checks the inline-PTX path too.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from attention_checks import check_attention, make_cfg

from fcboost.kernels.decode_attention import (
    decode_attention,
    decode_attention_reference,
    gluon_split_waves,
    split_count,
)
from fcboost.kernels.state import random_state
from fcboost.quant.config import KVQuantConfig

PAPER = dict(n_sink=32, page_size=128, window=128)
_cfg = make_cfg
_check = partial(check_attention, decode_attention)


@pytest.mark.parametrize(
    "method,dtype,D,G,R",
    [
        ("kivi", torch.float16, 64, 4, 16),
        ("kivi", torch.bfloat16, 128, 1, 32),
        ("kitty", torch.bfloat16, 64, 3, 16),
        ("kitty", torch.float16, 128, 8, 32),
        ("static", torch.float16, 64, 8, 32),
        ("static", torch.bfloat16, 128, 4, 16),
        ("static", torch.bfloat16, 64, 4, 64),
        ("static_keys", torch.bfloat16, 64, 1, 16),
    ],
)
def test_matches_reference(method, dtype, D, G, R, device):
    """Ragged rows over every region (sink only, sink+buffer, pages+window, several page tiles)."""
    _check(
        _cfg(method, **PAPER),
        [1, 33, 161, 289, 700],
        H=2 if G == 1 else 1,
        G=G,
        D=D,
        dtype=dtype,
        device=device,
        n_splits=2,
        tile_rows=R,
    )


@pytest.mark.parametrize("n_boost", [2, 6])
def test_boost_count_not_multiple_of_four(n_boost, device):
    """1 or 3 RoPE pairs: the dense hi planes end in a partly used byte (padding slots)."""
    cfg = KVQuantConfig.static(n_boost=n_boost, boost_values=True, **PAPER)
    _check(cfg, [161, 700], H=1, G=4, D=64, dtype=torch.float16, device=device, n_splits=2)
    cfg = KVQuantConfig.kitty(n_boost=n_boost, **PAPER)
    _check(cfg, [161, 700], H=1, G=4, D=64, dtype=torch.float16, device=device, n_splits=2)


@pytest.mark.parametrize("method", ["kitty", "static"])
def test_state_holding_new_token(method, device):
    """The new token already in the buffers (no k_new), default split count, P=W=64."""
    cfg = _cfg(method, n_sink=32, page_size=64, window=64)
    _check(cfg, [1, 289, 40], H=1, G=4, D=64, dtype=torch.float16, device=device, new=False)


def test_split_count_does_not_change_result(device):
    st = random_state(_cfg("static", **PAPER), [700], 1, 64, torch.float16, device, seed=3)
    q = torch.randn(1, 2, 64, device=device).to(torch.float16)
    outs = [decode_attention(q, st, 0.125, n_splits=n).float() for n in (1, 3)]
    assert (outs[0] - outs[1]).abs().max() < 2e-3


@pytest.mark.parametrize(
    "B,per_sm,want",
    [
        (1, 4, 64),  # batch 1 x 256 tiles: ~4 programs per SM, capped at 4 tiles each -> 64
        (8, 2, 8),  # 8 x 32K: round(4 * 132 / 64)
        # 1096 programs on 264 slots: 5 waves x 256 tiles = 1280 tile-times; splits 2..8 cost
        # 1152, 1118, 1088, 1092, 1075, 1110, 1088 -> 6
        (137, 2, 6),
        # 1272 on 528: 3 x 256 = 768; splits 2..8: 640, 688, 640, 676, 645, 629, 640 -> 7
        (159, 4, 7),
        (64, 4, 1),  # 512 programs fit one wave of 528
    ],
)
def test_split_count_wave_quantization(B, per_sm, want):
    """Hand-computed splits on an H200 (132 SMs) at 8 KV heads and 256 page tiles per row."""
    assert split_count(B, 8, 256 if B != 64 else 32, 132, per_sm=per_sm) == want


@pytest.mark.parametrize(
    "B,pages,slots,want",
    [
        # 8 x 32K, 12 resident per SM: 24 splits of 11 pages = 1536 programs, one wave (11.5 page-times;
        # two waves of 6 pages: 13)
        (8, 256, 1584, 24),
        # 9 per SM: 37 splits of 7 pages = 2368 programs, 2 waves (15 page-times; 18 x 15 pages in one
        # wave: 15.5; 128 x 2 pages in 7 waves: 17.5)
        (8, 256, 1188, 37),
        (64, 32, 1188, 2),  # 1024 programs of 16 pages fit one wave of 1188
        (1, 256, 1584, 128),  # batch 1: at least 2 pages per program
        (3, 0, 1584, 0),
    ],
)
def test_gluon_split_waves(B, pages, slots, want):
    """Hand-computed whole-wave splits for the Gluon page kernel (8 KV heads)."""
    assert gluon_split_waves(B, 8, pages, slots) == want


@pytest.mark.parametrize("G,n_splits,warps", [(3, 1, None), (4, 11, 1), (4, 11, 2), (4, 20, None)])
def test_combine_warps_match_reference(G, n_splits, warps, device):
    """The combine with one, two or the default warps (1 per program up to 16 partials, else 4)
    against the reference: 11 splits + the rest's = 12 partials in a 16-slot tile (the last four
    masked), 21 in 32 (the default's 4 warps), GQA 3 with 2 partials."""
    _check(
        _cfg("static", **PAPER), [1, 161, 700, 1300], H=2, G=G, D=64, dtype=torch.float16, device=device,
        n_splits=n_splits, _launch={"combine_warps": warps},
    )  # fmt: skip


def test_launch_knobs_are_checked():
    st = random_state(KVQuantConfig.kivi(), [300], 1, 64, torch.float16, "cpu")
    q = torch.randn(1, 2, 64).half()
    with pytest.raises(ValueError, match="_launch="):
        decode_attention(q, st, 0.125, _launch={"order": "sideways"})
    with pytest.raises(ValueError, match="_launch="):
        decode_attention(q, st, 0.125, _launch={"priority": 1})
    with pytest.raises(ValueError, match="combine"):
        decode_attention(q, st, 0.125, _launch={"combine_warps": 3})
    with pytest.raises(ValueError, match="mixed"):
        decode_attention(q, st, 0.125, _launch={"mixed": "first"})
    with pytest.raises(ValueError, match="split='rows'"):
        decode_attention(q, st, 0.125, _gluon={"split": "rows"})
    with pytest.raises(ValueError, match="resident=0"):
        decode_attention(q, st, 0.125, _gluon={"resident": 0})
    with pytest.raises(ValueError, match="slots=0"):
        gluon_split_waves(8, 8, 256, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "static"])
def test_launch_order_and_wave_split(method):
    """The page kernel launched before or after the rest, on a high-priority stream, and split in
    whole waves; the mixed pages' launch after the page kernel or beside it: the same partials
    whatever the order (bitwise), and the reference's result."""
    st = random_state(_cfg(method, **PAPER), [32768, 4097, 1000, 289, 161, 33, 1], 8, 128, torch.bfloat16,
                      "cuda", seed=4)  # fmt: skip
    q = torch.randn(7, 32, 128, device="cuda", dtype=torch.bfloat16)
    kn, vn = (torch.randn(7, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = decode_attention_reference(q, st, 128**-0.5, kn, vn)
    base = decode_attention(q, st, 128**-0.5, kn, vn, _launch={"order": "rest"})
    for lo in ({"order": "page"}, {"priority": -1}):
        assert torch.equal(decode_attention(q, st, 128**-0.5, kn, vn, _launch=lo), base)
    out = decode_attention(q, st, 128**-0.5, kn, vn, _gluon={"split": "waves"}).float()
    assert (out - ref).norm() / ref.norm() < 6e-3
    # the mixed pages' launch after the page kernel (default) or beside it, in either order
    mixed = decode_attention(q, st, 128**-0.5, kn, vn, _gluon={"mixed": True})
    assert (mixed.float() - ref).norm() / ref.norm() < 6e-3
    for lo in ({"mixed": "beside"}, {"order": "rest", "mixed": "beside"}, {"priority": -1}):
        assert torch.equal(
            decode_attention(q, st, 128**-0.5, kn, vn, _gluon={"mixed": True}, _launch=lo), mixed
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static"])
def test_large_batch_defaults(method):
    """B x H = 256 (the defaults switch to 2-warp rest programs without boosted values, and to the
    Gluon page kernel's mixed pages in a launch of their own; whole-wave page splits), ragged rows
    from 1 to 8K tokens, against the reference."""
    lengths = [1 + (977 * i) % 8192 for i in range(32)]
    for dtype in (torch.bfloat16, torch.float16):
        _check(_cfg(method, **PAPER), lengths, H=8, G=4, D=128, dtype=dtype, device="cuda", seed=6)


@pytest.mark.parametrize("programs", [1, 2])
def test_rest_programs_do_not_change_result(programs, device):
    """Fewer rest programs per (row, head), each striding over several rest tiles (sink, tail,
    buffers, new token), against the reference."""
    st = random_state(_cfg("kitty", **PAPER), [700, 33], 1, 64, torch.float16, device, seed=5)
    q = torch.randn(2, 2, 64, device=device).to(torch.float16)
    kn, vn = (torch.randn(2, 1, 64, device=device).to(torch.float16) for _ in range(2))
    ref = decode_attention_reference(q, st, 0.125, kn, vn)
    out = decode_attention(q, st, 0.125, kn, vn, rest_programs=programs, rest_warps=4).float()
    assert ((out - ref).norm() / ref.norm()) < 1e-3


@pytest.mark.parametrize(
    "impl", ["split", pytest.param("tiles", marks=pytest.mark.slow)]
)  # tiles: not default
@pytest.mark.parametrize("method", ["kivi", "kitty", "static", "static_keys"])
@pytest.mark.parametrize("R", [16, 64])
def test_rest_kernel_sources(method, impl, R, device):
    """Window 64 < page 128, so some rest tokens have a 16-bit key (buffer) beside a quantized value
    (rows 133 and 500) and others the reverse. tile_rows 64 (page tiles of 256 tokens do not fit a
    128-token page) leaves every token to the rest kernel; tile_rows 16 leaves it the usual tail."""
    cfg = _cfg(method, n_sink=32, page_size=128, window=64)
    _check(cfg, [1, 40, 133, 289, 500], H=1, G=4, D=64, dtype=torch.float16, device=device, n_splits=2,
           tile_rows=R, _rest={"impl": impl})  # fmt: skip


@pytest.mark.parametrize(
    "rest,programs",
    [
        ({"bt": 16, "btq": 16}, None),
        pytest.param({"bt": 128, "btq": 64}, 1, marks=pytest.mark.slow),
        pytest.param({"bt": 32, "btq": 32, "stages": 2}, 3, marks=pytest.mark.slow),
        ({"per_sm": 0.01}, None),  # one program per (row, head): strides over every tile
        ({"parts": 2}, None),  # the 16-bit tiles and the quantized tail launched apart
        ({"parts": 2, "per_sm": 0.01}, None),
        pytest.param({"parts": 2, "bt": 16, "btq": 16}, 2, marks=pytest.mark.slow),
    ],
)
def test_split_rest_variants(rest, programs, device):
    """The split rest kernel's tile sizes, pipelining and program counts do not change the result
    (static mask with boosted values: every source and both boosted paths)."""
    cfg = _cfg("static", **PAPER)
    _check(cfg, [1, 33, 161, 289, 700], H=1, G=4, D=64, dtype=torch.bfloat16, device=device, n_splits=2,
           tile_rows=16, rest_programs=programs, _rest=rest)  # fmt: skip


def test_rest_options_validate():
    from fcboost.kernels.decode_attention import rest_options

    assert rest_options(None, 128) == {"impl": "split", "bt": 64, "btq": 32, "stages": 1, "per_sm": 2.0,
                                       "maxnreg": None, "parts": 1, "impl16": "triton"}  # fmt: skip
    assert rest_options({"impl": "tiles"}, 48)["bt"] == 16
    with pytest.raises(ValueError, match=r"unknown keys \['bq', 'warps'\]"):
        rest_options({"bq": 32, "warps": 8}, 128)
    with pytest.raises(ValueError, match="impl='tile'"):
        rest_options({"impl": "tile"}, 128)
    with pytest.raises(ValueError, match="btq=64"):
        rest_options({"btq": 64}, 96)
    with pytest.raises(ValueError, match="bt=128"):
        rest_options({"impl": "tiles", "bt": 128}, 128)
    with pytest.raises(ValueError, match="stages=0"):
        rest_options({"stages": 0}, 128)
    with pytest.raises(ValueError, match="parts=2: expected 1, or 2 with impl 'split'"):
        rest_options({"parts": 2, "impl": "tiles"}, 128)
    with pytest.raises(ValueError, match="parts=3"):
        rest_options({"parts": 3}, 128)
    with pytest.raises(ValueError, match="impl16='gluon': expected 'triton', or 'gluon' with parts 2"):
        rest_options({"impl16": "gluon"}, 128)
    with pytest.raises(ValueError, match="impl16='gluon'"):
        rest_options({"impl16": "gluon", "parts": 2, "bt": 128}, 128)


def test_n_rest_split_geometry():
    """Split-kernel tile bound: paper config (S=32, P=W=128), BN=128, 16-bit tiles of 64, tail tiles of
    32: ceil((32 + 128 + 2) / 64) + ceil((128 + 128) / 32) = 3 + 8 = 11 per (row, head) at most."""
    from fcboost.kernels.decode_attention import n_rest

    cfg = _cfg("kivi", **PAPER)
    assert n_rest(cfg, 128, 64, True, 132, 1, 8, BTQ=32) == 11  # 1 x 32K: round(264 / 8) = 33 -> 11
    assert n_rest(cfg, 128, 64, True, 132, 8, 8, BTQ=32) == 4  # 8 x 32K: round(264 / 64)
    assert n_rest(cfg, 128, 64, True, 132, 64, 8, BTQ=32) == 1
    assert n_rest(cfg, 128, 32, True, 132, 1, 8) == 10  # the tile kernel: 1 + ceil(257 / 32)
    assert n_rest(cfg, 128, 64, False, 132, 2, 8, BTQ=32) == 33  # no page tiles: 4 per SM


def test_n_rest_parts_geometry():
    """The two rest launches' programs per (row, head): at most 3 16-bit tiles of 64 (S + W + 2 = 162
    tokens) and 8 tail tiles of 32 ((BN + W) / 32), each about per_sm per SM in all."""
    from fcboost.kernels.decode_attention import n_rest_parts

    cfg = _cfg("kivi", **PAPER)
    assert n_rest_parts(cfg, 128, 64, 32, 132, 1, 8, 2.0) == (3, 8)  # round(264 / 8) = 33: capped
    assert n_rest_parts(cfg, 128, 64, 32, 132, 8, 8, 2.0) == (3, 4)  # round(264 / 64) = 4
    assert n_rest_parts(cfg, 128, 64, 32, 132, 64, 8, 8.0) == (2, 2)  # round(1056 / 512) = 2
    assert n_rest_parts(cfg, 128, 64, 32, 132, 64, 8, 2.0) == (1, 1)


def test_mixed_pages_rule():
    """Mixed pages by default from B x H = 256 on (the H200 sweep's crossover), as asked otherwise,
    never with boosted values in a second P^T (no dup), an fp32 window or unaligned window rows."""
    from fcboost.kernels.decode_attention import mixed_pages

    bf16 = torch.bfloat16
    assert not mixed_pages(8, 8, False, False, bf16)  # B x H = 64: slower there
    assert mixed_pages(32, 8, False, False, bf16) and mixed_pages(64, 8, True, True, torch.float16)
    assert mixed_pages(1, 8, False, False, bf16, knob=True) and not mixed_pages(
        64, 8, False, False, bf16, knob=False
    )
    assert not mixed_pages(64, 8, True, False, bf16)  # boosted values at GQA > 4 (no dup)
    assert not mixed_pages(64, 8, False, False, torch.float32, knob=True)
    assert not mixed_pages(64, 8, False, False, bf16, knob=True, window_aligned=False)  # (cp.async rows)


def test_n_rest_parts_one_program_per_16bit_tile():
    from fcboost.kernels.decode_attention import n_rest_parts

    cfg = _cfg("kivi", **PAPER)
    assert n_rest_parts(cfg, 128, 64, 32, 132, 64, 8, 2.0, all16=True) == (3, 1)
    assert n_rest_parts(cfg, 128, 32, 32, 132, 64, 8, 2.0, all16=True) == (6, 1)  # ceil(162 / 32)


def test_rows_aligned():
    from fcboost.kernels.decode_attention import _rows_aligned

    x = torch.zeros(2, 3, 72, dtype=torch.float16)
    assert _rows_aligned(x, x[:, :, :64])
    assert not _rows_aligned(x[:, :, 1:65])  # a 2-byte offset
    assert not _rows_aligned(torch.zeros(2, 3, 36, dtype=torch.float16)[:, :, :32])  # 72-byte rows


def test_unaligned_new_token(device):
    """k_new / v_new views 2 bytes off 16-byte alignment: the split kernel drops its vector hint."""
    st = random_state(_cfg("kivi", **PAPER), [161, 33], 2, 64, torch.float16, device, seed=7)
    q = torch.randn(2, 4, 64, device=device).to(torch.float16)
    big = torch.randn(2, 2, 2, 72, device=device).to(torch.float16)
    kn, vn = big[:, :, 0, 1:65], big[:, :, 1, 1:65]
    ref = decode_attention_reference(q, st, 0.125, kn, vn)
    out = decode_attention(q, st, 0.125, kn, vn, n_splits=1).float()
    assert ((out - ref).norm() / ref.norm()) < 1e-3


def test_bad_input_raises(device):
    st = random_state(_cfg("kivi", **PAPER), [5], 2, 64, torch.float16, device)
    with pytest.raises(ValueError, match="dtype"):
        decode_attention(torch.randn(1, 4, 64, device=device), st, 0.125)
    with pytest.raises(ValueError, match="does not match"):
        decode_attention(torch.randn(1, 3, 64, device=device).half(), st, 0.125)
    with pytest.raises(ValueError, match="tile_rows"):
        decode_attention(torch.randn(1, 4, 64, device=device).half(), st, 0.125, tile_rows=8)
    with pytest.raises(ValueError, match="k_new"):
        decode_attention(torch.randn(1, 4, 64, device=device).half(), st, 0.125,
                         torch.randn(1, 2, 32, device=device).half(), None)  # fmt: skip
    st4 = random_state(
        KVQuantConfig.kivi(key_bits=4, value_bits=4, **PAPER), [5], 2, 64, torch.float16, device
    )
    with pytest.raises(ValueError, match="2-bit"):
        decode_attention(torch.randn(1, 4, 64, device=device).half(), st4, 0.125)
    q = torch.randn(1, 4, 64, device=device).half()
    with pytest.raises(ValueError, match="page_impl='tiled'"):
        decode_attention(q, st, 0.125, page_impl="tiled")
    with pytest.raises(ValueError, match="page_impl='gluon' cannot serve"):  # head_dim 64 (and, here, no GPU)
        decode_attention(q, st, 0.125, page_impl="gluon")
    with pytest.raises(ValueError, match="_gluon="):  # the experiment's knob without its kernel
        decode_attention(q, st, 0.125, _gluon={"vil2": None})
    with pytest.raises(ValueError, match=r"_rest: unknown keys \['btf'\]"):
        decode_attention(q, st, 0.125, _rest={"btf": 64})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["kivi", "kitty", "static_keys", "static"])
def test_gluon_page_kernel_matches_reference(dtype, method):
    """The Gluon page kernel (Qwen3-8B head shape) on ragged rows against the reference and the
    Triton page kernel (the same partials up to fp32 summation order), over 2 and 3 pipeline stages."""
    dev = torch.device("cuda")
    cfg = {
        "kivi": KVQuantConfig.kivi(),
        "kitty": KVQuantConfig.kitty(n_boost=16),
        "static_keys": KVQuantConfig.static(n_boost=16, boost_values=False),
        "static": KVQuantConfig.static(n_boost=16, boost_values=True),
    }[method]
    st = random_state(cfg, [32768, 4097, 1000, 289, 161, 33, 1], 8, 128, dtype, dev, seed=3)
    q = torch.randn(7, 32, 128, device=dev, dtype=dtype)
    kn, vn = (torch.randn(7, 8, 128, device=dev, dtype=dtype) for _ in range(2))
    ref = decode_attention_reference(q, st, 128**-0.5, kn, vn)
    tri = decode_attention(q, st, 128**-0.5, kn, vn, page_impl="triton").float()
    tol = 1e-3 if dtype == torch.float16 else 1e-2
    for stages in (2, 3):
        out = decode_attention(q, st, 128**-0.5, kn, vn, page_impl="gluon", _gluon={"stages": stages}).float()
        assert (out - ref).norm() / ref.norm() < tol
        assert (out - tri).norm() / tri.norm() < tol / 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static", "static_keys"])
@pytest.mark.parametrize("window", [128, 32, 256])
def test_gluon_mixed_pages_match_reference(method, window):
    """``_gluon={"mixed": True}``: the Gluon page kernel takes every key page, the values of its last
    pages partly from the 16-bit window (window 128 and 256: values behind the keys; 32: values ahead,
    so the Triton tail takes [end of the key pages, end of the quantized values)); against the
    reference on ragged rows, both dtypes, GQA 4 (and 8 without boosted values), one or two rest
    launches, and against the default page split."""
    cfg = _cfg(method, n_sink=32, page_size=128, window=window)
    lengths = [32768, 4097, 1000, 289, 161, 33, 1, 700]
    groups = (4,) if method == "static" else (4, 8)
    for dtype in (torch.float16, torch.bfloat16):
        for G in groups:
            for rest in ({}, {"parts": 2, "impl16": "gluon"}):
                _check(cfg, lengths, H=2, G=G, D=128, dtype=dtype, device="cuda", seed=G, page_impl="gluon",
                       _gluon={"mixed": True}, _rest=rest)  # fmt: skip
    st = random_state(cfg, lengths, 2, 128, torch.float16, "cuda", seed=5)
    q = torch.randn(len(lengths), 8, 128, device="cuda", dtype=torch.float16)
    a, b = (
        decode_attention(q, st, 128**-0.5, page_impl="gluon", _gluon={"mixed": m}).float()
        for m in (True, False)
    )
    assert (a - b).norm() / b.norm() < 2e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static"])
@pytest.mark.parametrize("bt", [16, 32, 64])
def test_gluon_rest16_matches_reference(method, bt):
    """The Gluon kernel for the rest's 16-bit tokens (``_rest={"parts": 2, "impl16": "gluon"}``) on
    ragged rows (short rows are all rest) against the reference, over GQA groups, head dims and
    dtypes, with and without a new token; and against the Triton 16-bit part."""
    from fcboost.kernels.decode_attention import rest16_gluon_unsupported

    cfg = _cfg(method, **PAPER)
    lengths = [1, 33, 161, 289, 4097, 700]
    rest = {"parts": 2, "impl16": "gluon", "bt": bt}
    for dtype, D, G in ((torch.float16, 128, 4), (torch.bfloat16, 64, 8), (torch.bfloat16, 128, 1),
                        (torch.float16, 64, 3)):  # fmt: skip
        st = random_state(cfg, lengths, 2, D, dtype, "cuda", seed=G)
        q = torch.randn(len(lengths), 2 * G, D, device="cuda", dtype=dtype)
        kn, vn = (torch.randn(len(lengths), 2, D, device="cuda", dtype=dtype) for _ in range(2))
        assert rest16_gluon_unsupported(q, st, kn, vn) is None  # (else the Triton part would run)
        for new in (True, False):
            _check(cfg, lengths, H=2, G=G, D=D, dtype=dtype, device="cuda", seed=G, new=new, _rest=rest)
        a = decode_attention(q, st, D**-0.5, kn, vn, _rest=rest).float()
        b = decode_attention(q, st, D**-0.5, kn, vn, _rest={"parts": 2, "bt": bt}).float()
        assert (a - b).norm() / b.norm() < (2e-4 if dtype == torch.float16 else 4e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("G", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("dup", [True, False])
def test_gluon_boosted_values_every_group(G, dup):
    """Boosted values in the Gluon kernel for every GQA group: with ``dup`` (the default, used for
    G <= 4) the heads ride columns 4-7 a second time weighted by the group-1 scales (the boosted
    channels' low bits taken from the planes' columns 4-7); without it (and always for G > 4) a second
    ``P^T``. Both against the reference, and against each other."""
    cfg = _cfg("static", **PAPER)
    lengths = [4097, 1000, 289, 161, 33, 1]
    for dtype in (torch.bfloat16, torch.float16):
        _check(cfg, lengths, H=3, G=G, D=128, dtype=dtype, device="cuda", seed=G, page_impl="gluon",
               _gluon={"dup": dup})  # fmt: skip
    st = random_state(cfg, lengths, 3, 128, torch.float16, "cuda", seed=7)
    q = torch.randn(len(lengths), 3 * G, 128, device="cuda", dtype=torch.float16)
    a, b = (
        decode_attention(q, st, 128**-0.5, page_impl="gluon", _gluon={"dup": d}).float()
        for d in (True, False)
    )
    assert (a - b).norm() / b.norm() < 2e-4  # the same sums up to fp32 order and fp16 rounding of P s


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static", "static_keys"])
@pytest.mark.parametrize("impl,use_asm", [("triton", True), ("triton", False), ("gluon", True)])
def test_qwen3_8b_shape(method, impl, use_asm):
    """32 query heads, 8 KV heads, d=128, paper config, ragged rows up to 32K, both page kernels."""
    for dtype in (torch.bfloat16, torch.float16):
        _check(_cfg(method), [32768, 20001, 4097, 289, 1], H=8, G=4, D=128, dtype=dtype, device="cuda",
               seed=5, use_asm=use_asm, page_impl=impl)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static", "static_keys"])
@pytest.mark.parametrize(
    "rest,warps",
    [
        ({"impl": "tiles"}, None),
        ({"stages": 2}, None),
        ({"bt": 32, "btq": 16, "maxnreg": 128}, None),
        ({"btq": 64, "per_sm": 4}, 8),
    ],
)
def test_rest_variants_qwen3_8b_shape(method, rest, warps):
    """The rest kernel's variants (the probe's A/B) at the Qwen3-8B shape, ragged rows, both dtypes."""
    for dtype in (torch.bfloat16, torch.float16):
        _check(_cfg(method), [32768, 4097, 1000, 289, 161, 33, 1], H=8, G=4, D=128, dtype=dtype,
               device="cuda", seed=3, _rest=rest, rest_warps=warps)  # fmt: skip


def test_gluon_unsupported_names_the_reason():
    """``page_impl='auto'`` falls back to the Triton kernel with a reason; on a CPU the reason is the
    device, and a forced Gluon call raises with it."""
    from fcboost.kernels.decode_attention import gluon_unsupported

    st = random_state(KVQuantConfig.kivi(), [300, 5], 8, 128, torch.float16, "cpu")
    q = torch.randn(2, 32, 128).half()
    assert "CUDA" in gluon_unsupported(q, st)
    with pytest.raises(ValueError, match="cannot serve this call: needs a CUDA device"):
        decode_attention(q, st, 0.125, page_impl="gluon")
    with pytest.raises(ValueError, match="page_impl='tiled'"):
        decode_attention(q, st, 0.125, page_impl="tiled")
    with pytest.raises(ValueError, match="_gluon="):
        decode_attention(q, st, 0.125, _gluon={"pf": 1})
