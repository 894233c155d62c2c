"""build_mask / profile_ca / get_or_build_mask: artifacts, provenance, cache behaviour, errors."""

from __future__ import annotations

import pytest
import torch

import fcboost.masks.profile as profile
from fcboost.masks.mask import ChannelMask
from fcboost.masks.profile import MaskSpec, build_mask, get_or_build_mask, mask_key, profile_ca
from fcboost.models import LoadedModel


def _chunks(n=2, t=60):
    return [torch.randint(0, 256, (t,), generator=torch.Generator().manual_seed(s)) for s in range(n)]


@pytest.mark.parametrize("layout", ["rotate_half", "adjacent"])
def test_profile_ca_artifact(tiny_qwen3, layout, tmp_path):
    mask = profile_ca(
        tiny_qwen3.model,
        None,
        _chunks(),
        n_pairs=3,
        pair_layout=layout,
        n_sequences=2,
        seq_len=60,
        n_positions=10,
        top_k=8,
        fingerprint=tiny_qwen3.fingerprint,
        progress=False,
    )
    assert mask.shape == (2, 2, 32) and mask.n_pairs == 3
    assert bool((mask.mask.sum(-1) == 6).all())
    assert mask.scores["ca_q"].shape == (2, 4, 16) and mask.scores["ca_kv"].shape == (2, 2, 16)
    torch.testing.assert_close(mask.scores["ca_kv"], mask.scores["ca_q"].view(2, 2, 2, 16).mean(2))
    top = mask.scores["ca_kv"].topk(3, dim=-1).indices  # chosen pairs = top CA pairs
    for layer in range(2):
        for h in range(2):
            for i in top[layer, h].tolist():
                chans = (i, i + 16) if layout == "rotate_half" else (2 * i, 2 * i + 1)
                assert all(bool(mask.mask[layer, h, c]) for c in chans)
    assert ((mask.scores["ca_q"] >= 0) & (mask.scores["ca_q"] <= 1)).all()
    meta = mask.meta
    assert meta["method"] == "ca" and meta["model"] == tiny_qwen3.fingerprint
    assert meta["spec"]["top_k"] == 8 and meta["spec"]["pair_layout"] == layout
    assert meta["ca"]["n_positions_used"] == [10, 10] and len(meta["calibration"]["chunks_hash"]) == 16
    assert set(meta["versions"]) == {"torch", "transformers"}
    back = ChannelMask.load(mask.save(tmp_path / "m"))
    assert torch.equal(back.mask, mask.mask) and back.meta["spec"] == meta["spec"]
    torch.testing.assert_close(back.scores["ca_q"], mask.scores["ca_q"])


def test_n_pairs_too_large(tiny_qwen3):
    with pytest.raises(ValueError, match=r"n_pairs=17 must be in \[1, head_dim/2=16\]"):
        profile_ca(
            tiny_qwen3.model, None, _chunks(), n_pairs=17, n_sequences=2, seq_len=60, top_k=8, progress=False
        )


def test_spec_validation():
    with pytest.raises(ValueError, match="method='kitty' is unknown"):
        MaskSpec(method="kitty")
    with pytest.raises(ValueError, match="pair_layout='interleaved' is unknown"):
        MaskSpec(pair_layout="interleaved")


def test_calibration_too_short(tiny_qwen3, char_tok, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 150 + "\n")
    with pytest.raises(ValueError, match=r"too short: it gave 1 chunk.*n_sequences=2 x seq_len=100"):
        profile_ca(
            tiny_qwen3.model,
            char_tok,
            str(path),
            n_pairs=2,
            n_sequences=2,
            seq_len=100,
            min_tokens=50,
            top_k=8,
            progress=False,
        )


@pytest.mark.parametrize("method", ["magnitude", "energy", "random"])
def test_other_methods(tiny_qwen3, method):
    spec = MaskSpec(method, 2, "rotate_half", n_sequences=2, seq_len=60, min_tokens=10)
    mask = build_mask(tiny_qwen3.model, None, _chunks(), spec, tiny_qwen3.fingerprint, progress=False)
    assert bool((mask.mask.sum(-1) == 4).all()) and mask.meta["method"] == method
    assert mask.meta["model"] == tiny_qwen3.fingerprint and mask.meta["spec"]["method"] == method
    if method != "random":
        assert mask.scores[f"{method}_kv"].shape == (2, 2, 16)


def test_get_or_build_mask_caches(tiny_qwen3, char_tok, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FCBOOST_DATA", str(text_file.parent.parent))
    loaded = LoadedModel(tiny_qwen3.model, char_tok, tiny_qwen3.fingerprint)
    spec = MaskSpec(
        "ca",
        2,
        "rotate_half",
        "wikitext-2/valid.txt",
        n_sequences=2,
        seq_len=200,
        min_tokens=100,
        n_positions=8,
        top_k=8,
    )
    first = get_or_build_mask(tmp_path / "masks", loaded, spec, progress=False)
    files = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert files == [f"{first.meta['cache_key']}.json", f"{first.meta['cache_key']}.safetensors"]
    assert (
        first.meta["calibration"]["file"] == str(text_file)
        and len(first.meta["calibration"]["data_hash"]) == 16
    )

    def boom(*a, **kw):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(profile, "build_mask", boom)
    again = get_or_build_mask(tmp_path / "masks", loaded, spec, progress=False)
    assert torch.equal(again.mask, first.mask)
    # another spec field, another data file content or another model -> another key
    k0 = mask_key(loaded.fingerprint, spec, "h")
    assert mask_key(loaded.fingerprint, MaskSpec(**{**spec.__dict__, "top_k": 16}), "h") != k0
    assert mask_key(loaded.fingerprint, spec, "other") != k0
    assert mask_key({**loaded.fingerprint, "revision": "seed1"}, spec, "h") != k0


def test_cached_mask_for_another_model_shape(tiny_qwen3, tiny_llama, tmp_path):
    spec = MaskSpec("random", 2, "rotate_half", seed=1)
    loaded = LoadedModel(tiny_qwen3.model, None, tiny_qwen3.fingerprint)
    key = mask_key(loaded.fingerprint, spec, None)
    ChannelMask.random(tiny_llama.model.config, 2, seed=1).save(
        tmp_path / f"{key}.safetensors"
    )  # wrong shape
    with pytest.raises(
        ValueError, match=r"shape \(layers, kv_heads, head_dim\)=\(2, 2, 16\) does not fit .*\(2, 2, 32\)"
    ):
        get_or_build_mask(tmp_path, loaded, spec)
