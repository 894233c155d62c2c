"""Drive the decode-attention kernels for an Nsight Compute profile (one shape, one method).

ncu --launch-skip 2 --launch-count 1 ... python benchmarks/ncu_decode_attention.py kivi 8 32768
Extra ``key=value`` arguments go to ``decode_attention``; ``gluon=True`` runs the Gluon page kernel,
with ``stages=N``, ``maxnreg=N`` and ``dup=False`` as its knobs (else the launcher's defaults).
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
    "static_f8_keys": KVQuantConfig.static(n_boost=16, boost_values=False),
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
    if kw.pop("gluon", False):
        g = {k: kw.pop(k) for k in ("stages", "maxnreg", "dup") if k in kw}  # else the launcher's defaults
        kw.update(page_impl="gluon", _gluon=g)
    q = torch.randn(B, 32, 128, device=dev, dtype=torch.bfloat16)
    kn, vn = (torch.randn(B, 8, 128, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        decode_attention(q, st, 128**-0.5, kn, vn, **kw)
    torch.cuda.synchronize()
