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


METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "static_f8_keys": KVQuantConfig.static(n_boost=16, boost_values=False),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}


def gluon_variants(st, pfs=(0,), native=True, stages=()) -> dict:
    """The Gluon kernel's variants for a state: with the cache's value layout (when it can) and with
    the interleaved value planes, for each L2 prefetch distance."""
    il = {"vil2": interleave_values(st.v_lo)}
    if st.v_hi is not None:
        il["vhil"] = interleave_values(st.v_hi)
    out = {}
    for pf in pfs:
        sfx = f"_pf{pf}" if pf else ""
        out["gluon_il" + sfx] = {"_gluon": {**il, "pf": pf}}
        if st.v_hi is None and native:
            out["gluon" + sfx] = {"_gluon": {"pf": pf}}
    for n in stages:
        out[f"gluon_il_s{n}"] = {"_gluon": {**il, "stages": n}}
    return out


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pf", default="0", help="L2 prefetch distances to time (comma list, 0: none)")
    ap.add_argument("--regs", default="168", help="register caps to time (comma list)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--native", action="store_true", help="also time the cache's value layout (KIVI)")
    ap.add_argument("--stages", default="", help="cp.async pipeline depths to time (comma list)")
    args = ap.parse_args()
    pfs = [int(x) for x in args.pf.split(",")]
    regs = [int(x) for x in args.regs.split(",")]
    methods = {k: METHODS[k] for k in args.methods.split(",")}
    stages = [int(x) for x in args.stages.split(",") if x]
    t0 = time.time()
    dev = torch.device("cuda")
    scaling = D**-0.5
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "command": " ".join(sys.argv), "commit": os.environ.get("FCBOOST_COMMIT", "unknown"),
           "correctness": [], "timing": []}  # fmt: skip
    for mname, mcfg in methods.items():
        for dt in (torch.float16, torch.bfloat16):
            lengths = [32768, 4097, 1000, 289, 161, 33, 1]
            st = random_state(mcfg, lengths, HKV, D, dt, dev, seed=3)
            B = len(lengths)
            q = torch.randn(B, HQ, D, device=dev, dtype=dt)
            kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dt) for _ in range(2))
            ref = decode_attention_reference(q, st, scaling, kn, vn)
            e = {"triton": rel(decode_attention(q, st, scaling, kn, vn), ref)}
            for key, kw in gluon_variants(st, pfs, args.native, stages).items():
                e[key] = rel(decode_attention(q, st, scaling, kn, vn, page_impl="gluon", **kw), ref)
            res["correctness"].append({"method": mname, "dtype": str(dt), "lengths": lengths, "rel_l2": e})
            print("correct", mname, dt, e, flush=True)
    dtype = torch.bfloat16
    for B, T in [(1, 32768), (8, 32768), (32, 8192), (64, 4096), (8, 131072)]:
        q = torch.randn(B, HQ, D, device=dev, dtype=dtype)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dtype) for _ in range(2))
        kf = torch.randn(B, HKV, T, D, device=dev, dtype=dtype)
        sdpa = graph_us(partial(F.scaled_dot_product_attention, q[:, :, None], kf, torch.randn_like(kf),
                                scale=scaling, enable_gqa=True))  # fmt: skip
        del kf
        for mname, mcfg in methods.items():
            st = random_state(mcfg, [T - 1] * B, HKV, D, dtype, dev, seed=1)
            mt = int((torch.minimum(st.n_pages * mcfg.page_size, st.n_vq) // 64).max())
            ref = decode_attention_reference(q, st, scaling, kn, vn) if B * T <= 8 * 32768 else None
            row = {"method": mname, "batch": B, "context": T, "sdpa_us": sdpa, "variants": {}}
            variants = {"triton": {}}
            for key, kw in gluon_variants(st, pfs, args.native, stages).items():
                for r in regs:
                    variants[f"{key}_r{r}"] = {
                        "page_impl": "gluon",
                        **kw,
                        "_gluon": {**kw["_gluon"], "maxnreg": r},
                    }
            for key, kw in variants.items():
                fn = partial(decode_attention, q, st, scaling, kn, vn, max_tiles=mt, **kw)
                o = fn()
                row["variants"][key] = {"us": graph_us(fn), "rel_l2": None if ref is None else rel(o, ref)}
            best = min((v["us"], k) for k, v in row["variants"].items() if k.startswith("gluon"))
            tri = row["variants"]["triton"]["us"]
            print(f"{mname} {B}x{T}: sdpa {sdpa:.1f} triton {tri:.1f} gluon best {best[0]:.1f} ({best[1]})",
                  {k: round(v["us"], 1) for k, v in row["variants"].items()}, flush=True)  # fmt: skip
            res["timing"].append(row)
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
    res["wall_s"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
