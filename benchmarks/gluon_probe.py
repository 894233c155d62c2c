"""EXPERIMENT (GPU): the Gluon page kernel (``page_impl="gluon"``) vs the Triton one, KIVI layout: with
the cache's value layout and with the value codes re-laid out token-interleaved (``vil2``).

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

from fcboost.kernels.attention_page_gluon import interleave_values
from fcboost.kernels.decode_attention import decode_attention, decode_attention_reference
from fcboost.kernels.state import random_state
from fcboost.kernels.timing import graph_us
from fcboost.quant.config import KVQuantConfig

HQ, HKV, D = 32, 8, 128


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--splits", default="16,64")
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
        e["gluon_vil2"] = rel(
            decode_attention(
                q, st, scaling, kn, vn, page_impl="gluon", _gluon={"vil2": interleave_values(st.v_lo)}
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
        vil2 = interleave_values(st.v_lo)
        variants = {
            "triton": {},
            "gluon": {"page_impl": "gluon"},
            "gluon_vil2": {"page_impl": "gluon", "_gluon": {"vil2": vil2}},
        }
        for ns in [int(x) for x in args.splits.split(",")]:
            variants[f"gluon_vil2_s{ns}"] = {"page_impl": "gluon", "n_splits": ns, "_gluon": {"vil2": vil2}}
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
