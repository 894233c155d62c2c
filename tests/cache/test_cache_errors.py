import pytest
import torch
from transformers import AutoConfig

from fcboost import ChannelMask, KVQuantConfig, QuantizedKVCache


def test_bad_bits():
    with pytest.raises(ValueError, match="key_bits=3"):
        KVQuantConfig(key_bits=3)
    with pytest.raises(ValueError, match="value_bits=1"):
        KVQuantConfig(value_bits=1)


def test_bad_page_size():
    with pytest.raises(ValueError, match="page_size=126"):
        KVQuantConfig(page_size=126)


def test_n_boost_above_head_dim(tiny_qwen3):
    with pytest.raises(ValueError, match="n_boost=64 exceeds head_dim=32"):
        QuantizedKVCache(tiny_qwen3.model.config, KVQuantConfig.kitty(n_boost=64))


def test_mask_of_wrong_shape(tiny_qwen3):
    other = AutoConfig.for_model(
        "qwen3",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        num_hidden_layers=3,
    )
    mask = ChannelMask.random(other, n_pairs=2, seed=0)
    with pytest.raises(ValueError, match=r"\(3, 4, 16\).*\(2, 2, 32\)"):
        QuantizedKVCache(tiny_qwen3.model.config, KVQuantConfig.static(), mask=mask)


def test_static_needs_mask_and_others_reject_it(tiny_qwen3):
    cfg = tiny_qwen3.model.config
    with pytest.raises(ValueError, match="needs a ChannelMask"):
        QuantizedKVCache(cfg, KVQuantConfig.static())
    with pytest.raises(ValueError, match="selector='none' ignores it"):
        QuantizedKVCache(cfg, KVQuantConfig.kivi(), mask=ChannelMask.random(cfg, 2, 0))


def test_boost_values_needs_static():
    with pytest.raises(ValueError, match="boost_values=True needs selector='static'"):
        KVQuantConfig(selector="dynamic_magnitude", n_boost=4, boost_values=True)


def test_non_rope_and_sliding_window_models():
    gpt2 = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2)
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported"):
        QuantizedKVCache(gpt2, KVQuantConfig.kivi())
    mistral = AutoConfig.for_model(
        "mistral",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
        sliding_window=4096,
    )
    with pytest.raises(ValueError, match="sliding-window"):
        QuantizedKVCache(mistral, KVQuantConfig.kivi())


def test_left_padding_must_be_left(tiny_qwen3):
    cache = QuantizedKVCache(tiny_qwen3.model.config, KVQuantConfig.kivi())
    with pytest.raises(ValueError, match="left-padded"):
        cache.set_padding(torch.tensor([[1, 1, 0]]))


def test_mask_save_load_roundtrip(tmp_path, tiny_qwen3):
    mask = ChannelMask.random(tiny_qwen3.model.config, n_pairs=3, seed=123, pair_layout="adjacent")
    path = mask.save(tmp_path / "m")
    back = ChannelMask.load(path)
    assert torch.equal(back.mask, mask.mask) and back.pair_layout == "adjacent" and back.n_pairs == 3
    assert back.id == mask.id and back.meta["seed"] == 123


@pytest.mark.parametrize("layout", ["rotate_half", "adjacent"])
def test_random_mask_pairs(tiny_qwen3, layout):
    cfg = tiny_qwen3.model.config
    m = ChannelMask.random(cfg, n_pairs=3, seed=42, pair_layout=layout).mask
    d = cfg.head_dim
    assert bool((m.sum(-1) == 6).all())
    if layout == "rotate_half":
        assert torch.equal(m[..., : d // 2], m[..., d // 2 :])
    else:
        assert torch.equal(m[..., 0::2], m[..., 1::2])
    assert not torch.equal(m, ChannelMask.random(cfg, n_pairs=3, seed=43, pair_layout=layout).mask)
    assert torch.equal(m, ChannelMask.random(cfg, n_pairs=3, seed=42, pair_layout=layout).mask)


def test_fused_read_path_refuses_other_attention(tiny_qwen3):
    model = tiny_qwen3.model
    assert model.config._attn_implementation == "sdpa"
    cache = QuantizedKVCache(model.config, KVQuantConfig.kivi(), read_path="fused")
    with pytest.raises(RuntimeError, match="fcboost_fused"):
        model(torch.randint(0, 256, (1, 8)), past_key_values=cache)
