"""PackedKVState's byte count (the benchmark's bandwidth figures divide by it) against a hand count."""

from __future__ import annotations

import torch

from fcboost.kernels.state import random_state
from fcboost.quant.config import KVQuantConfig


def test_nbytes_read_hand_count():
    # S=32, P=W=128, one row of 1000 tokens, H=2, D=64: 7 key pages, 840 quantized values,
    # 16 bits: sink K and V (2 x 32) + 72 waiting keys + 128 window values
    st = random_state(KVQuantConfig.kivi(), [1000], 2, 64, torch.float16)
    assert (int(st.n_pages[0]), int(st.n_vq[0])) == (7, 840)
    sixteen = (2 * 32 + 72 + 128) * 2 * 64 * 2
    keys = 7 * 2 * (32 * 64 + 2 * 64 * 2)  # codes (P/4 x D bytes) + fp16 scale and zero per channel
    values = 840 * 2 * (64 // 4 + 2 * 2)  # codes (D/4 bytes, interleaved storage) + fp16 scale and zero
    assert st.nbytes_read() == sixteen + keys + values
    # the interleaved value storage holds whole 64-token steps; only real tokens count
    assert st.v_lo.shape[2:] == (840 // 64 + 1, 4, 16, 16)
