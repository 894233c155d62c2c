"""FastDecoder (static cache, fused attention, device-side flushes) against the reference path.

CPU: eager steps under the Triton interpreter on a tiny random Qwen3. GPU (``-m gpu``): the
graph-captured step on a random-weight model over 256 decoded tokens.
"""

from __future__ import annotations

import pytest
import torch

from fcboost.cache import QuantizedKVCache
from fcboost.decode import FastDecoder, generate_fast
from fcboost.masks.mask import ChannelMask
from fcboost.models import random_model
from fcboost.quant.config import KVQuantConfig


def _cfg(method: str, **kw) -> KVQuantConfig:
    return {
        "kivi": KVQuantConfig.kivi(**kw),
        "kitty": KVQuantConfig.kitty(n_boost=16, **kw),
        "static": KVQuantConfig.static(**kw),
    }[method]


def reference(model, ids, cfg, mask, n_new):
    """Greedy tokens (B, n_new) and per-step logits (B, n_new, V) of the reference read path."""
    cache = QuantizedKVCache(model.config, cfg, mask=mask)
    for layer in cache.layers:  # the reference keeps a static mask's boost_idx on the CPU (layer.py)
        if layer.boost_idx is not None:
            layer.boost_idx = layer.boost_idx.to(ids.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        past_key_values=cache,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, 1).float()


def compare(model, ids, cfg, mask, n_new, use_graph):
    """Teacher-force the fast path with the reference tokens; return (ref tokens, fast tokens, ref logits,
    fast logits)."""
    ref_tok, ref_logits = reference(model, ids, cfg, mask, n_new)
    dec = FastDecoder(
        model,
        cfg,
        mask,
        batch=ids.shape[0],
        max_len=ids.shape[1] + n_new,
        max_new_tokens=n_new,
        prefill_chunk=ids.shape[1],
        use_graph=use_graph,
        record_logits=True,
    )
    try:
        dec.prefill(ids)
        dec.ids[:, 0] = ref_tok[:, 0]
        dec.forced[:, :n_new] = ref_tok
        dec.use_forced.fill_(True)
        dec.decode()
        return ref_tok, dec.tokens.clone(), ref_logits, dec.logits.clone()
    finally:
        dec.close()


def check(ref_tok, fast_tok, ref_logits, fast_logits, tol):
    """Steps 1.. (step 0 is the prefill's token): logits within ``tol``; a differing greedy token only
    where the reference's top-2 gap is within twice the tolerance (an fp-rounding tie)."""
    diff = (ref_logits[:, 1:] - fast_logits[:, 1:]).abs().amax(-1)  # (B, n-1)
    assert float(diff.max()) < tol, f"max logit diff {float(diff.max()):.4f}"
    top2 = ref_logits[:, 1:].topk(2, -1).values
    gap = top2[..., 0] - top2[..., 1]
    differ = ref_tok[:, 1:] != fast_tok[:, 1:]
    assert bool((gap[differ] <= 2 * tol).all()), "a greedy token differs by more than fp rounding"
    return int(differ.sum())


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    ["kivi", pytest.param("kitty", marks=pytest.mark.slow), pytest.param("static", marks=pytest.mark.slow)],
)
def test_fast_decoder_matches_reference_cpu(method, device):
    if device != "cpu":
        pytest.skip("CPU variant")
    lm = random_model("tiny-qwen3", dtype=torch.bfloat16, head_dim=64, seed=1)
    model = lm.model
    cfg = _cfg(method, n_sink=4, page_size=16, window=8)
    mask = ChannelMask.random(model.config, n_pairs=8, seed=0) if method == "static" else None
    ids = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    ref_tok, fast_tok, rl, fl = compare(model, ids, cfg, mask, 14, use_graph=False)  # 2 key pages flush
    assert torch.equal(ref_tok[:, 0], fast_tok[:, 0])  # same 16-bit prefill
    check(ref_tok, fast_tok, rl, fl, tol=0.05)


@pytest.mark.slow
def test_generate_fast_padding_and_bf16(device):
    if device != "cpu":
        pytest.skip("CPU variant")
    model = random_model("tiny-qwen3", dtype=torch.bfloat16, head_dim=64, seed=2).model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, model.config.vocab_size, (2, 24), generator=g)
    am = torch.ones_like(ids)
    am[1, :6] = 0  # left padding: row 1 holds 18 real tokens
    cfg = KVQuantConfig.kivi(n_sink=4, page_size=16, window=8)
    both = generate_fast(model, ids, am, cfg, max_new_tokens=6, use_graph=False)
    alone = generate_fast(model, ids[1:, 6:], None, cfg, max_new_tokens=6, use_graph=False)
    assert torch.equal(both[1], alone[0])  # padding never enters the state
    bf = generate_fast(model, ids[1:, 6:], None, None, max_new_tokens=6, use_graph=False)
    ref = model.generate(
        ids[1:, 6:],
        attention_mask=torch.ones_like(ids[1:, 6:]),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )[:, 18:]
    assert torch.equal(bf, ref)  # the 16-bit static cache is exact
    assert model.config._attn_implementation == "sdpa"  # restored
    with pytest.raises(ValueError, match="greedy"):
        generate_fast(model, ids, am, cfg, max_new_tokens=4, greedy=False)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["kivi", "kitty", "static"])
def test_graph_decoder_matches_reference_gpu(method, device):
    if device != "cuda":
        pytest.skip("needs a CUDA GPU")
    model = random_model("qwen3-8b", dtype=torch.bfloat16, device="cuda", num_hidden_layers=4).model
    cfg = _cfg(method)
    mask = ChannelMask.random(model.config, n_pairs=8, seed=0) if method == "static" else None
    ids = torch.randint(
        0, model.config.vocab_size, (3, 700), generator=torch.Generator().manual_seed(0)
    ).cuda()
    ref_tok, fast_tok, rl, fl = compare(model, ids, cfg, mask, 256, use_graph=True)
    tol = 0.03 * float(rl.abs().max())  # 3% of the largest logit: a few bf16 ulps at that magnitude
    n_diff = check(ref_tok, fast_tok, rl, fl, tol=tol)
    d = (rl[:, 1:] - fl[:, 1:]).abs().amax(-1)
    print(
        f"{method}: max |logit| {float(rl.abs().max()):.2f}, logit diff max {float(d.max()):.4f} "
        f"mean {float(d.mean()):.4f} (tol {tol:.3f})"
    )
    print(f"{method}: {n_diff} of {ref_tok[:, 1:].numel()} greedy tokens differ (fp ties)")
    free = generate_fast(model, ids, None, cfg, mask, max_new_tokens=256)
    agree = (free == ref_tok).float().cumprod(-1).sum(-1)  # tokens equal up to the first divergence
    print(f"{method}: free-running graph path agrees with the reference for {agree.tolist()} tokens")
