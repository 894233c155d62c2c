"""A left-padded batch gives the same greedy tokens as its prompts one by one, for every preset."""

import pytest
import torch

from fcboost import ChannelMask, KVQuantConfig, QuantizedKVCache

WORDS = (
    "the history of the city begins with a small settlement on the river where traders from the "
    "north met farmers from the valley and over many centuries the market grew into a town "
).split()


def _prompts(tok):
    prompts = []
    for n_words in (15, 90, 160, 230):  # ~20 to ~300 tokens
        prompts.append(" ".join(WORDS[i % len(WORDS)] for i in range(n_words)))
    lengths = [len(tok(p).input_ids) for p in prompts]
    assert min(lengths) >= 15 and max(lengths) <= 300, lengths
    return prompts


@pytest.mark.parametrize("preset", ["kivi", "kitty", "static_bv", "fp16"])
def test_left_padded_batch_equals_one_by_one(smollm2, preset):
    model, tok = smollm2.model, smollm2.tokenizer
    cfg = model.config
    qcfg, mask = {
        "kivi": (KVQuantConfig.kivi(), None),
        "kitty": (KVQuantConfig.kitty(n_boost=8), None),
        "static_bv": (KVQuantConfig.static(boost_values=True), ChannelMask.random(cfg, n_pairs=4, seed=42)),
        "fp16": (KVQuantConfig.fp16(), None),
    }[preset]
    prompts = _prompts(tok)
    tok.padding_side = "left"
    gen = dict(max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        cache = QuantizedKVCache(cfg, qcfg, mask=mask)
        out = model.generate(**batch, past_key_values=cache, **gen)
        layer = cache.layers[0]
        layer.flush()
        n_pad = (batch.attention_mask == 0).sum(-1).tolist()
        assert layer.n_pad == n_pad  # inferred from generate's position_ids
        for i, p in enumerate(prompts):
            single = tok([p], return_tensors="pt")
            one = model.generate(**single, past_key_values=QuantizedKVCache(cfg, qcfg, mask=mask), **gen)
            new_batch = out[i, batch.input_ids.shape[1] :]
            new_one = one[0, single.input_ids.shape[1] :]
            assert torch.equal(new_batch, new_one), (
                f"{preset} prompt {i}: {new_batch.tolist()} != {new_one.tolist()}"
            )
