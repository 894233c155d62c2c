import pytest
import torch

from fcboost.quant.core import dequantize, pack, quantize, sqnr_db, unpack


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("n", [1, 3, 4, 17, 128, 129])
def test_pack_unpack_roundtrip_bitwise(bits, n):
    g = torch.Generator().manual_seed(n * 10 + bits)
    codes = torch.randint(0, 2**bits, (3, 5, n), generator=g, dtype=torch.uint8)
    for dim in (-1, 1):
        c = codes if dim == -1 else codes.transpose(1, 2).contiguous()
        packed = pack(c, bits, dim=dim)
        assert packed.dtype == torch.uint8
        assert packed.shape[dim] == -(-c.shape[dim] * bits // 8)
        assert torch.equal(unpack(packed, bits, c.shape[dim], dim=dim), c)


def test_pack_layout_little_end_first():
    # codes 1, 2, 3, 0 at 2 bits -> 0b00_11_10_01
    packed = pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2)
    assert packed.tolist() == [0b00111001]


def test_quantize_hand_computed():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    q = quantize(x, bits=2, dim=-1)
    assert q.scale.item() == 1.0 and q.zero.item() == 0.0
    assert q.codes.tolist() == [[0, 1, 2, 3]]
    assert torch.equal(dequantize(q), x)


@pytest.mark.parametrize("bits,floor_db", [(2, 6.0), (4, 18.0), (8, 40.0)])
@pytest.mark.parametrize("dim", [0, -1])
def test_sqnr_floor(bits, floor_db, dim):
    # Gaussian data: uniform quantizer over min/max gains ~6 dB per bit
    x = torch.randn(256, 128, generator=torch.Generator().manual_seed(0))
    q = quantize(x, bits, dim=dim, group_size=32)
    assert q.codes.max() <= 2**bits - 1
    assert sqnr_db(x, dequantize(q)) > floor_db


def test_error_bounded_by_half_step():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    q = quantize(x, 2, dim=0)
    err = (dequantize(q) - x).abs()
    # half a step plus fp16 rounding of scale/zero
    assert bool((err <= q.scale.float() * 0.5 + 1e-2).all())


def test_constant_group_no_nan():
    x = torch.full((4, 8), 3.25)
    for bits in (2, 4, 8):
        q = quantize(x, bits, dim=-1)
        out = dequantize(q)
        assert not torch.isnan(out).any()
        assert torch.allclose(out, x)


def test_bad_bits_and_group():
    with pytest.raises(ValueError, match="bits=3"):
        quantize(torch.randn(4, 4), 3)
    with pytest.raises(ValueError, match="group_size=3"):
        quantize(torch.randn(4, 4), 2, group_size=3)
