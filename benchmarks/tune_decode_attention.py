"""Sweep the fused decode-attention kernel's configurations on a GPU; write JSON.

For each shape and method: correctness of every variant against the PyTorch reference, then the
median time of one call captured in a CUDA graph (what the decode loop replays; launch overhead
excluded, L2 flushed between replays by do_bench). bf16 SDPA is timed the same way in the same run. Imports only torch, triton and fcboost.

    python benchmarks/tune_decode_attention.py --out tune.json [--shapes 8x32768,1x32768]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
import triton

from fcboost.experiment.results import write_json
from fcboost.kernels.decode_attention import decode_attention, decode_attention_reference
from fcboost.kernels.state import random_state
from fcboost.kernels.timing import graph_us
from fcboost.quant.config import KVQuantConfig

HQ, HKV, D = 32, 8, 128
METHODS = {
    "kivi": KVQuantConfig.kivi(),
    "kitty16": KVQuantConfig.kitty(n_boost=16),
    "static_f8_bv": KVQuantConfig.static(n_boost=16, boost_values=True),
}
VARIANTS = [  # (tile_rows, num_warps, num_stages, waves, maxnreg; 0 = no cap, None = the default)
    (32, 4, 3, 4, None),
    (32, 4, 2, 4, None),
    (32, 4, 3, 8, None),
    (32, 4, 3, 2, None),
    (32, 4, 3, 4, 0),
    (32, 4, 3, 4, 168),
    (16, 4, 3, 4, None),
    (32, 8, 3, 4, None),
]


def rel(a, ref) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="8x32768,1x32768,64x4096")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    dev, dtype, scaling = torch.device("cuda"), torch.bfloat16, D**-0.5
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "command": " ".join(sys.argv), "correctness": [], "shapes": []}  # fmt: skip
    t0 = time.time()
    # correctness at the real shape, ragged rows, both dtypes, asm on and off
    for name, cfg in METHODS.items():
        for dt in (torch.bfloat16, torch.float16):
            lengths = [32768, 4097, 289, 1]
            st = random_state(cfg, lengths, HKV, D, dt, dev, seed=7)
            q = torch.randn(len(lengths), HQ, D, device=dev, dtype=dt)
            kn, vn = (torch.randn(len(lengths), HKV, D, device=dev, dtype=dt) for _ in range(2))
            ref = decode_attention_reference(q, st, scaling, kn, vn)
            errs = {}
            for tr, nw, nst, waves, mr in VARIANTS:
                for asm in (True, False):
                    o = decode_attention(q, st, scaling, kn, vn, tile_rows=tr, num_warps=nw, num_stages=nst,
                                         waves=waves, use_asm=asm, maxnreg=mr)  # fmt: skip
                    errs[f"R{tr}_w{nw}_s{nst}_wv{waves}_r{mr}_asm{int(asm)}"] = rel(o, ref)
            worst = max(errs.values())
            res["correctness"].append(
                {"method": name, "dtype": str(dt), "worst_rel_l2": worst, "rel_l2": errs}
            )
            print(f"correct {name} {dt}: worst rel L2 {worst:.2e}", flush=True)
    for shape in args.shapes.split(","):
        B, T = map(int, shape.split("x"))
        q = torch.randn(B, HQ, D, device=dev, dtype=dtype)
        kn, vn = (torch.randn(B, HKV, D, device=dev, dtype=dtype) for _ in range(2))
        kf = torch.randn(B, HKV, T, D, device=dev, dtype=dtype)
        vf = torch.randn_like(kf)
        sdpa = graph_us(
            partial(F.scaled_dot_product_attention, q[:, :, None], kf, vf, scale=scaling, enable_gqa=True)
        )
        del kf, vf
        row = {"batch": B, "context": T, "sdpa_us": sdpa, "methods": {}}
        print(f"{B}x{T}: sdpa {sdpa:.1f} us", flush=True)
        for name in args.methods.split(","):
            cfg = METHODS[name]
            st = random_state(cfg, [T - 1] * B, HKV, D, dtype, dev, seed=1)
            ref = decode_attention_reference(q, st, scaling, kn, vn)
            mt = int((torch.minimum(st.n_pages * cfg.page_size, st.n_vq) // 64).max())
            m = {"bytes": st.nbytes_read(), "variants": {}}
            for tr, nw, nst, waves, mr in VARIANTS:
                key = f"R{tr}_w{nw}_s{nst}_wv{waves}_r{mr}"
                try:
                    f3 = partial(decode_attention, q, st, scaling, kn, vn, tile_rows=tr, max_tiles=mt, num_warps=nw,
                                 num_stages=nst, waves=waves, maxnreg=mr)  # fmt: skip
                    m["variants"][key] = {"us": graph_us(f3), "rel_l2": rel(f3(), ref)}
                except Exception as e:
                    m["variants"][key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            ok = {k: v for k, v in m["variants"].items() if v.get("rel_l2", 1) < 1e-2}
            best = min(ok, key=lambda k: ok[k]["us"])
            m.update(best=best, us=ok[best]["us"], speedup_vs_sdpa=sdpa / ok[best]["us"],
                     GBps=m["bytes"] / ok[best]["us"] / 1e3)  # fmt: skip
            row["methods"][name] = m
            print(f"  {name}: {m['us']:.1f} us ({best}) {m['GBps']:.0f} GB/s {m['speedup_vs_sdpa']:.2f}x sdpa | "
                  + " ".join(f"{k}={v.get('us', -1):.0f}" for k, v in m["variants"].items()),
                  flush=True)  # fmt: skip
            del st
            torch.cuda.empty_cache()
        res["shapes"].append(row)
        res["wall_s"] = time.time() - t0
        write_json(args.out, res)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
