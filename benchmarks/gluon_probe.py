"""EXPERIMENT (GPU): the Gluon page kernel (``page_impl="gluon"``) vs the Triton one, KIVI layout.

Correctness of both against the PyTorch reference on ragged and equal rows, then CUDA-graph timings
of the whole ``decode_attention`` (page + rest + combine) at the benchmark shapes, over split counts.
Imports only torch, triton and fcboost. ``python benchmarks/gluon_probe.py --out probe.json``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
import triton

from fcboost.kernels.decode_attention import decode_attention, decode_attention_reference
from fcboost.kernels.state import random_state
from fcboost.kernels.timing import graph_us
from fcboost.quant.config import KVQuantConfig

HQ, HKV, D = 32, 8, 128


def interleave_values(v_lo: torch.Tensor) -> torch.Tensor:
    """(B, H, NV, 32) value bytes -> the Gluon kernel's token-interleaved layout (B, H, NV/32, 2, 32, 16):
    per 32-token step s and plane pair p, channel byte c, the 16 tokens 4(8s + n) + 2p + a in the k order
    4(n // 2) + 2a + n % 2 of a ``k_width=4`` operand (a copy made here; the cache would store it so)."""
    B, H, NV, C = v_lo.shape
    pad = (-NV) % 32
    v = torch.nn.functional.pad(v_lo, (0, 0, 0, pad)) if pad else v_lo
    v = v.view(B, H, (NV + pad) // 32, 4, 2, 2, 2, C)  # [s, n // 2, n % 2, p, a, c]
    return v.permute(0, 1, 2, 5, 7, 3, 6, 4).contiguous().view(B, H, -1, 2, C, 16)


def interleave_values_t(v_lo: torch.Tensor) -> torch.Tensor:
    """(B, H, NV, C) value bytes -> the transposed Gluon kernel's layout (B, H, NV/64, 4, C, 16): per
    64-token step, plane j and channel byte c, the 16 tokens 4m + j in order m (a copy made here)."""
    B, H, NV, C = v_lo.shape
    pad = (-NV) % 64
    v = torch.nn.functional.pad(v_lo, (0, 0, 0, pad)) if pad else v_lo
    v = v.view(B, H, (NV + pad) // 64, 16, 4, C)  # [s, m, j, c]
    return v.permute(0, 1, 2, 4, 5, 3).contiguous()


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--splits", default="16,32,64,128,256")
    args = ap.parse_args()
    t0 = time.time()
    dev = torch.device("cuda")
    cfg = KVQuantConfig.kivi()
    scaling = D**-0.5
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "command": " ".join(sys.argv), "commit": os.environ.get("FCBOOST_COMMIT", "unknown"),
           "correctness": [], "timing": []}  # fmt: skip
    for dt in (torch.float16, torch.bfloat16):
        lengths = [32768, 4097, 1000, 289, 161, 33, 1]
        st = random_state(cfg, lengths, HKV, D, dt, dev, seed=3)
        B = len(lengths)
        q = torch.randn(B, HQ, D, device=dev, dtype=dt)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dt) for _ in range(2))
        ref = decode_attention_reference(q, st, scaling, kn, vn)
        e = {
            impl: rel(decode_attention(q, st, scaling, kn, vn, page_impl=impl), ref)
            for impl in ("triton", "gluon")
        }
        e["gluon_vil"] = rel(
            decode_attention(
                q, st, scaling, kn, vn, page_impl="gluon", _gluon={"vil": interleave_values(st.v_lo)}
            ),
            ref,
        )
        e["gluonTn"] = rel(
            decode_attention(q, st, scaling, kn, vn, page_impl="gluon", _gluon={"vil2": None}), ref
        )
        e["gluonT"] = rel(
            decode_attention(
                q, st, scaling, kn, vn, page_impl="gluon", _gluon={"vil2": interleave_values_t(st.v_lo)}
            ),
            ref,
        )
        res["correctness"].append({"dtype": str(dt), "lengths": lengths, "rel_l2": e})
        print("correct", dt, e, flush=True)
    dtype = torch.bfloat16
    for B, T in [(1, 32768), (8, 32768), (32, 8192), (64, 4096), (8, 131072)]:
        q = torch.randn(B, HQ, D, device=dev, dtype=dtype)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dtype) for _ in range(2))
        kf = torch.randn(B, HKV, T, D, device=dev, dtype=dtype)
        sdpa = graph_us(partial(F.scaled_dot_product_attention, q[:, :, None], kf, torch.randn_like(kf),
                                scale=scaling, enable_gqa=True))  # fmt: skip
        del kf
        st = random_state(cfg, [T - 1] * B, HKV, D, dtype, dev, seed=1)
        mt = int((torch.minimum(st.n_pages * cfg.page_size, st.n_vq) // 64).max())
        ref = decode_attention_reference(q, st, scaling, kn, vn) if B * T <= 8 * 32768 else None
        row = {"batch": B, "context": T, "sdpa_us": sdpa, "variants": {}}
        vil = interleave_values(st.v_lo)
        vil2 = interleave_values_t(st.v_lo)
        variants = {"triton": {}}
        variants["gluon_s16_vil"] = {"page_impl": "gluon", "n_splits": 16, "_gluon": {"vil": vil}}
        for ns in [int(x) for x in args.splits.split(",")]:
            g = {"page_impl": "gluon", "n_splits": ns or None}
            variants[f"gluonT_s{ns}"] = {**g, "_gluon": {"vil2": vil2}}
            variants[f"gluonTn_s{ns}"] = {**g, "_gluon": {"vil2": None}}
        for key, kw in variants.items():
            fn = partial(decode_attention, q, st, scaling, kn, vn, max_tiles=mt, **kw)
            o = fn()
            row["variants"][key] = {"us": graph_us(fn), "rel_l2": None if ref is None else rel(o, ref)}
        best = min((v["us"], k) for k, v in row["variants"].items() if k.startswith("gluon"))
        print(f"{B}x{T}: sdpa {sdpa:.1f} triton {row['variants']['triton']['us']:.1f} gluon best {best[0]:.1f} ({best[1]})",
              {k: round(v["us"], 1) for k, v in row["variants"].items()}, flush=True)  # fmt: skip
        res["timing"].append(row)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    res["wall_s"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
