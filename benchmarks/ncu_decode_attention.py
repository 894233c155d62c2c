"""Drive the decode-attention kernels for an Nsight Compute profile (one shape, one method).

ncu --launch-skip 3 --launch-count 3 ... python benchmarks/ncu_decode_attention.py kivi 8 32768
Extra ``key=value`` arguments go to ``decode_attention``; ``gluon_il=True`` runs the Gluon page kernel
on interleaved value planes, with ``pf=N`` (L2 prefetch distance) and ``maxnreg=N`` as its knobs.
"""

from __future__ import annotations

import sys

import torch

from fcboost.kernels.decode_attention import decode_attention
from fcboost.kernels.state import random_state
from fcboost.quant.config import KVQuantConfig

METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "kitty16": KVQuantConfig.kitty(n_boost=16),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}

if __name__ == "__main__":
    name, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    kw = dict(a.split("=") for a in sys.argv[4:])
    kw = {
        k: (int(v) if v.lstrip("-").isdigit() else v == "True" if v in ("True", "False") else float(v))
        for k, v in kw.items()
    }
    cfg, dev = METHODS[name], torch.device("cuda")
    st = random_state(cfg, [T - 1] * B, 8, 128, torch.bfloat16, dev, seed=1)
    if kw.pop("gluon_il", False):
        from fcboost.kernels.attention_page_gluon import interleave_values

        g = {
            "vil2": interleave_values(st.v_lo),
            "pf": kw.pop("pf", 0),
            "stages": kw.pop("stages", 0),
            "maxnreg": kw.pop("maxnreg", 168),
        }
        if st.v_hi is not None:
            g["vhil"] = interleave_values(st.v_hi)
        kw.update(page_impl="gluon", _gluon=g)
    q = torch.randn(B, 32, 128, device=dev, dtype=torch.bfloat16)
    kn, vn = (torch.randn(B, 8, 128, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        decode_attention(q, st, 128**-0.5, kn, vn, **kw)
    torch.cuda.synchronize()
