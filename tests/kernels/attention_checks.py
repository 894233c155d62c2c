"""Shared checks of a fused decode-attention kernel against the PyTorch reference (v1 and v2 tests)."""

from __future__ import annotations

import torch

from fcboost.kernels.decode_attention import decode_attention_reference
from fcboost.kernels.state import random_state
from fcboost.quant.config import KVQuantConfig

TOL = {torch.float16: 1e-3, torch.bfloat16: 6e-3}


def make_cfg(method: str, **kw) -> KVQuantConfig:
    return {
        "kivi": KVQuantConfig.kivi(**kw),
        "kitty": KVQuantConfig.kitty(n_boost=16, **kw),
        "static": KVQuantConfig.static(n_boost=16, boost_values=True, **kw),
        "static_keys": KVQuantConfig.static(n_boost=16, boost_values=False, **kw),
    }[method]


def check_attention(decode_attention, cfg, lengths, H, G, D, dtype, device, new=True, seed=0, **kw):
    st = random_state(cfg, lengths, H, D, dtype, device, seed=seed)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    B = len(lengths)
    q = torch.randn(B, H * G, D, generator=g, device=device).to(dtype)
    kn = vn = None
    if new:
        kn, vn = (torch.randn(B, H, D, generator=g, device=device).to(dtype) for _ in range(2))
    out = decode_attention(q, st, D**-0.5, kn, vn, **kw)
    ref = decode_attention_reference(q, st, D**-0.5, kn, vn)
    assert out.shape == (B, H * G, D) and out.dtype == dtype
    assert torch.isfinite(out).all()
    err = float((out.float() - ref).norm() / ref.norm())
    assert err < TOL[dtype], f"{cfg.selector} {dtype} D={D} G={G} lengths={lengths}: rel L2 {err:.2e}"
    per_row = ((out.float() - ref).norm(dim=(1, 2)) / ref.norm(dim=(1, 2))).max()
    assert per_row < 2 * TOL[dtype], f"worst row rel L2 {per_row:.2e}"
