"""The single-pass simulation equals the token-by-token cache; metrics behave as metrics."""

import pytest
import torch

from fcboost import ChannelMask, KVQuantConfig
from fcboost.eval.fidelity import fidelity, fp16_logprobs, quantized_logits


def _presets(config, n_boost, n_pairs):
    mask = ChannelMask.random(config, n_pairs=n_pairs, seed=123)
    return {
        "fp16": (KVQuantConfig.fp16(), None),
        "kivi": (KVQuantConfig.kivi(), None),
        "kitty": (KVQuantConfig.kitty(n_boost=n_boost), None),
        "static_bv": (KVQuantConfig.static(boost_values=True), mask),
    }


@pytest.mark.parametrize("preset", ["fp16", "kivi", "kitty", "static_bv"])
def test_simulation_equals_token_by_token_tiny(tiny_qwen3, preset):
    model = tiny_qwen3.model
    qcfg, mask = _presets(model.config, 4, 2)[preset]
    ids = torch.randint(0, 256, (1, 430), generator=torch.Generator().manual_seed(1))
    dec = quantized_logits(model, ids, qcfg, mask, prefill=64, mode="decode")
    sim = quantized_logits(model, ids, qcfg, mask, prefill=64, mode="simulate")
    torch.testing.assert_close(sim, dec, atol=1e-5, rtol=1e-5)


def test_simulation_matches_token_by_token_smollm2(smollm2, wikitext_valid):
    """On a 30-layer model the two modes differ by fp rounding (batched vs one-token matmuls), and a
    rounding difference that crosses a quantization boundary flips a 2-bit code. So: logits equal to
    fp tolerance before the first flush is visible (t < 161), and afterwards the same metrics."""
    model, tok = smollm2.model, smollm2.tokenizer
    ids = tok(wikitext_valid.read_text()[:6000], return_tensors="pt").input_ids[:, :420]
    ref = torch.log_softmax(model(ids, use_cache=False).logits[0].float(), -1)
    for qcfg in (KVQuantConfig.kivi(), KVQuantConfig.kitty(n_boost=8)):
        dec = torch.log_softmax(quantized_logits(model, ids, qcfg, None, mode="decode")[0].float(), -1)
        sim = torch.log_softmax(quantized_logits(model, ids, qcfg, None, mode="simulate")[0].float(), -1)
        torch.testing.assert_close(sim[:161], dec[:161], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(sim[:161], ref[:161], atol=2e-4, rtol=1e-4)
        late = slice(256, None)
        kl = {
            name: float((ref[late].exp() * (ref[late] - x[late])).sum(-1).mean())
            for name, x in (("sim", sim), ("dec", dec))
        }
        assert kl["sim"] > 1e-3  # quantization is visible
        assert abs(kl["sim"] - kl["dec"]) < 0.15 * kl["dec"], (qcfg.selector, kl)
        same_top1 = (sim[late].argmax(-1) == dec[late].argmax(-1)).float().mean()
        assert same_top1 > 0.95, (qcfg.selector, float(same_top1))


def test_metrics(tiny_qwen3):
    model = tiny_qwen3.model
    chunk = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(2))
    same = fidelity(model, [chunk], KVQuantConfig.fp16(), min_pos=256)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["top1_agree"] == 1.0
    assert same["nll"] == pytest.approx(same["nll_fp16"], abs=1e-5)
    assert same["n_positions"] == 400 - 256 - 1
    q = fidelity(model, [chunk], KVQuantConfig.kivi(), min_pos=256)
    assert q["kl"] > 0
    # independent check of the NLL from the fp16 log-probs
    lp = fp16_logprobs(model, chunk)
    nll = -lp[256:-1].gather(-1, chunk[257:, None]).mean()
    assert q["nll_fp16"] == pytest.approx(float(nll), rel=1e-5)
    with pytest.raises(ValueError, match="min_pos"):
        fidelity(model, [chunk[:100]], KVQuantConfig.kivi(), min_pos=256)
