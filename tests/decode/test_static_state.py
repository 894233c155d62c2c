"""The static cache's device-side update rules give the reference QuantizedLayer's state, bit for bit."""

from __future__ import annotations

import pytest
import torch

from fcboost.cache.layer import QuantizedLayer
from fcboost.cache.static import StaticQuantLayer, bytes_per_row, quant_storage_shapes
from fcboost.masks.mask import ChannelMask
from fcboost.quant.config import KVQuantConfig
from fcboost.quant.layout import steps, to_tokens
from fcboost.quant.mixed import boost_index
from fcboost.quant.selectors import DynamicMagnitude, NoBoost, StaticMask

H, D = 2, 64
SMALL = dict(n_sink=4, page_size=16, window=8)


def _cfg(method: str) -> KVQuantConfig:
    return {
        "kivi": KVQuantConfig.kivi(**SMALL),
        "kitty": KVQuantConfig.kitty(n_boost=8, **SMALL),
        "static": KVQuantConfig.static(**SMALL),
        "static6": KVQuantConfig.static(**SMALL),  # 3 pairs: the value hi plane ends in a padded byte
    }[method]


def _layers(method, B, max_len, dtype, device, g):
    cfg = _cfg(method)
    bidx = None
    if method.startswith("static"):
        nb = 6 if method == "static6" else 8
        m = torch.zeros(H, D, dtype=torch.bool)
        for h in range(H):
            m[h, torch.randperm(D, generator=g)[:nb]] = True
        sel, bidx = StaticMask(m, True), boost_index(m, nb).to(torch.int16)
    else:
        sel = DynamicMagnitude(8) if method == "kitty" else NoBoost()
    ref = QuantizedLayer(cfg, sel, 0, bidx)
    st = StaticQuantLayer(cfg, 0, B, max_len, H, D, dtype, device, bidx)
    return ref, st


@pytest.mark.parametrize("method", ["kivi", "kitty", "static", "static6"])
def test_prefill_and_decode_state_equals_reference(method, device):
    g = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16
    lens = [2, 21, 37]  # inside the sink, mid page, past a page + window
    B, T, steps = len(lens), max(lens), 40
    ref, st = _layers(method, B, T + steps, dtype, device, g)
    ref.n_pad = [T - n for n in lens]
    k = (torch.randn(B, H, T + steps, D, generator=g) * 2).to(dtype).to(device)
    v = torch.randn(B, H, T + steps, D, generator=g).to(dtype).to(device)
    ref.update(k[:, :, :T], v[:, :, :T])
    for b, n in enumerate(lens):  # the static cache gets each row's real tokens, in two chunks
        c = n // 2 + 1
        st.prefill_row(b, k[b, :, T - n : T - n + c], v[b, :, T - n : T - n + c])
        st.prefill_row(b, k[b, :, T - n + c : T], v[b, :, T - n + c : T])
    for t in range(T, T + steps):
        ref.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        st.append_decode(k[:, :, t], v[:, :, t])
    ref.flush()
    assert st.n_real.tolist() == ref.n_real
    assert st.n_pages.tolist() == [ref.n_pages(b) for b in range(B)]
    assert st.n_vq.tolist() == [ref.n_vq(b) for b in range(B)]
    assert max(ref.n_pages(b) for b in range(B)) >= 3 and min(ref.n_pages(b) for b in range(B)) >= 1
    for b in range(B):
        npg, nvq = ref.n_pages(b), ref.n_vq(b)
        for name in ("k_lo", "k_hi", "k_idx", "k_scale", "k_zero"):
            r = getattr(ref, name)
            if r is not None:
                assert torch.equal(getattr(st, name)[b, :, :npg].cpu(), r[b, :, :npg].cpu()), name
        for name in ("v_scale", "v_zero"):
            r = getattr(ref, name)
            if r is not None:
                assert torch.equal(getattr(st, name)[b, :, :nvq].cpu(), r[b, :, :nvq].cpu()), name
        for name in ("v_lo", "v_hi"):  # interleaved: the real tokens
            r = getattr(ref, name)
            if r is not None:
                assert torch.equal(to_tokens(getattr(st, name)[b], nvq).cpu(), to_tokens(r[b], nvq).cpu()), (
                    name
                )
        rk, rv = ref.dequantized(b)
        sk, sv = st.row_kv(b)
        assert torch.equal(sk.cpu(), rk.cpu()) and torch.equal(sv.cpu(), rv.cpu())


def test_storage_bytes_and_bad_input(device):
    cfg = KVQuantConfig.kivi()
    sh = quant_storage_shapes(cfg, 0, 8, 128, 4096)
    assert sh["k_lo"][0] == (8, (4096 - 33) // 128 + 1, 32, 128)
    assert sh["v_lo"][0] == (8, steps(4096 - 32 - 128 + 1), 4, 32, 16)  # whole 64-token steps
    assert sh["v_scale"][0] == (8, 64 * steps(4096 - 32 - 128 + 1), 1)
    from transformers import AutoConfig

    from fcboost.models import RANDOM_CONFIGS

    conf = AutoConfig.for_model(**RANDOM_CONFIGS["qwen3-8b"])
    bf16 = bytes_per_row(conf, None, 32768)
    assert bf16 == 2 * 36 * 8 * 32768 * 128 * 2
    ratio = bf16 / bytes_per_row(conf, cfg, 32768)
    assert 6.5 < ratio < 7.2  # 72 bytes per token and head against 512, plus 16-bit sink/buffers
    with pytest.raises(ValueError, match="2-bit"):
        StaticQuantLayer(KVQuantConfig.kivi(key_bits=4), 0, 1, 64, H, D, torch.float16, device)
    unsorted = torch.tensor([[5, 2] + list(range(6, 20))] * H, dtype=torch.int16)  # slot order broken
    with pytest.raises(ValueError, match="strictly ascending"):
        StaticQuantLayer(KVQuantConfig.static(), 0, 1, 64, H, D, torch.float16, device, unsorted)
    with pytest.raises(ValueError, match="needs a ChannelMask"):
        from fcboost.cache.static import StaticKVCache

        StaticKVCache(
            conf, KVQuantConfig.static(), None, max_batch=1, max_len=64, dtype=torch.float16, device="meta"
        )
    assert ChannelMask  # imported for the static-mask cache tests below
