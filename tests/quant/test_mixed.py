import pytest
import torch

from fcboost.quant.core import dequantize, quantize, sqnr_db
from fcboost.quant.mixed import (
    dequantize_key_pages,
    dequantize_values,
    quantize_key_pages,
    quantize_values,
)
from fcboost.quant.selectors import DynamicMagnitude


def _boost(H, D, nb, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(H, D, dtype=torch.bool)
    for h in range(H):
        m[h, torch.randperm(D, generator=g)[:nb]] = True
    return m


def test_keys_without_boost_equal_plain_per_channel_quantization():
    k = torch.randn(2, 3, 128, 64)
    pk = quantize_key_pages(k, 2, 4, None, 0)
    ref = dequantize(quantize(k, 2, dim=-2))
    assert torch.equal(dequantize_key_pages(pk, 128, 2, 4), ref)


@pytest.mark.parametrize("D,nb", [(64, 8), (128, 16), (128, 6)])
def test_boosted_key_channels_match_4bit_quantization(D, nb):
    H = 2
    k = torch.randn(H, 3, 128, D)  # (H, pages, P, D)
    m = _boost(H, D, nb, 0)
    pk = quantize_key_pages(k, 2, 4, m[:, None], nb)
    deq = dequantize_key_pages(pk, 128, 2, 4)
    ref2 = dequantize(quantize(k, 2, dim=-2))
    ref4 = dequantize(quantize(k, 4, dim=-2))
    sel = m[:, None, None, :].expand_as(k)
    assert torch.equal(deq[sel], ref4[sel])
    assert torch.equal(deq[~sel], ref2[~sel])
    assert pk.lo.shape == (H, 3, 32, D) and pk.hi.shape == (H, 3, 32, nb)


@pytest.mark.parametrize("nb", [8, 6])
def test_boosted_values_form_their_own_group(nb):
    H, N, D = 3, 40, 64
    v = torch.randn(H, N, D)
    m = _boost(H, D, nb, 1)
    pv = quantize_values(v, 2, 4, m, nb)
    idx = torch.argsort((~m).to(torch.uint8), dim=-1, stable=True)[:, :nb]
    deq = dequantize_values(pv, D, 2, 4, idx)
    for h in range(H):
        base = v[h][:, ~m[h]]
        boost = v[h][:, m[h]]
        assert torch.equal(deq[h][:, ~m[h]], dequantize(quantize(base, 2, dim=-1)))
        assert torch.equal(deq[h][:, m[h]], dequantize(quantize(boost, 4, dim=-1)))
    assert pv.scale.shape == (H, N, 2)


def test_boost_improves_sqnr_on_outlier_channels():
    k = torch.randn(1, 1, 128, 64)
    k[..., :8] *= 20  # outlier channels
    m = torch.zeros(1, 1, 64, dtype=torch.bool)
    m[..., :8] = True
    plain = dequantize_key_pages(quantize_key_pages(k, 2, 4, None, 0), 128, 2, 4)
    boosted = dequantize_key_pages(quantize_key_pages(k, 2, 4, m, 8), 128, 2, 4)
    assert sqnr_db(k, boosted) > sqnr_db(k, plain) + 3


def test_kitty_selects_exact_top_channels():
    g = torch.Generator().manual_seed(3)
    pages = torch.randn(4, 5, 128, 64, generator=g)  # (H, n_pages, P, D)
    sel = DynamicMagnitude(16).key_boost(pages)
    assert sel.shape == (4, 5, 64) and bool((sel.sum(-1) == 16).all())
    for h in range(4):
        for p in range(5):
            score = [float(pages[h, p, :, c].abs().mean()) for c in range(64)]
            top = sorted(range(64), key=lambda c: -score[c])[:16]
            assert set(torch.nonzero(sel[h, p]).flatten().tolist()) == set(top)
