"""The value planes' interleaved storage order (fcboost.quant.layout) against hand indexing."""

from __future__ import annotations

import pytest
import torch

from fcboost.quant.layout import from_tokens, steps, to_tokens, write_tokens


def test_entry_is_byte_c_of_token_64s_4m_j():
    v = torch.randint(0, 256, (2, 3, 130, 32), dtype=torch.uint8)
    il = from_tokens(v)
    assert il.shape == (2, 3, 3, 4, 32, 16) and steps(130) == 3
    for s, j, c, m in [(0, 0, 0, 0), (1, 3, 31, 15), (2, 1, 5, 0), (0, 2, 7, 9)]:
        t = 64 * s + 4 * m + j
        assert il[1, 2, s, j, c, m] == (v[1, 2, t, c] if t < 130 else 0)
    flat = il[0, 1].reshape(-1)  # the byte offset the kernels compute (fcboost.kernels.vlayout)
    for t, c in [(0, 0), (63, 31), (64, 1), (129, 17)]:
        assert flat[(t // 64) * 64 * 32 + (t % 4) * 16 * 32 + 16 * c + (t % 64) // 4] == v[0, 1, t, c]
    assert torch.equal(to_tokens(il, 130), v)


def test_write_tokens_touches_only_its_tokens():
    x = torch.randint(1, 256, (3, 70, 4), dtype=torch.uint8)
    v = torch.zeros(3, 2, 4, 4, 16, dtype=torch.uint8)
    write_tokens(v, 50, x)
    back = to_tokens(v)
    assert torch.equal(back[:, 50:120], x)
    assert back[:, :50].eq(0).all() and back[:, 120:].eq(0).all()
    with pytest.raises(ValueError, match="do not fit"):
        write_tokens(v, 100, x)
    with pytest.raises(ValueError, match="interleaved"):
        to_tokens(torch.zeros(3, 64, 4, dtype=torch.uint8))
