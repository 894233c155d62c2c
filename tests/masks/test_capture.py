"""The capture observer records the q/k the attention really uses, restores the implementation, and
refuses unsupported models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fcboost.masks.capture import capture_qk, run_capture


def test_captured_qk_reproduce_attention_output(tiny_qwen3):
    """softmax(q k^T / sqrt(d)) v from the captured q/k (v from the layer input) == the o_proj input."""
    model = tiny_qwen3.model
    captured, attn_in, o_in = {}, {}, {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        hooks.append(
            attn.register_forward_pre_hook(
                lambda m, a, kw, i=i: attn_in.__setitem__(i, kw.get("hidden_states", a[0] if a else None)),
                with_kwargs=True,
            )
        )
        hooks.append(attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: o_in.__setitem__(i, a[0])))
    ids = torch.randint(0, 256, (1, 37), generator=torch.Generator().manual_seed(0))
    try:
        run_capture(
            model, [ids[0]], lambda i, q, k: captured.__setitem__(i, (q.clone(), k.clone())), progress=False
        )
    finally:
        for h in hooks:
            h.remove()
    assert sorted(captured) == [0, 1]
    torch.set_grad_enabled(False)
    try:
        _check_layers(model, captured, attn_in, o_in)
    finally:
        torch.set_grad_enabled(True)


def _check_layers(model, captured, attn_in, o_in):
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        q, k = captured[i]  # (1, Hq, T, D), (1, Hkv, T, D)
        assert q.shape == (1, 4, 37, 32) and k.shape == (1, 2, 37, 32)
        h = attn_in[i].clone()  # (1, T, hidden)
        v = attn.v_proj(h).view(1, 37, 2, 32).transpose(1, 2)  # (1, Hkv, T, D)
        k_rep, v_rep = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # (1, Hq, T, D)
        logits = q @ k_rep.transpose(-1, -2) / 32**0.5  # (1, Hq, T, T)
        causal = torch.ones(37, 37, dtype=torch.bool).tril()
        out = logits.masked_fill(~causal, float("-inf")).softmax(-1) @ v_rep  # (1, Hq, T, D)
        out = out.transpose(1, 2).reshape(1, 37, 4 * 32)  # (1, T, Hq*D)
        torch.testing.assert_close(out, o_in[i], rtol=1e-4, atol=1e-5)
        # and they are not the raw projections: k_norm + RoPE were applied
        raw_k = attn.k_proj(h).view(1, 37, 2, 32).transpose(1, 2)
        assert not torch.allclose(raw_k[:, :, 1:], k[:, :, 1:], atol=1e-3)


def test_capture_restores_implementation_and_output(tiny_qwen3):
    model = tiny_qwen3.model
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    seen = []
    with capture_qk(model, lambda i, q, k: seen.append(i)):
        assert model.config._attn_implementation == "fcboost_capture"
        with torch.no_grad():
            out = model(ids).logits
    assert model.config._attn_implementation == "sdpa"
    assert seen == [0, 1]
    torch.testing.assert_close(out, ref)  # the observer does not change the model's output
    with pytest.raises(RuntimeError, match="boom"), capture_qk(model, lambda i, q, k: None):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_capture_works_on_llama(tiny_llama):
    shapes = {}
    run_capture(
        tiny_llama.model,
        [torch.arange(30) % 256],
        lambda i, q, k: shapes.__setitem__(i, (q.shape, k.shape)),
        progress=False,
    )
    assert shapes == {i: ((1, 6, 30, 16), (1, 2, 30, 16)) for i in range(2)}


def test_unsupported_model_type_is_refused():
    fake = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported"), capture_qk(fake, print):
        pass


def test_bad_chunk_shape(tiny_qwen3):
    with pytest.raises(ValueError, match=r"1-D token id tensors \(T,\); got shape \(2, 5\)"):
        run_capture(tiny_qwen3.model, [torch.zeros(2, 5, dtype=torch.long)], lambda *a: None, progress=False)
