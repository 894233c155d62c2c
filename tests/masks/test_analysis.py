"""Section 4.4 analysis: helpers against scipy / hand values, and the figures on a tiny model."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from fcboost.masks.analysis import analysis_4_4, jaccard, page_top_channels, spearman
from fcboost.masks.capture import run_capture
from fcboost.masks.mask import ChannelMask
from fcboost.masks.plots import save_pictures
from fcboost.masks.profile import MaskSpec, build_mask


def test_jaccard_and_spearman_helpers():
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)
    assert jaccard(a, b).tolist() == [1 / 3, 1.0]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 20, generator=gen), torch.randn(5, 20, generator=gen)
    y[0] = x[0] * 2 + 0.1 * y[0]
    y[1, :5] = y[1, 0]  # ties
    want = torch.tensor([spearmanr(x[i], y[i]).statistic for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(spearman(x, y), want)


def test_page_top_channels():
    k = torch.zeros(1, 1, 260, 8)
    k[0, 0, :128, 3] = -5  # page 0: channel 3 largest |k|, then 6
    k[0, 0, :128, 6] = 2
    k[0, 0, 128:256, 0] = 1  # page 1: channels 0 and 7
    k[0, 0, 128:256, 7] = 4
    k[0, 0, 256:, 5] = 100  # partial page: ignored
    top = page_top_channels(k, 128, 2)
    assert top.shape == (1, 1, 2, 8)
    assert top[0, 0, 0].nonzero().flatten().tolist() == [3, 6]
    assert top[0, 0, 1].nonzero().flatten().tolist() == [0, 7]


def test_analysis_on_tiny_model(tiny_qwen3, tmp_path):
    model = tiny_qwen3.model
    chunks = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (70, 50)]
    kw = dict(n_sequences=2, seq_len=70, min_tokens=10, n_positions=8, top_k=8)
    masks = {
        "ca_rotate_half": build_mask(
            model, None, chunks, MaskSpec("ca", 4, "rotate_half", **kw), progress=False
        ),
        "ca_adjacent": build_mask(model, None, chunks, MaskSpec("ca", 4, "adjacent", **kw), progress=False),
        "magnitude": build_mask(
            model, None, chunks, MaskSpec("magnitude", 4, "rotate_half", **kw), progress=False
        ),
        "random": ChannelMask.random(model.config, 4, seed=42),
    }
    res = analysis_4_4(model, None, chunks, masks, page_size=16, n_top=8, progress=False)
    # independent per-page Jaccard: loop over captured keys
    keys = {0: [], 1: []}
    run_capture(model, chunks, lambda i, q, k: keys[i].append(k[0].clone()), progress=False)
    for name, m in masks.items():
        vals = []
        for layer in range(2):
            for k in keys[layer]:
                for h in range(2):
                    for p in range(k.shape[1] // 16):
                        top = set(k[h, p * 16 : (p + 1) * 16].abs().mean(0).topk(8).indices.tolist())
                        chosen = set(m.mask[layer, h].nonzero().flatten().tolist())
                        vals.append(len(top & chosen) / len(top | chosen))
        vals = torch.tensor(vals, dtype=torch.float64)
        assert res["page_jaccard"][name]["n"] == len(vals) == 2 * 2 * (4 + 3)
        assert res["page_jaccard"][name]["mean"] == pytest.approx(float(vals.mean()))
        assert res["page_jaccard"][name]["std"] == pytest.approx(float(vals.std()))
    # Spearman of CA vs per-pair mean |k|, per (layer, KV head)
    assert set(res["spearman_ca_vs_magnitude"]) == {"ca_rotate_half", "ca_adjacent"}
    mag = masks["magnitude"].scores["magnitude_kv"]  # same data, rotate_half pairs
    want = [
        spearmanr(masks["ca_rotate_half"].scores["ca_kv"][i, h], mag[i, h]).statistic
        for i in range(2)
        for h in range(2)
    ]
    assert res["spearman_ca_vs_magnitude"]["ca_rotate_half"]["mean"] == pytest.approx(
        float(torch.tensor(want).mean())
    )
    assert len(res["mask_overlap"]) == 6
    o = res["mask_overlap"]["ca_rotate_half|magnitude"]
    assert o["mean"] == pytest.approx(
        float(jaccard(masks["ca_rotate_half"].mask, masks["magnitude"].mask).mean())
    )
    same = analysis_4_4(
        model, None, chunks[:1], {"a": masks["random"], "b": masks["random"]}, 16, 8, progress=False
    )
    assert same["mask_overlap"]["a|b"] == {"mean": 1.0, "std": 0.0, "n": 4}
    # pictures
    pics = save_pictures(masks["ca_rotate_half"], tmp_path / "ca.safetensors")
    assert [p.name for p in pics] == ["ca.heatmap.png", "ca.by_frequency.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pics)


def test_analysis_bad_input(tiny_qwen3, tiny_llama):
    other = ChannelMask.random(tiny_llama.model.config, 2, seed=0)
    with pytest.raises(ValueError, match="does not fit a model"):
        analysis_4_4(tiny_qwen3.model, None, [torch.arange(40)], {"x": other}, page_size=16, progress=False)
    ok = ChannelMask.random(tiny_qwen3.model.config, 2, seed=0)
    with pytest.raises(ValueError, match="no chunk holds a full page of 128 tokens"):
        analysis_4_4(tiny_qwen3.model, None, [torch.arange(40)], {"x": ok}, progress=False)
