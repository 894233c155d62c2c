"""The fused read path equals the reference read path at the model seam (generate)."""

from __future__ import annotations

import pytest
import torch

import fcboost.attention  # noqa: F401  (registers "fcboost_fused")
from fcboost.cache import QuantizedKVCache
from fcboost.models import random_model
from fcboost.quant.config import KVQuantConfig


def _generate(model, ids, am, cfg, path, new_tokens, mask=None):
    model.set_attn_implementation("fcboost_fused" if path == "fused" else "sdpa")
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
    """Random-weight Qwen3-8B-shaped model (8 of its 36 layers), bf16, ragged prompts of ~600 tokens."""
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
    _assert_same(ref, fused, rel_tol=2e-2)
