"""The cache's equivalences: 16-bit == DynamicCache, state independent of chunking, byte budget."""

import pytest
import torch
from transformers import AutoConfig, DynamicCache

from fcboost import ChannelMask, KVQuantConfig, QuantizedKVCache
from fcboost.quant.layout import to_tokens

BOUNDARY_NS = [1, 31, 32, 33, 159, 160, 161, 162, 287, 288, 289, 290, 416, 417]


def presets(config):
    mask = ChannelMask.random(config, n_pairs=2, seed=42)
    return {
        "kivi": (KVQuantConfig.kivi(), None),
        "kitty": (KVQuantConfig.kitty(n_boost=4), None),
        "static_bv": (KVQuantConfig.static(boost_values=True), mask),
        "static": (KVQuantConfig.static(boost_values=False), mask),
    }


def test_fp16_passthrough_equals_dynamic_cache(tiny_qwen3):
    model = tiny_qwen3.model
    ids = torch.randint(0, 256, (2, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dc, qc = DynamicCache(config=model.config), QuantizedKVCache(model.config, KVQuantConfig.fp16())
        assert torch.equal(
            model(ids[:, :170], past_key_values=dc).logits, model(ids[:, :170], past_key_values=qc).logits
        )
        for t in range(170, 200):
            a = model(ids[:, t : t + 1], past_key_values=dc).logits
            b = model(ids[:, t : t + 1], past_key_values=qc).logits
            assert torch.equal(a, b), f"step {t}"
    assert qc.get_seq_length() == dc.get_seq_length() == 200


def test_fp16_passthrough_equals_dynamic_cache_smollm2(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    inputs = tok(["The quick brown fox jumps over the lazy dog because"], return_tensors="pt")
    with torch.no_grad():
        a = model(**inputs, past_key_values=DynamicCache(config=model.config)).logits
        b = model(**inputs, past_key_values=QuantizedKVCache(model.config, KVQuantConfig.fp16())).logits
    assert torch.equal(a, b)


def _state(cache):
    """Everything the packed state holds for layer 0, trimmed to what is in use."""
    layer = cache.layers[0]
    layer.flush()
    out = {"n_real": list(layer.n_real), "nbytes": cache.nbytes()}
    for b in range(layer.B):
        npg, nvq = layer.n_pages(b), layer.n_vq(b)
        out[f"deq{b}"] = layer.dequantized(b)
        for name in ("k_lo", "k_hi", "k_idx", "k_scale", "k_zero"):
            t = getattr(layer, name)
            out[f"{name}{b}"] = None if t is None else t[b, :, :npg]
        for name in ("v_scale", "v_zero"):
            t = getattr(layer, name)
            out[f"{name}{b}"] = None if t is None else t[b, :, :nvq]
        for name in ("v_lo", "v_hi"):  # interleaved: compare the real tokens
            t = getattr(layer, name)
            out[f"{name}{b}"] = None if t is None else to_tokens(t[b], nvq)
        out[f"sink{b}"] = (layer.sink_k[b, :, : layer.n_sink(b)], layer.sink_v[b, :, : layer.n_sink(b)])
    return out


def _assert_same(s1, s2, ctx):
    assert s1.keys() == s2.keys()
    for k in s1:
        a, b = s1[k], s2[k]
        if isinstance(a, tuple):
            for x, y in zip(a, b):
                assert torch.equal(x, y), f"{ctx}: {k} differs"
        elif isinstance(a, torch.Tensor):
            assert a.shape == b.shape and torch.equal(a, b), f"{ctx}: {k} differs"
        else:
            assert a == b, f"{ctx}: {k} {a} != {b}"


@pytest.mark.parametrize("preset", ["kivi", "kitty", "static_bv", "static"])
def test_state_independent_of_chunking(tiny_qwen3, preset):
    config = tiny_qwen3.model.config
    qcfg, mask = presets(config)[preset]
    g = torch.Generator().manual_seed(7)
    H, D = config.num_key_value_heads, config.head_dim
    k_all = torch.randn(2, H, max(BOUNDARY_NS), D, generator=g)
    v_all = torch.randn(2, H, max(BOUNDARY_NS), D, generator=g)
    for n in BOUNDARY_NS:
        k, v = k_all[:, :, :n], v_all[:, :, :n]
        block = QuantizedKVCache(config, qcfg, mask=mask)
        block.update(k, v, 0)
        single = QuantizedKVCache(config, qcfg, mask=mask)
        for t in range(n):
            single.update(k[:, :, t : t + 1], v[:, :, t : t + 1], 0)
        mixed = QuantizedKVCache(config, qcfg, mask=mask)
        cuts = sorted({0, n, *torch.randint(1, max(2, n), (3,), generator=g).tolist()})
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                mixed.update(k[:, :, a:b], v[:, :, a:b], 0)
        s = _state(block)
        _assert_same(s, _state(single), f"{preset} n={n} one-by-one")
        _assert_same(s, _state(mixed), f"{preset} n={n} chunks {cuts}")
        # The timing rules: counts of quantized pages/values.
        layer = block.layers[0]
        assert layer.n_pages(0) == max(0, (n - 32 - 1) // 128)
        assert layer.n_vq(0) == max(0, n - 32 - 128)


def test_pages_seen_quantized_exactly_from_rule(tiny_qwen3):
    """Page 0 is first seen quantized by the query at S + P + 1 = 161; value k at k + W + 1."""
    config = tiny_qwen3.model.config
    H, D = config.num_key_value_heads, config.head_dim
    k = torch.randn(1, H, 200, D)
    v = torch.randn(1, H, 200, D)
    cache = QuantizedKVCache(config, KVQuantConfig.kivi())
    seen_k, seen_v = {}, {}
    for t in range(200):
        kk, vv = cache.update(k[:, :, t : t + 1], v[:, :, t : t + 1], 0)
        seen_k[t] = not torch.equal(kk[0, :, 40], k[0, :, 40]) if t >= 40 else False
        seen_v[t] = not torch.equal(vv[0, :, 32], v[0, :, 32]) if t >= 32 else False
    assert [t for t in seen_k if seen_k[t]][0] == 161  # key 40 lives in page 0
    assert [t for t in seen_v if seen_v[t]][0] == 32 + 128 + 1


def qwen3_8b_config(layers=1):
    return AutoConfig.for_model(
        "qwen3",
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        num_hidden_layers=layers,
        intermediate_size=128,
        vocab_size=16,
    )


def test_bytes_at_qwen3_8b_shape_below_fifth_of_fp16():
    config = qwen3_8b_config()
    k = torch.randn(1, 8, 4096, 128, dtype=torch.bfloat16)
    v = torch.randn(1, 8, 4096, 128, dtype=torch.bfloat16)
    fp16 = 2 * k.numel() * 2
    mask = ChannelMask.random(config, n_pairs=8, seed=0)
    ratios = {}
    methods = {
        "kivi": (KVQuantConfig.kivi(), None),
        "kitty": (KVQuantConfig.kitty(16), None),
        "static_bv": (KVQuantConfig.static(boost_values=True), mask),
    }
    for name, (qcfg, m) in methods.items():
        cache = QuantizedKVCache(config, qcfg, mask=m)
        cache.update(k, v, 0)
        assert cache.fp16_nbytes() == fp16
        ratios[name] = cache.nbytes() / fp16
    assert all(r <= 0.2 for r in ratios.values()), ratios
    assert ratios["kivi"] < ratios["kitty"] < ratios["static_bv"]
    # hand count for KIVI: sink and 96 waiting keys and 128 window values in bf16,
    # 31 pages of (32 B codes + 4 B scale/zero per channel-token) and 3936 values of 32 + 4 B
    per_head = 32 * 256 * 2 + 96 * 256 + 128 * 256 + 31 * (32 * 128 + 128 * 4) + 3936 * (32 + 4)
    assert cache_bytes_kivi(config, k, v) == per_head * 8


def cache_bytes_kivi(config, k, v):
    cache = QuantizedKVCache(config, KVQuantConfig.kivi())
    cache.update(k, v, 0)
    return cache.nbytes()
