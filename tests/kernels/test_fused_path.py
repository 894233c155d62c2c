"""The fused read path equals the reference read path at the model seam (generate)."""

from __future__ import annotations

import pytest
import torch

import fcboost.attention  # noqa: F401  (registers "fcboost_fused")
from fcboost.cache import QuantizedKVCache
from fcboost.models import random_model
from fcboost.quant.config import KVQuantConfig


def _generate(model, ids, am, cfg, path, new_tokens, mask=None, attn="sdpa"):
    model.set_attn_implementation("fcboost_fused" if path == "fused" else attn)
    cache = QuantizedKVCache(model.config, cfg, mask=mask, attention_mask=am, read_path=path)
    g = model.generate(
        input_ids=ids,
        attention_mask=am,
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return g.sequences[:, ids.shape[1] :], torch.stack(g.logits).float()  # (B, n), (n, B, V)


def _common_prefix_diff(a, b) -> float:
    """Max |logit difference| of two generations over the steps up to their first differing token."""
    same = (a[0] == b[0]).all(0)
    k = int(same.logical_not().nonzero()[0]) if not bool(same.all()) else len(same)
    return float((a[1][: k + 1] - b[1][: k + 1]).abs().max())


def _assert_same(ref, fused, rel_tol):
    """Same greedy tokens and logits within ``rel_tol`` of the largest |logit|, or a divergence at a near tie."""
    (t_r, l_r), (t_f, l_f) = ref, fused
    tol = rel_tol * float(l_r.abs().max())
    same = (t_r == t_f).all(0)  # (n,)
    k = int(same.logical_not().nonzero()[0]) if not bool(same.all()) else len(same)
    # logits agree up to and including the first step where the tokens could differ
    diff = (l_r[: k + 1] - l_f[: k + 1]).abs().max()
    assert diff < tol, f"logits differ by {diff:.3e} (tol {tol}) over the first {k + 1} steps"
    if k < len(same):  # a divergence is only allowed at a near tie of the reference's top-2
        top2 = l_r[k].topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min()
        assert margin < 2 * tol, f"greedy tokens diverge at step {k} with top-2 margin {margin:.3e}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kitty", "kivi"])
def test_fused_generate_equals_reference_tiny(method):
    """tiny-qwen3 (head_dim 32: token-by-token kernel path), pages flushed during decode, left padding."""
    model = random_model("tiny-qwen3", dtype=torch.float16, seed=0).model
    kw = dict(n_sink=4, page_size=16, window=16)
    cfg = KVQuantConfig.kitty(n_boost=8, **kw) if method == "kitty" else KVQuantConfig.kivi(**kw)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 34), generator=g)
    am = torch.ones_like(ids)
    am[1, :5] = 0
    ref = _generate(model, ids, am, cfg, "reference", 4)
    fused = _generate(model, ids, am, cfg, "fused", 4)
    _assert_same(ref, fused, rel_tol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["kivi", "kitty", "static"])
def test_fused_generate_equals_reference_qwen3_8b_shape(method):
    """Random-weight Qwen3-8B-shaped model (8 of its 36 layers), bf16, ragged prompts of ~600 tokens,
    48 greedy tokens. Tolerance: twice the difference between two bf16 implementations of the same
    reference path (SDPA vs eager attention), i.e. the fused path is within bf16 arithmetic noise."""
    from fcboost.masks.mask import ChannelMask

    lm = random_model("qwen3-8b", dtype=torch.bfloat16, device="cuda", seed=0, num_hidden_layers=8)
    model = lm.model
    mask = None
    if method == "static":
        cfg = KVQuantConfig.static(boost_values=True)
        mask = ChannelMask.random(model.config, n_pairs=8, seed=42)
    else:
        cfg = KVQuantConfig.kitty(n_boost=16) if method == "kitty" else KVQuantConfig.kivi()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 151936, (3, 600), generator=g).cuda()
    am = torch.ones_like(ids)
    am[1, :77] = 0
    am[2, :301] = 0
    ref = _generate(model, ids, am, cfg, "reference", 48, mask)
    fused = _generate(model, ids, am, cfg, "fused", 48, mask)
    # the noise floor: the same reference path with eager attention instead of SDPA (both bf16)
    eager = _generate(model, ids, am, cfg, "reference", 48, mask, attn="eager")
    floor = _common_prefix_diff(ref, eager)
    tol = max(2 * floor, 1e-3 * float(ref[1].abs().max()))
    _assert_same(ref, fused, rel_tol=tol / float(ref[1].abs().max()))


@pytest.mark.parametrize("method", ["kitty", "static"])
def test_triton_flush_gives_the_reference_state(method, monkeypatch):
    """The fused path's quantize-on-flush (Triton pack kernels) leaves the packed state bitwise equal
    to the reference path's, through a prefill and decode steps that flush pages and values."""
    from fcboost.cache.layer import QuantizedLayer
    from fcboost.quant.mixed import boost_index
    from fcboost.quant.selectors import DynamicMagnitude, StaticMask

    g = torch.Generator().manual_seed(3)
    kw = dict(n_sink=4, page_size=32, window=32)
    if method == "kitty":
        cfg, sel, bidx = KVQuantConfig.kitty(n_boost=16, **kw), DynamicMagnitude(16), None
    else:
        m = torch.zeros(2, 64, dtype=torch.bool)
        for h in range(2):
            m[h, torch.randperm(64, generator=g)[:16]] = True
        cfg, sel, bidx = (
            KVQuantConfig.static(n_boost=16, **kw),
            StaticMask(m, True),
            boost_index(m, 16).to(torch.int16),
        )
    ref, fused = QuantizedLayer(cfg, sel, 0, bidx), QuantizedLayer(cfg, sel, 0, bidx)
    fused.read_path = "fused"
    monkeypatch.setattr(fused, "_triton_flush", lambda x: True)  # the GPU branch, on the interpreter
    k, v = (torch.randn(3, 2, 103, 64, generator=g).half() for _ in range(2))
    for layer in (ref, fused):
        layer.update(k[:, :, :95], v[:, :, :95])
        for t in range(95, 103):  # page 3 flushes at 101 tokens
            layer.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        layer.flush()
    assert fused.n_pages(0) == ref.n_pages(0) == 3 and fused.n_vq(0) == ref.n_vq(0) == 67
    for name in (
        "k_lo",
        "k_hi",
        "k_idx",
        "k_scale",
        "k_zero",
        "v_lo",
        "v_hi",
        "v_scale",
        "v_zero",
        "k_buf",
        "v_win",
    ):
        a, b = getattr(ref, name), getattr(fused, name)
        if a is None:
            assert b is None, name
            continue
        n = min(a.shape[2], b.shape[2])
        assert torch.equal(a[:, :, :n], b[:, :, :n]), f"{method}: {name} differs"
